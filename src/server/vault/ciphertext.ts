import { KeyhavenError } from '../../errors.js';
import type { Services } from '../core.js';

// The Vault Transit ciphertext format, `vault:v<N>:<base64>`, carrying
// keyhaven's own blob (whose authenticated header names key and version), so
// a Vault ciphertext and a native `kh:v<N>:` one hold the same bytes.

/** Longest ciphertext string accepted (64 KiB plaintext plus overhead, base64, with room). */
const MAX_CIPHERTEXT_CHARS = 200_000;

const CIPHERTEXT = /^vault:v(\d{1,10}):([A-Za-z0-9+/]+={0,2})$/;

export function formatVaultCiphertext(version: number, blob: Buffer): string {
  return `vault:v${version}:${blob.toString('base64')}`;
}

/**
 * vault:v<N>:<base64> → the blob, checking that it was made with `keyId` and
 * that the label matches its authenticated header. Messages follow Vault's.
 */
export function parseVaultCiphertext(s: Services, text: string, keyId: string): Buffer {
  if (text.length > MAX_CIPHERTEXT_CHARS) throw new KeyhavenError('invalid_argument', 'invalid ciphertext: too long');
  if (!text.startsWith('vault:')) throw new KeyhavenError('invalid_argument', 'invalid ciphertext: no prefix');
  const m = CIPHERTEXT.exec(text);
  if (!m) throw new KeyhavenError('invalid_argument', 'invalid ciphertext: must be "vault:v<version>:<base64>"');
  const blob = Buffer.from(m[2]!, 'base64');
  const ref = s.keys.describe(blob);
  if (ref.keyId !== keyId) throw new KeyhavenError('invalid_argument', 'invalid ciphertext: it was made with a different key');
  if (ref.version !== Number(m[1])) throw new KeyhavenError('integrity', 'invalid ciphertext: the version label does not match the ciphertext header (tampered)');
  return blob;
}

const CONTEXT_DOMAIN = Buffer.from('keyhaven/vault-transit/context\0', 'latin1');

/**
 * The associated data keyhaven binds for Vault's `associated_data` and
 * `context`. associated_data alone is bound as it is, so it matches a native
 * call's `context` with the same bytes. With a Vault `context` (keyhaven keys
 * are not derived), both are bound: a domain label, the context's length
 * (4 bytes, big-endian), the context, then the associated data — so no two
 * (context, associated_data) pairs give the same bytes.
 */
export function boundData(context: Buffer | undefined, associatedData: Buffer | undefined): Buffer | undefined {
  if (context === undefined || context.length === 0) return associatedData && associatedData.length ? associatedData : undefined;
  const len = Buffer.alloc(4);
  len.writeUInt32BE(context.length);
  return Buffer.concat([CONTEXT_DOMAIN, len, context, associatedData ?? Buffer.alloc(0)]);
}
