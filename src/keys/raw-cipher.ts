import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { deriveKey } from '../crypto/kdf.js';
import { KeyhavenError } from '../errors.js';

// Raw AES-256 (GCM and CBC) for compatibility APIs whose clients expect bare
// cipher output (cipher, iv, tag) rather than keyhaven's self-describing
// blobs — the Fortanix DSM / SmartKey API. node:crypto does the work.
//
// The AES key is never a key version's material itself but a sub-key derived
// from it with HKDF, one per purpose and mode: a caller-chosen CBC IV turns
// encrypt into a raw AES block oracle, which against the material itself
// would compute the keystream and GHASH key of every native AES-GCM blob of
// that version. Separate sub-keys keep such weaknesses inside their mode.

export type RawMode = 'GCM' | 'CBC';

const GCM_IV_BYTES = 12;
const CBC_IV_BYTES = 16;
/** GCM tag lengths in bits that callers may ask for. */
export const GCM_TAG_BITS: readonly number[] = [96, 104, 112, 120, 128];

/** The AES-256 key for `purpose` (e.g. "dsm") and `mode`, derived from a key version's material. */
export function rawSubkey(material: Buffer, purpose: string, mode: RawMode): Buffer {
  return deriveKey(material, `keyhaven raw aes-256-${mode.toLowerCase()} ${purpose} v1`);
}

export interface GcmSealed {
  readonly cipher: Buffer;
  readonly iv: Buffer;
  readonly tag: Buffer;
}

/** AES-256-GCM with a fresh random 96-bit IV; `tagBits` from GCM_TAG_BITS (default 128). */
export function gcmEncrypt(key: Buffer, plain: Buffer, opts: { ad?: Buffer | undefined; tagBits?: number | undefined } = {}): GcmSealed {
  const tagBits = opts.tagBits ?? 128;
  if (!GCM_TAG_BITS.includes(tagBits)) throw new KeyhavenError('invalid_argument', `tag_len must be one of ${GCM_TAG_BITS.join(', ')} (bits)`);
  const iv = randomBytes(GCM_IV_BYTES);
  const c = createCipheriv('aes-256-gcm', key, iv, { authTagLength: tagBits / 8 });
  if (opts.ad) c.setAAD(opts.ad);
  const cipher = Buffer.concat([c.update(plain), c.final()]);
  return { cipher, iv, tag: c.getAuthTag() };
}

/** Opens AES-256-GCM output; any mismatch (cipher, iv, tag, ad, key) is one `integrity` error. */
export function gcmDecrypt(key: Buffer, cipher: Buffer, iv: Buffer, tag: Buffer, ad?: Buffer): Buffer {
  if (iv.length !== GCM_IV_BYTES) throw new KeyhavenError('invalid_argument', `iv must be ${GCM_IV_BYTES} bytes for GCM (got ${iv.length})`);
  if (!GCM_TAG_BITS.includes(tag.length * 8)) throw new KeyhavenError('invalid_argument', `tag must be 12 to 16 bytes for GCM (got ${tag.length})`);
  const d = createDecipheriv('aes-256-gcm', key, iv, { authTagLength: tag.length });
  if (ad) d.setAAD(ad);
  d.setAuthTag(tag);
  try {
    return Buffer.concat([d.update(cipher), d.final()]);
  } catch {
    throw new KeyhavenError('integrity', 'decryption failed: the cipher, iv, tag or ad do not match this key');
  }
}

export interface CbcSealed {
  readonly cipher: Buffer;
  readonly iv: Buffer;
}

/**
 * AES-256-CBC with PKCS#7 padding. `iv` (16 bytes) may be chosen by the
 * caller for clients that need it; otherwise it is random. CBC has no
 * integrity, and a repeated IV shows which messages share a prefix: prefer GCM.
 */
export function cbcEncrypt(key: Buffer, plain: Buffer, iv?: Buffer): CbcSealed {
  if (iv !== undefined && iv.length !== CBC_IV_BYTES) throw new KeyhavenError('invalid_argument', `iv must be ${CBC_IV_BYTES} bytes for CBC (got ${iv.length})`);
  const useIv = iv ?? randomBytes(CBC_IV_BYTES);
  const c = createCipheriv('aes-256-cbc', key, useIv);
  return { cipher: Buffer.concat([c.update(plain), c.final()]), iv: useIv };
}

/**
 * Opens AES-256-CBC output. Every failure after the length checks (bad
 * padding, wrong key) is the same `integrity` error with the same message,
 * so answers are no padding oracle.
 */
export function cbcDecrypt(key: Buffer, cipher: Buffer, iv: Buffer): Buffer {
  if (iv.length !== CBC_IV_BYTES) throw new KeyhavenError('invalid_argument', `iv must be ${CBC_IV_BYTES} bytes for CBC (got ${iv.length})`);
  if (cipher.length === 0 || cipher.length % 16 !== 0) throw new KeyhavenError('invalid_argument', 'cipher must be a non-empty multiple of 16 bytes for CBC');
  try {
    const d = createDecipheriv('aes-256-cbc', key, iv);
    return Buffer.concat([d.update(cipher), d.final()]);
  } catch {
    throw new KeyhavenError('integrity', 'decryption failed');
  }
}
