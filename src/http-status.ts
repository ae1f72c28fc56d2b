import type { ErrorCode } from './errors.js';

// The single mapping from keyhaven error codes to HTTP status codes.
export const HTTP_STATUS: Readonly<Record<ErrorCode, number>> = Object.freeze({
  invalid_argument: 400,
  not_found: 404,
  already_exists: 409,
  unknown_key_id: 404,
  key_disabled: 409,
  key_destroyed: 410,
  integrity: 400,
  failed_precondition: 409,
  unavailable: 503,
  audit_failed: 503,
  config_invalid: 500,
  unauthenticated: 401,
  permission_denied: 403,
  sealed: 503,
  too_large: 413,
  too_many_attempts: 429,
  internal: 500,
});
