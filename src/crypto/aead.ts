import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { fillRandom } from './random-pool.js';
import { KeyhavenError } from '../errors.js';

// AES-256-GCM with a random 96-bit nonce per message. Random nonces are safe
// far beyond the number of messages one key version will see (the birthday
// bound for 2^-32 collision probability is ~2^32 messages), and rotation
// resets the count.
export const KEY_BYTES = 32;
export const NONCE_BYTES = 12;
export const TAG_BYTES = 16;

export function generateKey(): Buffer {
  return randomBytes(KEY_BYTES);
}

/** Returns nonce || ciphertext || tag. */
export function aeadSeal(key: Buffer, plaintext: Buffer, aad: Buffer): Buffer {
  return aeadSealInto(key, plaintext, aad, 0);
}

/**
 * Like aeadSeal, with `prefix` bytes left free at the start of the returned
 * buffer (for a header), so the whole message is one allocation.
 */
export function aeadSealInto(key: Buffer, plaintext: Buffer, aad: Buffer, prefix: number): Buffer {
  const out = Buffer.allocUnsafe(prefix + NONCE_BYTES + plaintext.length + TAG_BYTES);
  const nonce = out.subarray(prefix, prefix + NONCE_BYTES);
  fillRandom(out, prefix, NONCE_BYTES);
  const cipher = createCipheriv('aes-256-gcm', key, nonce, { authTagLength: TAG_BYTES });
  cipher.setAAD(aad);
  let at = prefix + NONCE_BYTES;
  at += cipher.update(plaintext).copy(out, at);
  at += cipher.final().copy(out, at);
  cipher.getAuthTag().copy(out, at);
  return out;
}

/** Opens nonce || ciphertext || tag; any tampering is an `integrity` error. */
export function aeadOpen(key: Buffer, sealed: Buffer, aad: Buffer): Buffer {
  if (sealed.length < NONCE_BYTES + TAG_BYTES) {
    throw new KeyhavenError('integrity', 'ciphertext is truncated');
  }
  const nonce = sealed.subarray(0, NONCE_BYTES);
  const tag = sealed.subarray(sealed.length - TAG_BYTES);
  const body = sealed.subarray(NONCE_BYTES, sealed.length - TAG_BYTES);
  const decipher = createDecipheriv('aes-256-gcm', key, nonce, { authTagLength: TAG_BYTES });
  decipher.setAAD(aad);
  decipher.setAuthTag(tag);
  try {
    const out = decipher.update(body);
    const final = decipher.final();
    return final.length === 0 ? out : Buffer.concat([out, final]);
  } catch {
    throw new KeyhavenError('integrity', 'ciphertext failed authentication (tampered, truncated or under another key)');
  }
}
