import { createCipheriv, createDecipheriv, createHmac, randomBytes, type CipherGCMTypes } from 'node:crypto';
import { KeyhavenError } from '../../errors.js';

// The AES transformers of apiserver/pkg/storage/value/encrypt/aes, on node:crypto.
// GCM: nonce(12) | ciphertext | tag(16), the etcd key as authenticated data.
// CBC: iv(16) | ciphertext with PKCS#7 padding, no authentication at all.

export const GCM_NONCE_SIZE = 12;
export const GCM_TAG_SIZE = 16;
export const CBC_BLOCK_SIZE = 16;
/** Seed size and per-object info size of the HKDF extended-nonce mode. */
export const XNONCE_INFO_SIZE = 32;
const MIN_SEED_SIZE = 32;

function gcmName(key: Buffer): CipherGCMTypes {
  return cipherName(key, 'gcm') as CipherGCMTypes;
}

function cipherName(key: Buffer, mode: 'gcm' | 'cbc'): string {
  if (key.length !== 16 && key.length !== 24 && key.length !== 32) {
    throw new KeyhavenError('invalid_argument', `AES key is ${key.length} bytes; AES needs 16, 24 or 32`);
  }
  return `aes-${key.length * 8}-${mode}`;
}

export function gcmSeal(key: Buffer, plaintext: Buffer, aad: Buffer, nonce: Buffer = randomBytes(GCM_NONCE_SIZE)): Buffer {
  const c = createCipheriv(gcmName(key), key, nonce);
  c.setAAD(aad);
  const ct = Buffer.concat([c.update(plaintext), c.final()]);
  return Buffer.concat([nonce, ct, c.getAuthTag()]);
}

/** Opens nonce|ct|tag. `what` names the value in errors; the AAD text is the etcd key (not secret). */
export function gcmOpen(key: Buffer, data: Buffer, aad: Buffer, what: string): Buffer {
  const name = gcmName(key);
  if (data.length < GCM_NONCE_SIZE + GCM_TAG_SIZE) {
    throw new KeyhavenError(
      'invalid_argument',
      `${what}: AES-GCM data is ${data.length} bytes, shorter than nonce (${GCM_NONCE_SIZE}) + tag (${GCM_TAG_SIZE})`,
    );
  }
  const d = createDecipheriv(name, key, data.subarray(0, GCM_NONCE_SIZE));
  d.setAAD(aad);
  d.setAuthTag(data.subarray(data.length - GCM_TAG_SIZE));
  try {
    return Buffer.concat([d.update(data.subarray(GCM_NONCE_SIZE, data.length - GCM_TAG_SIZE)), d.final()]);
  } catch (e) {
    // GCM cannot tell a wrong key from wrong authenticated data: name both.
    throw new KeyhavenError(
      'integrity',
      `${what}: AES-GCM authentication failed with authenticated data (etcd key) ${JSON.stringify(aad.toString('utf8'))}: ` +
        'either the value was stored under another etcd key (the authenticated data does not match) or the key is wrong',
      { cause: e },
    );
  }
}

export function cbcSeal(key: Buffer, plaintext: Buffer, iv: Buffer = randomBytes(CBC_BLOCK_SIZE)): Buffer {
  const c = createCipheriv(cipherName(key, 'cbc'), key, iv); // PKCS#7 padding is node's default
  return Buffer.concat([iv, c.update(plaintext), c.final()]);
}

export function cbcOpen(key: Buffer, data: Buffer, what: string): Buffer {
  const name = cipherName(key, 'cbc');
  if (data.length < 2 * CBC_BLOCK_SIZE || data.length % CBC_BLOCK_SIZE !== 0) {
    throw new KeyhavenError(
      'invalid_argument',
      `${what}: AES-CBC data is ${data.length} bytes; it needs an IV and at least one block, in whole ${CBC_BLOCK_SIZE}-byte blocks`,
    );
  }
  const d = createDecipheriv(name, key, data.subarray(0, CBC_BLOCK_SIZE));
  try {
    return Buffer.concat([d.update(data.subarray(CBC_BLOCK_SIZE)), d.final()]);
  } catch (e) {
    throw new KeyhavenError('integrity', `${what}: AES-CBC padding is invalid (wrong key or damaged data)`, { cause: e });
  }
}

/**
 * HKDF-SHA256 Expand only (RFC 5869 §2.3), as upstream's sha256KDFExpandOnly: the
 * seed is used as the PRK with no Extract step, which node's hkdf always runs. For
 * a 32-byte output Expand is one block, T(1) = HMAC-SHA256(PRK, info | 0x01).
 */
function hkdfExpandSha256(prk: Buffer, info: Buffer): Buffer {
  return createHmac('sha256', prk).update(info).update(Buffer.from([0x01])).digest();
}

/** The extended-nonce form: info(32) | nonce(12) | ct | tag, key = HKDF-Expand(seed, info). */
export function xnonceSeal(seed: Buffer, plaintext: Buffer, aad: Buffer): Buffer {
  checkSeed(seed);
  const info = randomBytes(XNONCE_INFO_SIZE);
  return Buffer.concat([info, gcmSeal(hkdfExpandSha256(seed, info), plaintext, aad)]);
}

export function xnonceOpen(seed: Buffer, data: Buffer, aad: Buffer, what: string): Buffer {
  checkSeed(seed);
  if (data.length < XNONCE_INFO_SIZE) {
    throw new KeyhavenError(
      'invalid_argument',
      `${what}: data is ${data.length} bytes, shorter than the ${XNONCE_INFO_SIZE}-byte HKDF info that starts it`,
    );
  }
  const info = data.subarray(0, XNONCE_INFO_SIZE);
  return gcmOpen(hkdfExpandSha256(seed, info), data.subarray(XNONCE_INFO_SIZE), aad, what);
}

function checkSeed(seed: Buffer): void {
  if (seed.length < MIN_SEED_SIZE) {
    throw new KeyhavenError('invalid_argument', `DEK seed is ${seed.length} bytes; the HKDF seed mode needs at least ${MIN_SEED_SIZE}`);
  }
}
