import { KeyhavenError, type ErrorCode } from '../errors.js';

// Exit codes: 0 ok, 1 operation failed, 2 bad usage or input, 3 not found,
// 4 refused in the current state, 5 not authenticated or not allowed,
// 6 sealed, 78 configuration unusable (EX_CONFIG).
const EXIT: Partial<Record<ErrorCode, number>> = {
  invalid_argument: 2,
  not_found: 3,
  unknown_key_id: 3,
  already_exists: 4,
  failed_precondition: 4,
  key_disabled: 4,
  key_destroyed: 4,
  config_invalid: 78,
  unauthenticated: 5,
  permission_denied: 5,
  sealed: 6,
  too_large: 2,
};

function exitCodeFor(e: unknown): number {
  return e instanceof KeyhavenError ? (EXIT[e.code] ?? 1) : 1;
}

/** The one place the CLI reports a failure. */
export function reportError(e: unknown): number {
  if (e instanceof KeyhavenError) {
    process.stderr.write(`keyhaven: ${e.message}\n`);
  } else {
    process.stderr.write(`keyhaven: unexpected error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  }
  return exitCodeFor(e);
}
