/**
 * A key provider wraps and unwraps the apiserver's seeds. The embedded key
 * store is one; the key server (remote) is another, and other KMSs fit the same
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

/** Per-call facts a provider may use: the apiserver's uid (for the key server's audit), and whether the reply can carry annotations (v2) or not (v1beta1). */
export interface EncryptContext {
  readonly uid: string;
  readonly annotations: boolean;
}

export interface DecryptContext {
  readonly uid: string;
}

export interface KmsProvider {
  readonly kind: string;
  /** The largest plaintext whose ciphertext stays within the 1024 bytes the apiserver accepts. */
  readonly maxPlaintextBytes: number;
  /** A real encrypt/decrypt round trip; resolves with the current key_id. */
  healthCheck(): Promise<string>;
  encrypt(plaintext: Buffer, ctx: EncryptContext): Promise<ProviderEncryptResult>;
  /** keyId is the one the apiserver stored beside the ciphertext (v2), or undefined (v1beta1). */
  decrypt(ciphertext: Buffer, keyId: string | undefined, annotations: Readonly<Record<string, Buffer>>, ctx: DecryptContext): Promise<ProviderDecryptResult>;
  close(): Promise<void>;
}
