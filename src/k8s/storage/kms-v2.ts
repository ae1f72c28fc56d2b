import { KeyhavenError } from '../../errors.js';
import { gcmOpen, gcmSeal, xnonceOpen, xnonceSeal } from './aes.js';
import { decodeMessage, defineTypes, message, strictUtf8, Writer } from './proto.js';
import { hasPrefix, PREFIX, splitNamed } from './prefixes.js';

// KMS v2 values: `k8s:enc:kms:v2:<provider>:` + an EncryptedObject
// (apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2/api.proto), checked
// as envelope.go's ValidateEncryptedObject checks it on every read.

export const DEK_SOURCE_TYPE = {
  /** The plaintext of encryptedDEKSource is the AES-GCM key itself (KMS v2 writes before Kubernetes 1.29). */
  AES_GCM_KEY: 0,
  /** The plaintext is a seed; each value's key is HKDF-SHA256-Expand(seed, first 32 bytes of the data). */
  HKDF_SHA256_XNONCE_AES_GCM_SEED: 1,
} as const;

const KEY_ID_MAX_SIZE = 1024;
const ENCRYPTED_DEK_SOURCE_MAX_SIZE = 1024;
const ANNOTATIONS_MAX_SIZE = 32 * 1024;

export interface EncryptedObject {
  encryptedData: Buffer;
  keyID: string;
  encryptedDEKSource: Buffer;
  annotations: Record<string, Buffer>;
  encryptedDEKSourceType: number;
}

// keyID is read as bytes so invalid UTF-8 is refused as Go's proto3 refuses it.
const EncryptedObjectType = message('EncryptedObject', [
  ['encryptedData', 1, 'bytes'],
  ['keyID', 2, 'bytes'],
  ['encryptedDEKSource', 3, 'bytes'],
  ['annotations', 4, 'bytes', 'map', 'string'],
  ['encryptedDEKSourceType', 5, 'int32'],
]);
defineTypes([EncryptedObjectType]);

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

/** validation.IsFullyQualifiedDomainName: a DNS-1123 subdomain with at least two labels. */
function fqdnProblem(name: string): string | undefined {
  if (name.length === 0) return 'is empty';
  const n = name.endsWith('.') ? name.slice(0, -1) : name;
  if (n.length > 253) return 'is longer than 253 characters';
  const labels = n.split('.');
  if (labels.length < 2) return 'should be a domain with at least two segments separated by dots';
  for (const l of labels) {
    if (l.length > 63 || !DNS_LABEL.test(l)) return `has label ${JSON.stringify(l)}, not a lowercase RFC 1123 label`;
  }
  return undefined;
}

function invalid(message: string): KeyhavenError {
  return new KeyhavenError('invalid_argument', `kms-v2 EncryptedObject: ${message}`);
}

function validateEncryptedObject(o: EncryptedObject): void {
  const t = o.encryptedDEKSourceType;
  if (t !== DEK_SOURCE_TYPE.AES_GCM_KEY && t !== DEK_SOURCE_TYPE.HKDF_SHA256_XNONCE_AES_GCM_SEED) {
    throw invalid(`unknown encryptedDEKSourceType: ${t}`);
  }
  if (o.encryptedData.length === 0) throw invalid('encrypted data is empty');
  if (o.encryptedDEKSource.length === 0) throw invalid('encrypted DEK source is empty');
  if (o.encryptedDEKSource.length > ENCRYPTED_DEK_SOURCE_MAX_SIZE) {
    throw invalid(
      `encrypted DEK source is ${o.encryptedDEKSource.length} bytes, which exceeds the max size of ${ENCRYPTED_DEK_SOURCE_MAX_SIZE}`,
    );
  }
  const keyIdBytes = Buffer.byteLength(o.keyID, 'utf8');
  if (keyIdBytes === 0) throw invalid('keyID is empty');
  if (keyIdBytes > KEY_ID_MAX_SIZE) throw invalid(`keyID is ${keyIdBytes} bytes, which exceeds the max size of ${KEY_ID_MAX_SIZE}`);
  let total = 0;
  for (const [k, v] of Object.entries(o.annotations)) {
    const problem = fqdnProblem(k);
    if (problem) throw invalid(`annotation key ${JSON.stringify(k)} ${problem}`);
    total += Buffer.byteLength(k, 'utf8') + v.length;
  }
  if (total > ANNOTATIONS_MAX_SIZE) {
    throw invalid(`total size of annotations is ${total}, which exceeds the max size of ${ANNOTATIONS_MAX_SIZE}`);
  }
}

/** Splits a stored KMS v2 value into its provider name and validated EncryptedObject. */
export function splitKmsV2(value: Buffer): { provider: string; object: EncryptedObject } {
  if (!hasPrefix(value, PREFIX.kmsV2)) {
    throw new KeyhavenError('invalid_argument', `value does not start with ${JSON.stringify(PREFIX.kmsV2)}`);
  }
  const named = splitNamed(value, PREFIX.kmsV2);
  if (!named) {
    throw new KeyhavenError('invalid_argument', `kms-v2 value has no ':' ending the provider name after ${JSON.stringify(PREFIX.kmsV2)}`);
  }
  const m = decodeMessage(EncryptedObjectType, named.rest, `kms-v2 value of provider ${JSON.stringify(named.name)}`);
  const object: EncryptedObject = {
    encryptedData: (m.encryptedData as Buffer | undefined) ?? Buffer.alloc(0),
    keyID: strictUtf8((m.keyID as Buffer | undefined) ?? Buffer.alloc(0), 'kms-v2 EncryptedObject: keyID'),
    encryptedDEKSource: (m.encryptedDEKSource as Buffer | undefined) ?? Buffer.alloc(0),
    annotations: { ...((m.annotations as Record<string, Buffer> | undefined) ?? {}) },
    encryptedDEKSourceType: (m.encryptedDEKSourceType as number | undefined) ?? 0,
  };
  validateEncryptedObject(object);
  return { provider: named.name, object };
}

/**
 * The bytes kube-apiserver writes: proto3 marshalling omits empty fields, writes
 * them in field order, and each map entry with both key and value. Go's map order
 * is random; annotations are written sorted here so the output is deterministic.
 */
export function encodeKmsV2(provider: string, o: EncryptedObject): Buffer {
  if (provider.length === 0 || provider.includes(':')) {
    throw new KeyhavenError('invalid_argument', `kms-v2 provider name ${JSON.stringify(provider)} must be non-empty without ':'`);
  }
  validateEncryptedObject(o);
  const w = Writer.create();
  if (o.encryptedData.length > 0) w.uint32((1 << 3) | 2).bytes(o.encryptedData);
  if (o.keyID.length > 0) w.uint32((2 << 3) | 2).string(o.keyID);
  if (o.encryptedDEKSource.length > 0) w.uint32((3 << 3) | 2).bytes(o.encryptedDEKSource);
  for (const k of Object.keys(o.annotations).sort()) {
    w.uint32((4 << 3) | 2).fork().uint32((1 << 3) | 2).string(k).uint32((2 << 3) | 2).bytes(o.annotations[k]!).ldelim();
  }
  if (o.encryptedDEKSourceType !== 0) w.uint32((5 << 3) | 0).int32(o.encryptedDEKSourceType);
  return Buffer.concat([Buffer.from(`${PREFIX.kmsV2}${provider}:`, 'utf8'), Buffer.from(w.finish())]);
}

/** Decrypts the object's data given the plaintext of encryptedDEKSource (the seed or DEK the KMS returned) and the etcd key (authenticated data). */
export function openKmsV2(o: EncryptedObject, dekSource: Buffer, etcdKey: string): Buffer {
  const aad = Buffer.from(etcdKey, 'utf8');
  switch (o.encryptedDEKSourceType) {
    case DEK_SOURCE_TYPE.HKDF_SHA256_XNONCE_AES_GCM_SEED:
      return xnonceOpen(dekSource, o.encryptedData, aad, 'kms-v2 data (HKDF seed mode)');
    case DEK_SOURCE_TYPE.AES_GCM_KEY:
      return gcmOpen(dekSource, o.encryptedData, aad, 'kms-v2 data (AES-GCM DEK mode)');
    default:
      throw invalid(`unknown encryptedDEKSourceType: ${o.encryptedDEKSourceType}`);
  }
}

/** Encrypts like kube-apiserver (seed mode by default) — for tests and the bench. Returns encryptedData. */
export function sealKmsV2(
  plaintext: Buffer,
  dekSource: Buffer,
  etcdKey: string,
  sourceType: number = DEK_SOURCE_TYPE.HKDF_SHA256_XNONCE_AES_GCM_SEED,
): Buffer {
  const aad = Buffer.from(etcdKey, 'utf8');
  switch (sourceType) {
    case DEK_SOURCE_TYPE.HKDF_SHA256_XNONCE_AES_GCM_SEED:
      return xnonceSeal(dekSource, plaintext, aad);
    case DEK_SOURCE_TYPE.AES_GCM_KEY:
      // Upstream uses a counter nonce here; a random one has the same layout.
      return gcmSeal(dekSource, plaintext, aad);
    default:
      throw invalid(`unknown encryptedDEKSourceType: ${sourceType}`);
  }
}
