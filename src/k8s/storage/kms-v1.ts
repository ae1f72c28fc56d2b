import { KeyhavenError } from '../../errors.js';
import { cbcOpen, cbcSeal, gcmOpen, gcmSeal } from './aes.js';
import { hasPrefix, PREFIX, splitNamed } from './prefixes.js';

// KMS v1 values: `k8s:enc:kms:v1:<provider>:` + uint16 big-endian length of the
// encrypted DEK + the encrypted DEK + the data under the DEK
// (apiserver/pkg/storage/value/encrypt/envelope/envelope.go). Kubernetes 1.24
// and older wrote the data with AES-CBC; 1.25 and later write AES-GCM (etcd key
// as authenticated data) and read GCM first, then CBC. We read the same way.

export function splitKmsV1(value: Buffer): { provider: string; encryptedDEK: Buffer; encryptedData: Buffer } {
  if (!hasPrefix(value, PREFIX.kmsV1)) {
    throw new KeyhavenError('invalid_argument', `value does not start with ${JSON.stringify(PREFIX.kmsV1)}`);
  }
  const named = splitNamed(value, PREFIX.kmsV1);
  if (!named) {
    throw new KeyhavenError('invalid_argument', `kms-v1 value has no ':' ending the provider name after ${JSON.stringify(PREFIX.kmsV1)}`);
  }
  const rest = named.rest;
  if (rest.length < 2) {
    throw new KeyhavenError(
      'invalid_argument',
      `kms-v1 value is truncated: ${rest.length} bytes after the prefix, too short for the 2-byte DEK length`,
    );
  }
  const dekLength = rest.readUInt16BE(0);
  if (dekLength === 0) throw new KeyhavenError('invalid_argument', 'kms-v1 value has an encrypted DEK length of 0');
  if (2 + dekLength > rest.length) {
    throw new KeyhavenError(
      'invalid_argument',
      `kms-v1 value has a bad DEK length: ${dekLength} bytes announced, ${rest.length - 2} present`,
    );
  }
  const encryptedData = rest.subarray(2 + dekLength);
  if (encryptedData.length === 0) throw new KeyhavenError('invalid_argument', 'kms-v1 value has no encrypted data after the DEK');
  return { provider: named.name, encryptedDEK: rest.subarray(2, 2 + dekLength), encryptedData };
}

/** Decrypts the data with the DEK (the KMS's plaintext of encryptedDEK): AES-GCM first, then the older AES-CBC. */
export function openKmsV1(encryptedData: Buffer, dek: Buffer, etcdKey: string): Buffer {
  let gcmError: unknown;
  try {
    return gcmOpen(dek, encryptedData, Buffer.from(etcdKey, 'utf8'), 'kms-v1 data');
  } catch (e) {
    // A bad key size fails the same way in both modes: report it once.
    if (e instanceof KeyhavenError && e.message.startsWith('AES key is')) throw e;
    gcmError = e;
  }
  try {
    return cbcOpen(dek, encryptedData, 'kms-v1 data');
  } catch (cbcError) {
    const g = gcmError instanceof Error ? gcmError.message : String(gcmError);
    const c = cbcError instanceof Error ? cbcError.message : String(cbcError);
    throw new KeyhavenError('integrity', `kms-v1 data does not decrypt as AES-GCM (${g}) nor as the older AES-CBC (${c})`, {
      cause: cbcError,
    });
  }
}

/** A KMS v1 value as kube-apiserver writes it (AES-GCM; 'cbc' writes the pre-1.25 form) — for tests. */
export function encodeKmsV1(
  provider: string,
  encryptedDEK: Buffer,
  plaintext: Buffer,
  dek: Buffer,
  etcdKey: string,
  mode: 'gcm' | 'cbc' = 'gcm',
): Buffer {
  if (provider.length === 0 || provider.includes(':')) {
    throw new KeyhavenError('invalid_argument', `kms-v1 provider name ${JSON.stringify(provider)} must be non-empty without ':'`);
  }
  if (encryptedDEK.length === 0 || encryptedDEK.length > 0xffff) {
    throw new KeyhavenError('invalid_argument', `kms-v1 encrypted DEK is ${encryptedDEK.length} bytes; it must be 1 to 65535`);
  }
  const data = mode === 'gcm' ? gcmSeal(dek, plaintext, Buffer.from(etcdKey, 'utf8')) : cbcSeal(dek, plaintext);
  const len = Buffer.alloc(2);
  len.writeUInt16BE(encryptedDEK.length);
  return Buffer.concat([Buffer.from(`${PREFIX.kmsV1}${provider}:`, 'utf8'), len, encryptedDEK, data]);
}
