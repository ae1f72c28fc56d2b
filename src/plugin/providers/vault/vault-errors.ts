import type { ErrorCode } from '../../../errors.js';

// Vault answers errors as {"errors": ["..."]}; the status says whose fault it
// is. A 403 is first read as "unauthenticated"; the provider then asks
// lookup-self whether the token is dead (refresh it and try once more) or the
// policy does not allow the call (permission_denied) (vault.ts).

// Vault tokens (hvs./hvb./hvr., and the older s./b./r. forms): an error text must never carry one.
const TOKEN_LIKE = /\b(?:hv[sbr]|[sbr])\.[A-Za-z0-9_-]{16,}/g;

export function scrubSecrets(text: string): string {
  return text.replace(TOKEN_LIKE, '[redacted]');
}

function messageOf(status: number, body: unknown, text: string): string {
  const errors = (body as { errors?: unknown } | undefined)?.errors;
  const list = Array.isArray(errors) ? errors.filter((e): e is string => typeof e === 'string' && e.length > 0) : [];
  // Not JSON (a proxy's HTML page): a short, single-line excerpt.
  const raw = list.length ? list.join('; ') : body === undefined && text ? text : '';
  const msg = scrubSecrets(raw).replace(/\s+/g, ' ').trim().slice(0, 240);
  return msg ? `${msg} (HTTP ${status})` : `HTTP ${status}`;
}

/** Vault's answer to a Transit or auth call, as a keyhaven error code and message. */
export function vaultErrorOf(status: number, body: unknown, text: string): { code: ErrorCode; message: string } {
  const message = messageOf(status, body, text);
  return { code: vaultCode(status, message), message };
}

function vaultCode(status: number, message: string): ErrorCode {
  if (status === 400) {
    // The ciphertext's shape was checked before sending: what Vault cannot open now was altered or belongs to another key.
    if (/message authentication failed|invalid ciphertext|unable to decrypt|failed to decrypt|authentication tag/i.test(message)) return 'integrity';
    // min_decryption_version was raised above the ciphertext's version: it exists but may not be used.
    if (/disallowed by policy|too old/i.test(message)) return 'key_disabled';
    if (/key not found|no existing key|not found/i.test(message)) return 'not_found';
    return 'invalid_argument';
  }
  if (status === 401 || status === 403) return 'unauthenticated';
  if (status === 404) return 'not_found';
  // Performance standbys: "not yet replicated" (412) is Vault's own temporary state.
  if (status === 412) return 'unavailable';
  if (status === 429) return 'too_many_attempts';
  if (status === 503 && /sealed/i.test(message)) return 'sealed';
  if (status >= 500) return 'unavailable';
  return 'invalid_argument';
}
