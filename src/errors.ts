// One error type for the whole codebase. The code set is closed: every layer
// reports failures with one of these, and the edges (gRPC, HTTP, CLI) map the
// code to a status in exactly one place each (grpc-status.ts, http-status.ts).

export const ERROR_CODES = [
  'invalid_argument', // the caller sent something malformed
  'not_found', // a named object does not exist
  'already_exists',
  'unknown_key_id', // a key_id this store never issued
  'key_disabled', // the key exists but may not be used now
  'key_destroyed', // the key version's material is gone for good
  'integrity', // ciphertext or stored data failed authentication
  'failed_precondition', // the operation is not allowed in the current state
  'unavailable', // a dependency (storage, provider) cannot be reached now
  'audit_failed', // the audit record could not be written: fail closed
  'config_invalid', // configuration or a file it names is unusable
  'unauthenticated', // no credentials, or credentials that do not verify
  'permission_denied', // authenticated, but not allowed to do this
  'sealed', // the server holds no root key yet: unseal it first
  'too_large', // a request body or field above its limit
  'too_many_attempts', // locked out after repeated failures; retry later
  'internal', // a bug or an unexpected failure
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

export class KeyhavenError extends Error {
  readonly code: ErrorCode;

  // Messages must never carry key material, plaintext or credentials: they
  // reach logs, gRPC statuses and terminals.
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'KeyhavenError';
    this.code = code;
  }
}

/** Wraps anything thrown into a KeyhavenError without leaking its message. */
export function asKeyhavenError(e: unknown): KeyhavenError {
  if (e instanceof KeyhavenError) return e;
  return new KeyhavenError('internal', 'internal error', { cause: e });
}
