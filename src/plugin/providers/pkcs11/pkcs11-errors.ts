import { KeyhavenError, type ErrorCode } from '../../../errors.js';
import { ckr } from '../../../hsm/pkcs11-token.js';

// What a PKCS#11 failure means. The code says whose fault it is (the runtime's
// error-class.ts decides what that means for Status and Encrypt); the scope
// says how much of the token connection it spoiled, which only the pkcs11
// backend needs.

/** How much state a failure spoiled: the operation only, the work session, or the whole connection (token, login, key handles). */
export type Scope = 'operation' | 'session' | 'connection';
const scopes = new WeakMap<KeyhavenError, Scope>();
/** Decrypt failures a transient token fault can also cause (CKR_GENERAL_ERROR): tried once more on a new session before calling it integrity. */
const ambiguous = new WeakSet<KeyhavenError>();

export function fail(code: ErrorCode, message: string, scope: Scope, cause?: unknown): KeyhavenError {
  const e = new KeyhavenError(code, message, cause === undefined ? undefined : { cause });
  scopes.set(e, scope);
  return e;
}

/** The scope of a failure; one not made by fail() spoiled the operation only. */
export function scopeOf(e: unknown): Scope {
  return (e instanceof KeyhavenError && scopes.get(e)) || 'operation';
}

/** An integrity failure that a passing token fault could also have caused. */
export function failAmbiguous(message: string): KeyhavenError {
  const e = fail('integrity', message, 'session');
  ambiguous.add(e);
  return e;
}

export function isAmbiguous(e: unknown): boolean {
  return e instanceof KeyhavenError && ambiguous.has(e);
}

// Codes after which the token, the login or the key handles cannot be trusted:
// the next call starts again from C_Initialize (which also lets SoftHSM2 and
// others see a token that was put back).
const CONNECTION_LOST = new Set([
  'CKR_DEVICE_REMOVED',
  'CKR_TOKEN_NOT_PRESENT',
  'CKR_TOKEN_NOT_RECOGNIZED',
  'CKR_SESSION_HANDLE_INVALID',
  'CKR_SESSION_CLOSED',
  'CKR_DEVICE_ERROR',
  'CKR_DEVICE_MEMORY',
  'CKR_GENERAL_ERROR',
  'CKR_FUNCTION_FAILED',
  'CKR_CRYPTOKI_NOT_INITIALIZED',
  'CKR_SLOT_ID_INVALID',
]);

/** Classifies a PKCS#11 failure; `what` says what was being done (never caller data or secrets). */
export function classify(e: unknown, what: string): KeyhavenError {
  if (e instanceof KeyhavenError) return e;
  const code = ckr(e);
  const named = `${what} (${code ?? 'error'})`;
  switch (code) {
    case 'CKR_USER_NOT_LOGGED_IN':
      return fail('unauthenticated', `${named}: the token no longer holds the login; logging in again on the next call`, 'connection', e);
    case 'CKR_KEY_HANDLE_INVALID':
    case 'CKR_OBJECT_HANDLE_INVALID':
      return fail('not_found', `${named}: the key is no longer on the token`, 'connection', e);
    case 'CKR_KEY_FUNCTION_NOT_PERMITTED':
    case 'CKR_KEY_TYPE_INCONSISTENT':
      return fail('permission_denied', `${named}: the key's attributes do not allow this use`, 'session', e);
    case 'CKR_MECHANISM_INVALID':
    case 'CKR_MECHANISM_PARAM_INVALID':
      return fail('config_invalid', `${named}: the token does not offer CKM_AES_GCM with a 12-byte IV, caller-supplied, and a 16-byte tag`, 'session', e);
    default:
      if (code === undefined || CONNECTION_LOST.has(code)) return fail('unavailable', named, 'connection', e);
      return fail('unavailable', named, 'session', e);
  }
}
