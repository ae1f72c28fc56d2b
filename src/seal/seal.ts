/**
 * Root-key protection. Every kind (key file now; Shamir shares and PKCS#11
 * later) hands the barrier the 32-byte root key, or fails with a clear error.
 */
export interface Seal {
  readonly kind: 'keyfile';
  rootKey(): Promise<Buffer>;
}
