/**
 * A key provider wraps and unwraps the apiserver's seeds. The embedded key
 * store is one; the key server and other KMSs come later behind the same
 * interface. Errors are KeyhavenErrors whose code says whose fault it is.
 */
export interface ProviderEncryptResult {
  readonly ciphertext: Buffer;
  /** The key_id of the key version that wrapped this ciphertext. */
  readonly keyId: string;
  readonly annotations?: Readonly<Record<string, Buffer>>;
  /** For logs and audit: the key name and version. */
  readonly keyName: string;
  readonly keyVersion: number;
}

export interface ProviderDecryptResult {
  readonly plaintext: Buffer;
  readonly keyId: string;
  readonly keyName: string;
  readonly keyVersion: number;
}

export interface KmsProvider {
  readonly kind: string;
  /** The largest plaintext whose ciphertext stays within the 1024 bytes the apiserver accepts. */
  readonly maxPlaintextBytes: number;
  /** A real encrypt/decrypt round trip; resolves with the current key_id. */
  healthCheck(): Promise<string>;
  encrypt(plaintext: Buffer): Promise<ProviderEncryptResult>;
  /** keyId is the one the apiserver stored beside the ciphertext (v2), or undefined (v1beta1). */
  decrypt(ciphertext: Buffer, keyId: string | undefined, annotations: Readonly<Record<string, Buffer>>): Promise<ProviderDecryptResult>;
  close(): Promise<void>;
}
