import { FORMAT_V1 } from '../crypto/blob.js';

/**
 * The first byte of every ciphertext a provider hands the apiserver, in one
 * table: each provider's forms differ, so a ciphertext taken to the wrong
 * provider (or a config switched between providers) gets a precise error
 * naming the provider that made it. These bytes are in etcd: never change or
 * reuse one. Add a provider's forms here, and formatOwner() names them.
 */
export const ENVELOPE_FORMAT = {
  /** embedded: the key store's own blob (crypto/blob.ts). */
  EMBEDDED: FORMAT_V1,
  /** keyhaven: the key server's ciphertext text `kh:v<N>:...` ('k'), local KEK off. */
  KEYHAVEN_DIRECT: 0x6b,
  /** keyhaven: seed sealed under a local KEK; the wrapped KEK in an annotation (KMS v2). */
  KEYHAVEN_KEK_ANNOTATED: 0x02,
  /** keyhaven: seed sealed under a local KEK; the wrapped KEK inside (KMS v1beta1). */
  KEYHAVEN_KEK_EMBEDDED: 0x03,
  /** pkcs11: header | token's CKM_AES_GCM output. */
  PKCS11: 0x11,
  /** aws-kms: the KMS CiphertextBlob ('A'), local KEK off. */
  AWS_DIRECT: 0x41,
  AWS_KEK_ANNOTATED: 0x42,
  AWS_KEK_EMBEDDED: 0x43,
  /** fortanix-dsm: kid | iv | tag | cipher ('d'). */
  FORTANIX_DSM: 0x64,
  /** vault: Vault Transit's own text `vault:v<N>:...` ('v'). */
  VAULT: 0x76,
} as const;

const OWNERS: ReadonlyMap<number, string> = new Map([
  [ENVELOPE_FORMAT.EMBEDDED, 'embedded'],
  [ENVELOPE_FORMAT.KEYHAVEN_DIRECT, 'keyhaven'],
  [ENVELOPE_FORMAT.KEYHAVEN_KEK_ANNOTATED, 'keyhaven'],
  [ENVELOPE_FORMAT.KEYHAVEN_KEK_EMBEDDED, 'keyhaven'],
  [ENVELOPE_FORMAT.PKCS11, 'pkcs11'],
  [ENVELOPE_FORMAT.AWS_DIRECT, 'aws-kms'],
  [ENVELOPE_FORMAT.AWS_KEK_ANNOTATED, 'aws-kms'],
  [ENVELOPE_FORMAT.AWS_KEK_EMBEDDED, 'aws-kms'],
  [ENVELOPE_FORMAT.FORTANIX_DSM, 'fortanix-dsm'],
  [ENVELOPE_FORMAT.VAULT, 'vault'],
]);

/** The provider type whose ciphertexts start with `byte`, if any. */
export function formatOwner(byte: number): string | undefined {
  return OWNERS.get(byte);
}

export function formatByteText(byte: number): string {
  return `0x${byte.toString(16).padStart(2, '0')}`;
}
