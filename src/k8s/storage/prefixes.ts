// The value prefixes kube-apiserver writes before each transformer's output
// (apiserver/pkg/server/options/encryptionconfig/config.go). Local forms and
// KMS forms append a key or provider name and a ':'; identity writes nothing.
export const PREFIX = {
  aescbc: 'k8s:enc:aescbc:v1:',
  aesgcm: 'k8s:enc:aesgcm:v1:',
  secretbox: 'k8s:enc:secretbox:v1:',
  kmsV1: 'k8s:enc:kms:v1:',
  kmsV2: 'k8s:enc:kms:v2:',
} as const;

/** Every encrypted value starts with this. */
export const ENC_PREFIX = 'k8s:enc:';

/** The 4 bytes before a Kubernetes protobuf object (runtime/serializer/protobuf). */
export const PROTOBUF_MAGIC = Buffer.from([0x6b, 0x38, 0x73, 0x00]);

const COLON = 0x3a;

/**
 * Splits `<prefix><name>:<rest>`. Returns undefined when no ':' ends the name
 * (or the name is empty). Upstream matches whole configured prefixes; without the
 * configuration we take the name up to the first ':', which is exact for KMS
 * providers (their names may not contain ':').
 */
export function splitNamed(value: Buffer, prefix: string): { name: string; rest: Buffer } | undefined {
  const start = prefix.length;
  const end = value.indexOf(COLON, start);
  if (end <= start) return undefined;
  return { name: value.subarray(start, end).toString('utf8'), rest: value.subarray(end + 1) };
}

export function hasPrefix(value: Buffer, prefix: string): boolean {
  return value.length >= prefix.length && value.subarray(0, prefix.length).toString('latin1') === prefix;
}
