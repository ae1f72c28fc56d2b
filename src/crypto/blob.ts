import { KeyhavenError } from '../errors.js';
import { aeadOpen, aeadSealInto, NONCE_BYTES, TAG_BYTES } from './aead.js';

// Self-describing ciphertext:
//   format (1 byte) | key ref (8 bytes) | key version (uint32 BE) | nonce | ciphertext | tag
// The header is the AES-GCM associated data, so the key and version a blob
// names are bound to it: a blob moved to another key, or relabelled with
// another version, fails authentication.
export const FORMAT_V1 = 0x01;
export const KEY_REF_BYTES = 8;
export const HEADER_BYTES = 1 + KEY_REF_BYTES + 4;
export const BLOB_OVERHEAD = HEADER_BYTES + NONCE_BYTES + TAG_BYTES;

export interface BlobHeader {
  readonly format: number;
  readonly keyRef: Buffer;
  readonly version: number;
}

export function encodeHeader(keyRef: Buffer, version: number): Buffer {
  if (keyRef.length !== KEY_REF_BYTES) throw new KeyhavenError('internal', 'key ref must be 8 bytes');
  if (!Number.isInteger(version) || version < 1 || version > 0xffffffff) {
    throw new KeyhavenError('internal', 'key version out of range');
  }
  const header = Buffer.allocUnsafe(HEADER_BYTES);
  header[0] = FORMAT_V1;
  keyRef.copy(header, 1);
  header.writeUInt32BE(version, 1 + KEY_REF_BYTES);
  return header;
}

/** Reads the header without authenticating it; openBlob authenticates. */
export function parseHeader(blob: Buffer): BlobHeader {
  if (blob.length === 0) throw new KeyhavenError('invalid_argument', 'ciphertext is empty');
  const format = blob[0]!;
  if (format !== FORMAT_V1) {
    throw new KeyhavenError('invalid_argument', `ciphertext has unknown format byte 0x${format.toString(16).padStart(2, '0')}`);
  }
  if (blob.length < BLOB_OVERHEAD) throw new KeyhavenError('integrity', 'ciphertext is truncated');
  return {
    format,
    keyRef: blob.subarray(1, 1 + KEY_REF_BYTES),
    version: blob.readUInt32BE(1 + KEY_REF_BYTES),
  };
}

export function sealBlob(key: Buffer, keyRef: Buffer, version: number, plaintext: Buffer, context?: Buffer): Buffer {
  const header = encodeHeader(keyRef, version);
  const aad = context ? Buffer.concat([header, context]) : header;
  const blob = aeadSealInto(key, plaintext, aad, HEADER_BYTES);
  header.copy(blob, 0);
  return blob;
}

export function openBlob(key: Buffer, blob: Buffer, context?: Buffer): Buffer {
  parseHeader(blob);
  const header = blob.subarray(0, HEADER_BYTES);
  const aad = context ? Buffer.concat([header, context]) : header;
  return aeadOpen(key, blob.subarray(HEADER_BYTES), aad);
}
