import { KeyhavenError, type ErrorCode } from '../../errors.js';

// The one place that says what a provider failure means for Status and Encrypt.
//
// Transient: "the KMS cannot answer now". Status rides it out with the last
// good key_id for the grace period. Every other failure means "do not write
// with this key" and fails Status at once: a Status that returns a key_id
// keeps the apiserver writing for minutes.
const TRANSIENT: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['unavailable', 'sealed', 'audit_failed', 'internal', 'too_many_attempts']);

// Refusals that mean this plugin may no longer use the key: what it keeps of
// the key (unwrapped local KEKs) goes too, so Decrypt stops at the next check.
export const ACCESS_REVOKED: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['permission_denied', 'unauthenticated', 'not_found', 'key_destroyed']);

export function isTransient(code: ErrorCode): boolean {
  return TRANSIENT.has(code);
}

/**
 * A failure as a KeyhavenError: anything else (a bug, a library's own error)
 * becomes `unavailable` with `what` as its message and the original as the
 * cause, never in the message (it may quote a secret).
 */
export function asKeyhavenError(e: unknown, what: string): KeyhavenError {
  return e instanceof KeyhavenError ? e : new KeyhavenError('unavailable', what, { cause: e });
}
