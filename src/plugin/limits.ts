// Limits from the Kubernetes KMS contract.
export const MAX_CIPHERTEXT_BYTES = 1024;
export const MAX_KEY_ID_BYTES = 1024;
