import { status } from '@grpc/grpc-js';
import type { ErrorCode } from './errors.js';

// The single mapping from keyhaven error codes to gRPC status codes.
export const GRPC_STATUS: Readonly<Record<ErrorCode, status>> = Object.freeze({
  invalid_argument: status.INVALID_ARGUMENT,
  not_found: status.NOT_FOUND,
  already_exists: status.ALREADY_EXISTS,
  unknown_key_id: status.NOT_FOUND,
  key_disabled: status.FAILED_PRECONDITION,
  key_destroyed: status.FAILED_PRECONDITION,
  integrity: status.INVALID_ARGUMENT,
  failed_precondition: status.FAILED_PRECONDITION,
  unavailable: status.UNAVAILABLE,
  audit_failed: status.UNAVAILABLE,
  config_invalid: status.FAILED_PRECONDITION,
  unauthenticated: status.UNAUTHENTICATED,
  permission_denied: status.PERMISSION_DENIED,
  sealed: status.UNAVAILABLE,
  too_large: status.RESOURCE_EXHAUSTED,
  too_many_attempts: status.RESOURCE_EXHAUSTED,
  internal: status.INTERNAL,
});
