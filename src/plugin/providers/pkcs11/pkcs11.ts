import { randomBytes, timingSafeEqual } from 'node:crypto';
import type { Pkcs11ProviderConfig } from '../../../config/providers/pkcs11.js';
import { readSecret } from '../../../config/secret-file.js';
import { KeyhavenError, type ErrorCode } from '../../../errors.js';
import type { Logger } from '../../../log/logger.js';
import {
  acquireModule,
  aesGcm,
  attrBool,
  attrUlong,
  ckr,
  findSecretKeys,
  findToken,
  loginBlocked,
  loginUser,
  openSession,
  releaseModule,
  safely,
  slotNumber,
  trimPadded,
  type LoadedModule,
  type TokenSelector,
} from '../../../hsm/pkcs11-token.js';
import type { KmsProvider, ProviderDecryptResult, ProviderEncryptResult } from '../../provider.js';
import type { ProviderBuildContext } from '../context.js';
import { aad, header, IV_BYTES, keyRef, MAX_PLAINTEXT_BYTES, parseEnvelope, pkcs11KeyId, TAG_BYTES, type ParsedEnvelope } from './pkcs11-envelope.js';

/**
 * The pkcs11 provider: seeds are encrypted with CKM_AES_GCM inside an HSM
 * token, under an existing AES-256 key that never leaves it. The plugin never
 * creates, exports or deletes keys.
 *
 * pkcs11js calls are synchronous, so one operation (Init + Encrypt/Decrypt)
 * runs to its end before any other JavaScript runs: operations never
 * interleave on a session. One session is kept only to hold the login
 * (closing a token's last session logs the user out); operations run on
 * separate work sessions, and a work session left in an unknown state by a
 * failure is closed rather than reused.
 */

export interface Pkcs11ProviderOptions extends TokenSelector {
  /** The token's user PIN. Never logged; never tried again after the token refused it. */
  readonly pin: string;
  readonly keyLabel: string;
  readonly previousKeyLabels?: readonly string[];
  readonly logger?: Pick<Logger, 'info' | 'warn'>;
}

// PKCS#11 keys have no versions: the key_id names the key itself.
const KEY_VERSION = 1;
const KEY_BYTES = 32;
const IDLE_SESSIONS = 2;

/** How much state a failure spoiled: the operation only, the work session, or the whole connection (token, login, key handles). */
type Scope = 'operation' | 'session' | 'connection';
const scopes = new WeakMap<KeyhavenError, Scope>();
/** Decrypt failures a transient token fault can also cause (CKR_GENERAL_ERROR): tried once more on a new session before calling it integrity. */
const ambiguous = new WeakSet<KeyhavenError>();

// Codes that say the configuration, the key or the PIN is wrong: a health probe
// failing with one of them is reported as it is. Any other probe failure is
// the token's fault, most likely a passing one: unavailable, which rides the
// Status grace period.
const SETUP_PROBLEMS: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['config_invalid', 'permission_denied', 'unauthenticated', 'not_found']);

function fail(code: ErrorCode, message: string, scope: Scope, cause?: unknown): KeyhavenError {
  const e = new KeyhavenError(code, message, cause === undefined ? undefined : { cause });
  scopes.set(e, scope);
  return e;
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
function classify(e: unknown, what: string): KeyhavenError {
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

interface TokenKey {
  readonly label: string;
  readonly handle: Buffer;
  readonly keyId: string;
  readonly ref: Buffer;
}

interface Conn {
  readonly loaded: LoadedModule;
  readonly slot: Buffer;
  readonly serial: string;
  /** `"label"`, for messages. */
  readonly token: string;
  /** Holds the login; no operation runs on it. */
  readonly anchor: Buffer;
  readonly idle: Buffer[];
  keys: ResolvedKeys;
}

interface ResolvedKeys {
  readonly current: TokenKey;
  readonly byKeyId: ReadonlyMap<string, TokenKey>;
  readonly byRef: ReadonlyMap<string, TokenKey>;
  /** previousKeyLabels that cannot be used now, and why. */
  readonly unusable: readonly { readonly label: string; readonly why: string }[];
}

function bounded(s: string): string {
  return s.length <= 200 ? s : `${s.slice(0, 200)}...(${s.length} chars)`;
}

export function createPkcs11Provider(opts: Pkcs11ProviderOptions): KmsProvider {
  const previous = [...(opts.previousKeyLabels ?? [])];
  const logger = opts.logger;
  let conn: Conn | undefined;
  // Set once the token refused the PIN: another try could lock the token, so
  // every later call is refused without calling C_Login.
  let pinRefused: string | undefined;
  let closed = false;
  let lastLoggedKeyIds = '';

  function refusePin(token: string, why: string): KeyhavenError {
    pinRefused = token;
    return fail('unauthenticated', `the HSM refused the PIN for token ${token} (${why}; not retried, to avoid locking the token): fix the PIN and restart the plugin`, 'connection');
  }

  function readKey(c: Pick<Conn, 'loaded' | 'token' | 'serial'>, s: Buffer, label: string, current: boolean): TokenKey {
    const { api, lib } = c.loaded;
    const what = `key "${label}" on token ${c.token}`;
    let found: Buffer[];
    let values: (Buffer | undefined)[];
    try {
      found = findSecretKeys(c.loaded, s, label, 2);
      if (found.length === 0) throw fail('not_found', `no secret key labelled "${label}" on token ${c.token}`, 'connection');
      if (found.length > 1) throw fail('config_invalid', `several keys on token ${c.token} are labelled "${label}"; refusing to guess which one to use`, 'connection');
      values = lib
        .C_GetAttributeValue(s, found[0]!, [
          { type: api.CKA_KEY_TYPE },
          { type: api.CKA_VALUE_LEN },
          { type: api.CKA_EXTRACTABLE },
          { type: api.CKA_SENSITIVE },
          { type: api.CKA_ENCRYPT },
          { type: api.CKA_DECRYPT },
          { type: api.CKA_ID },
        ])
        .map((a) => a.value as Buffer | undefined);
    } catch (e) {
      throw classify(e, `cannot read ${what}`);
    }
    const [type, len, extractable, sensitive, encrypt, decrypt, id] = values;
    const bad = (code: ErrorCode, why: string) => fail(code, `${what} ${why}`, 'connection');
    if (attrUlong(type) !== api.CKK_AES) throw bad('config_invalid', 'is not an AES key');
    if (attrUlong(len) !== KEY_BYTES) throw bad('config_invalid', `is AES-${attrUlong(len) * 8}; the pkcs11 provider needs AES-256`);
    if (!attrBool(decrypt)) throw bad('permission_denied', 'may not decrypt (CKA_DECRYPT is false)');
    if (current && !attrBool(encrypt)) throw bad('permission_denied', 'may not encrypt (CKA_ENCRYPT is false)');
    // As the server's pkcs11 seal: a key that can leave the HSM defeats the point. Keys
    // only kept to decrypt old data are not refused for it (that data needs them).
    if (current && (attrBool(extractable) || !attrBool(sensitive))) {
      throw bad('config_invalid', 'can be exported (CKA_EXTRACTABLE true or CKA_SENSITIVE false); the pkcs11 provider needs a sensitive, non-extractable key');
    }
    if (!id || id.length === 0) throw bad('config_invalid', 'has no CKA_ID; give it a unique one (pkcs11-tool --id) so that its key_id names this key only');
    const keyId = pkcs11KeyId(c.serial, Buffer.from(id));
    return { label, handle: found[0]!, keyId, ref: keyRef(keyId) };
  }

  function resolveKeys(c: Pick<Conn, 'loaded' | 'token' | 'serial'>, s: Buffer): ResolvedKeys {
    const current = readKey(c, s, opts.keyLabel, true);
    const all = [current];
    const unusable: { label: string; why: string }[] = [];
    for (const label of previous) {
      try {
        all.push(readKey(c, s, label, false));
      } catch (e) {
        const err = classify(e, `cannot read key "${label}"`);
        // A lost connection spoils the current key too; anything else only this old key.
        if (scopes.get(err) === 'connection' && err.code === 'unavailable') throw err;
        unusable.push({ label, why: err.message });
      }
    }
    const byKeyId = new Map<string, TokenKey>();
    const byRef = new Map<string, TokenKey>();
    for (const k of all) {
      const same = byKeyId.get(k.keyId);
      if (same) throw fail('config_invalid', `keys "${same.label}" and "${k.label}" on token ${c.token} have the same CKA_ID; give each key its own`, 'connection');
      byKeyId.set(k.keyId, k);
      byRef.set(k.ref.toString('hex'), k);
    }
    return { current, byKeyId, byRef, unusable };
  }

  function announce(c: Conn): void {
    const ids = JSON.stringify([[...c.keys.byKeyId.values()].map((k) => [k.label, k.keyId]), c.keys.unusable]);
    if (ids === lastLoggedKeyIds) return;
    lastLoggedKeyIds = ids;
    logger?.info(
      { tokenLabel: c.token, serial: c.serial, slot: String(slotNumber(c.slot)), keyLabel: c.keys.current.label, keyId: c.keys.current.keyId, previousKeyIds: [...c.keys.byKeyId.values()].filter((k) => k !== c.keys.current).map((k) => k.keyId) },
      'pkcs11 token key in use',
    );
    for (const u of c.keys.unusable) logger?.warn({ tokenLabel: c.token, keyLabel: u.label, reason: u.why }, 'pkcs11: a key of previousKeyLabels cannot be used; Decrypt refuses ciphertexts made with it');
  }

  /** Loads the module, finds the token, logs in once and reads the keys. */
  function connect(): Conn {
    if (closed) throw new KeyhavenError('unavailable', 'the pkcs11 provider is closed');
    if (pinRefused !== undefined) {
      throw fail('unauthenticated', `the HSM refused the PIN for token ${pinRefused} earlier; not trying again, to avoid locking the token: fix the PIN and restart the plugin`, 'connection');
    }
    if (conn) return conn;
    const loaded = acquireModule(opts.module, 'the pkcs11 provider');
    let anchor: Buffer | undefined;
    let work: Buffer | undefined;
    try {
      let found;
      try {
        found = findToken(loaded, opts);
      } catch (e) {
        // A token that was there can be pulled or re-initialized: an outage, not a configuration to fix.
        if (e instanceof KeyhavenError) throw fail('unavailable', e.message, 'connection');
        throw classify(e, `cannot list the tokens of PKCS#11 module ${opts.module}`);
      }
      const token = `"${found.label}"`;
      const blocked = loginBlocked(loaded, found.flags);
      if (blocked && 'noPin' in blocked) throw fail('config_invalid', `token ${token} has no user PIN set: initialize it first`, 'connection');
      if (blocked) throw refusePin(token, blocked.refused);
      anchor = openSession(loaded, found.slot, false, token);
      const refused = loginUser(loaded, anchor, opts.pin, token);
      if (refused !== undefined) throw refusePin(token, refused);
      const base = { loaded, token, serial: found.serial };
      work = openSession(loaded, found.slot, false, token);
      const keys = resolveKeys(base, work);
      const c: Conn = { ...base, slot: found.slot, anchor, idle: [work], keys };
      work = undefined;
      conn = c;
      announce(c);
      return c;
    } catch (e) {
      if (work) safely(() => loaded.lib.C_CloseSession(work as Buffer));
      if (anchor) safely(() => loaded.lib.C_CloseSession(anchor as Buffer));
      releaseModule(loaded);
      throw classify(e, `cannot use token of PKCS#11 module ${opts.module}`);
    }
  }

  function drop(): void {
    const c = conn;
    conn = undefined;
    if (!c) return;
    for (const s of c.idle.splice(0)) safely(() => c.loaded.lib.C_CloseSession(s));
    safely(() => c.loaded.lib.C_CloseSession(c.anchor));
    releaseModule(c.loaded);
  }

  /** Runs fn on a work session of a logged-in connection (a new one when newSession); what a failure spoiled is thrown away. */
  function once<T>(fn: (c: Conn, s: Buffer, fresh: boolean) => T, newSession = false): T {
    const fresh = conn === undefined;
    const c = connect();
    let s: Buffer | undefined;
    try {
      s = (newSession ? undefined : c.idle.pop()) ?? openSession(c.loaded, c.slot, false, c.token);
    } catch (e) {
      drop();
      throw classify(e, `cannot open a session on token ${c.token}`);
    }
    let scope: Scope = 'operation';
    try {
      return fn(c, s, fresh);
    } catch (e) {
      const err = classify(e, `token ${c.token} failed`);
      scope = scopes.get(err) ?? 'operation';
      throw err;
    } finally {
      if (scope === 'operation' && conn === c && c.idle.length < IDLE_SESSIONS) c.idle.push(s);
      else safely(() => c.loaded.lib.C_CloseSession(s as Buffer));
      if (scope === 'connection' && conn === c) drop();
    }
  }

  /** once(), again on a new connection when a connection made earlier turned out stale (a token put back, a key replaced). */
  function run<T>(fn: (c: Conn, s: Buffer, fresh: boolean) => T, newSession = false): T {
    const hadConn = conn !== undefined;
    try {
      return once(fn, newSession);
    } catch (e) {
      if (hadConn && e instanceof KeyhavenError && scopes.get(e) === 'connection' && pinRefused === undefined && !closed) return once(fn, newSession);
      throw e;
    }
  }

  function encryptWith(c: Conn, s: Buffer, k: TokenKey, plaintext: Buffer): Buffer {
    const iv = randomBytes(IV_BYTES);
    const head = header(k.ref, iv);
    const { lib } = c.loaded;
    let out: Buffer;
    try {
      lib.C_EncryptInit(s, aesGcm(c.loaded, iv, aad(head), TAG_BYTES), k.handle);
      out = lib.C_Encrypt(s, plaintext, Buffer.alloc(plaintext.length + TAG_BYTES + 16));
    } catch (e) {
      throw classify(e, `token ${c.token} could not encrypt with key "${k.label}"`);
    }
    if (out.length !== plaintext.length + TAG_BYTES) {
      throw fail('internal', `token ${c.token} returned ${out.length} bytes of AES-GCM output for ${plaintext.length} bytes of input`, 'session');
    }
    return Buffer.concat([head, out]);
  }

  function decryptWith(c: Conn, s: Buffer, k: TokenKey, env: ParsedEnvelope): Buffer {
    const { lib } = c.loaded;
    try {
      lib.C_DecryptInit(s, aesGcm(c.loaded, env.iv, aad(env.head), TAG_BYTES), k.handle);
    } catch (e) {
      throw classify(e, `token ${c.token} refused to decrypt with key "${k.label}"`);
    }
    const out = Buffer.alloc(env.body.length);
    let plain: Buffer;
    try {
      plain = lib.C_Decrypt(s, env.body, out);
    } catch (e) {
      const code = ckr(e);
      // SoftHSM2 reports a failed GCM tag check as CKR_GENERAL_ERROR, others as
      // CKR_ENCRYPTED_DATA_INVALID; both end the operation. CKR_GENERAL_ERROR is
      // also what a token's passing fault looks like: the caller tries it once
      // more on a new session before believing it (see decrypt).
      if (code === 'CKR_ENCRYPTED_DATA_INVALID' || code === 'CKR_ENCRYPTED_DATA_LEN_RANGE' || code === 'CKR_GENERAL_ERROR') {
        const err = fail('integrity', `the token could not decrypt the ciphertext with key "${k.label}" (${code}): it was altered, or it was not made with this key`, code === 'CKR_GENERAL_ERROR' ? 'session' : 'operation');
        if (code === 'CKR_GENERAL_ERROR') ambiguous.add(err);
        throw err;
      }
      throw classify(e, `token ${c.token} could not decrypt with key "${k.label}"`);
    }
    const expected = env.body.length - TAG_BYTES;
    if (plain.length !== expected) {
      out.fill(0);
      throw fail('integrity', `the token returned ${plain.length} bytes of plaintext, expected ${expected}`, 'session');
    }
    const result = Buffer.from(plain);
    out.fill(0);
    return result;
  }

  function unknownKey(c: Conn, what: string): KeyhavenError {
    const note = c.keys.unusable.length > 0 ? ` (previousKeyLabels not usable now: ${c.keys.unusable.map((u) => `"${u.label}"`).join(', ')})` : '';
    return fail('unknown_key_id', `${what} is not the key_id of keyLabel "${opts.keyLabel}" or of previousKeyLabels on token ${c.token}${note}`, 'operation');
  }

  return {
    kind: 'pkcs11',
    maxPlaintextBytes: MAX_PLAINTEXT_BYTES,

    async healthCheck(): Promise<string> {
      return run((c, s, fresh) => {
        if (!fresh) {
          // Catches a token pulled or re-initialized, a key deleted, replaced or relabelled.
          let serial: string;
          try {
            serial = trimPadded(c.loaded.lib.C_GetTokenInfo(c.slot).serialNumber);
          } catch (e) {
            throw classify(e, `token ${c.token} does not answer`);
          }
          if (serial !== c.serial) throw fail('unavailable', `token ${c.token} was replaced (serial ${c.serial} is now ${serial})`, 'connection');
          c.keys = resolveKeys(c, s);
          announce(c);
        }
        const k = c.keys.current;
        const probe = randomBytes(32);
        try {
          const back = decryptWith(c, s, k, parseEnvelope(encryptWith(c, s, k, probe)));
          const same = back.length === probe.length && timingSafeEqual(back, probe);
          back.fill(0);
          if (!same) throw fail('integrity', `token ${c.token} did not give back the value it encrypted with key "${k.label}"`, 'session');
        } catch (e) {
          const err = classify(e, `token ${c.token} failed the health probe`);
          if (SETUP_PROBLEMS.has(err.code)) throw err;
          // The probe is the token's own fresh ciphertext: failing to open it is a
          // token fault (a network HSM's blip), not corrupted data. Reported as an
          // outage, which rides the grace period, and the connection is made anew.
          throw fail('unavailable', `token ${c.token} failed the health probe (an encrypt and decrypt of its own fresh ciphertext with key "${k.label}"): ${err.message}; connecting again on the next call`, 'connection', e);
        }
        return k.keyId;
      });
    },

    async encrypt(plaintext: Buffer): Promise<ProviderEncryptResult> {
      if (plaintext.length === 0) throw new KeyhavenError('invalid_argument', 'plaintext is empty');
      if (plaintext.length > MAX_PLAINTEXT_BYTES) throw new KeyhavenError('invalid_argument', `plaintext is ${plaintext.length} bytes; the pkcs11 provider takes at most ${MAX_PLAINTEXT_BYTES}`);
      return run((c, s) => {
        const k = c.keys.current;
        return { ciphertext: encryptWith(c, s, k, plaintext), keyId: k.keyId, keyName: k.label, keyVersion: KEY_VERSION };
      });
    },

    async decrypt(ciphertext: Buffer, keyId: string | undefined): Promise<ProviderDecryptResult> {
      const env = parseEnvelope(ciphertext);
      const attempt = (c: Conn, s: Buffer): ProviderDecryptResult => {
        let k: TokenKey | undefined;
        if (keyId !== undefined) {
          k = c.keys.byKeyId.get(keyId);
          if (!k) throw unknownKey(c, `key_id ${bounded(keyId)}`);
          // The header is authenticated by the token too; checking it first refuses a
          // ciphertext paired with another key's key_id without a call to the token.
          if (!k.ref.equals(env.ref)) throw fail('invalid_argument', `ciphertext does not belong to key_id ${keyId}: its header names another key`, 'operation');
        } else {
          k = c.keys.byRef.get(env.ref.toString('hex'));
          if (!k) throw unknownKey(c, 'the key named in the ciphertext header');
        }
        return { plaintext: decryptWith(c, s, k, env), keyId: k.keyId, keyName: k.label, keyVersion: KEY_VERSION };
      };
      try {
        return run(attempt);
      } catch (e) {
        // CKR_GENERAL_ERROR is both SoftHSM2's failed tag check and a token's passing
        // fault: a second try on a new session tells them apart (altered data fails again).
        if (e instanceof KeyhavenError && ambiguous.has(e)) return run(attempt, true);
        throw e;
      }
    },

    async close(): Promise<void> {
      closed = true;
      drop();
    },
  };
}

export async function buildPkcs11Provider(p: Pkcs11ProviderConfig, ctx: ProviderBuildContext): Promise<KmsProvider> {
  const pin = readSecret({ file: p.pinFile, env: p.pinEnv }, { what: 'the HSM PIN file', envField: 'provider.pinEnv' });
  // A module that cannot load is a configuration to fix: refuse to start. The
  // token itself is only reached by the first Status, so that a token that is
  // away (or a wrong PIN) fails Status with a precise reason instead.
  releaseModule(acquireModule(p.module, 'the pkcs11 provider'));
  return createPkcs11Provider({ module: p.module, tokenLabel: p.tokenLabel, slot: p.slot, pin, keyLabel: p.keyLabel, previousKeyLabels: p.previousKeyLabels, logger: ctx.logger });
}
