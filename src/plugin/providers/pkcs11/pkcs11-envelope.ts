import { createHash } from 'node:crypto';
import { KeyhavenError } from '../../../errors.js';
import { ENVELOPE_FORMAT } from '../../envelope-formats.js';
import { MAX_CIPHERTEXT_BYTES } from '../../limits.js';

// The pkcs11 provider's ciphertext: a self-describing header, then what the
// token's CKM_AES_GCM returned (ciphertext || tag).
//
//   0x11 | key ref (8) | IV (12) | ciphertext | tag (16)
//
// The key ref is a hash of the key_id, so Decrypt finds the key without the
// apiserver's key_id (v1beta1 sends none). The whole header is the GCM
// associated data: changing any byte of it fails the tag check in the token.

const PKCS11_FORMAT = ENVELOPE_FORMAT.PKCS11;
const KEY_REF_BYTES = 8;
export const IV_BYTES = 12;
export const TAG_BYTES = 16;
const HEADER_BYTES = 1 + KEY_REF_BYTES + IV_BYTES;
export const OVERHEAD_BYTES = HEADER_BYTES + TAG_BYTES;
export const MAX_PLAINTEXT_BYTES = MAX_CIPHERTEXT_BYTES - OVERHEAD_BYTES;

const AAD_PREFIX = Buffer.from('keyhaven pkcs11 provider v1\0');
const REF_CONTEXT = 'keyhaven pkcs11 key ref\0';
// A CKA_ID longer than this is shown hashed: key_ids stay short.
const MAX_ID_HEX = 64;

/**
 * The key_id of a token key: the token's serial number and the key's CKA_ID.
 * Neither is secret; together they name one key (a new key gets a new CKA_ID,
 * another token has another serial), and neither changes when a key is
 * relabelled.
 */
export function pkcs11KeyId(serial: string, ckaId: Buffer): string {
  const s = /^[A-Za-z0-9._-]{1,32}$/.test(serial) ? serial : `x${Buffer.from(serial, 'utf8').toString('hex').slice(0, 64)}`;
  const hex = ckaId.toString('hex');
  const id = hex.length <= MAX_ID_HEX ? hex : `sha256-${createHash('sha256').update(ckaId).digest('hex').slice(0, 32)}`;
  return `pkcs11:${s}:${id}`;
}

export function keyRef(keyId: string): Buffer {
  return createHash('sha256').update(REF_CONTEXT).update(keyId).digest().subarray(0, KEY_REF_BYTES);
}

export function header(ref: Buffer, iv: Buffer): Buffer {
  return Buffer.concat([Buffer.from([PKCS11_FORMAT]), ref, iv]);
}

export function aad(head: Buffer): Buffer {
  return Buffer.concat([AAD_PREFIX, head]);
}

export interface ParsedEnvelope {
  readonly ref: Buffer;
  readonly iv: Buffer;
  readonly head: Buffer;
  /** ciphertext || tag */
  readonly body: Buffer;
}

/** Splits a ciphertext; anything that cannot be one of ours is invalid_argument before the token sees it. */
export function parseEnvelope(ciphertext: Buffer): ParsedEnvelope {
  if (ciphertext.length === 0) throw new KeyhavenError('invalid_argument', 'ciphertext is empty');
  const form = ciphertext[0]!;
  if (form !== PKCS11_FORMAT) {
    throw new KeyhavenError('invalid_argument', `ciphertext has unknown format byte 0x${form.toString(16).padStart(2, '0')}; it was not made by keyhaven's pkcs11 provider`);
  }
  // At least one byte of sealed data: a GCM body of only a tag never comes from Encrypt.
  if (ciphertext.length < OVERHEAD_BYTES + 1) {
    throw new KeyhavenError('invalid_argument', `ciphertext is ${ciphertext.length} bytes; a pkcs11 provider ciphertext has at least ${OVERHEAD_BYTES + 1}`);
  }
  return {
    ref: ciphertext.subarray(1, 1 + KEY_REF_BYTES),
    iv: ciphertext.subarray(1 + KEY_REF_BYTES, HEADER_BYTES),
    head: ciphertext.subarray(0, HEADER_BYTES),
    body: ciphertext.subarray(HEADER_BYTES),
  };
}
