import { KeyhavenError, type ErrorCode } from '../../../errors.js';

// AWS KMS errors (their exception names, as the SDK reports them in
// `error.name`) to keyhaven codes, so Status and metrics react to whose fault
// a failure is: the caller's (refused at once) or the service's (the grace
// period rides it out).

const BY_NAME: Readonly<Record<string, ErrorCode>> = {
  AccessDeniedException: 'permission_denied',
  AccessDenied: 'permission_denied',
  NotAuthorized: 'permission_denied',
  // Credentials AWS does not accept. Their messages are never passed on: AWS
  // may quote the canonical request, which holds the session token.
  UnrecognizedClientException: 'unauthenticated',
  InvalidSignatureException: 'unauthenticated',
  IncompleteSignature: 'unauthenticated',
  IncompleteSignatureException: 'unauthenticated',
  MissingAuthenticationToken: 'unauthenticated',
  MissingAuthenticationTokenException: 'unauthenticated',
  InvalidClientTokenId: 'unauthenticated',
  SignatureDoesNotMatch: 'unauthenticated',
  ExpiredTokenException: 'unauthenticated',
  ExpiredToken: 'unauthenticated',
  RequestExpired: 'unauthenticated',
  // STS refusing the web identity token while the SDK loads credentials (EKS IAM roles for service accounts).
  InvalidIdentityTokenException: 'unauthenticated',
  IDPRejectedClaimException: 'unauthenticated',
  IDPCommunicationErrorException: 'unavailable',
  ThrottlingException: 'too_many_attempts',
  Throttling: 'too_many_attempts',
  LimitExceededException: 'too_many_attempts',
  TooManyRequestsException: 'too_many_attempts',
  RequestLimitExceeded: 'too_many_attempts',
  KMSInternalException: 'unavailable',
  InternalFailure: 'unavailable',
  ServiceUnavailable: 'unavailable',
  ServiceUnavailableException: 'unavailable',
  DependencyTimeoutException: 'unavailable',
  // A custom key store's HSM or external key manager did not answer.
  KeyUnavailableException: 'unavailable',
  CustomKeyStoreInvalidStateException: 'unavailable',
  TimeoutError: 'unavailable',
  RequestTimeout: 'unavailable',
  RequestTimeoutException: 'unavailable',
  AbortError: 'unavailable',
  InvalidCiphertextException: 'integrity',
  IncorrectKeyException: 'integrity',
  DisabledException: 'key_disabled',
  NotFoundException: 'not_found',
  ValidationException: 'invalid_argument',
  SerializationException: 'invalid_argument',
  InvalidParameterValue: 'invalid_argument',
  InvalidGrantTokenException: 'invalid_argument',
  InvalidArnException: 'invalid_argument',
  // The key exists but is not a symmetric encryption key: a configuration problem, not the caller's.
  InvalidKeyUsageException: 'failed_precondition',
  UnsupportedOperationException: 'failed_precondition',
};

const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'ECONNABORTED', 'ESOCKETTIMEDOUT', 'UND_ERR_SOCKET', 'ERR_STREAM_PREMATURE_CLOSE']);

/** A name safe to print: AWS exception names are identifiers; anything else is shown as "unknown". */
function safeName(v: unknown): string {
  return typeof v === 'string' && /^[A-Za-z][A-Za-z0-9_.:#-]{0,79}$/.test(v) ? v : 'unknown';
}

/**
 * AWS's own message, when it helps and cannot hold a secret: cut short, one
 * line, printable ASCII. (AccessDenied names the principal and action; that
 * is what an operator needs to fix a policy.)
 */
function safeMessage(v: unknown): string {
  // The SDK says UnknownError when AWS sent no message (InvalidCiphertextException does not).
  if (typeof v !== 'string' || v.length === 0 || v === 'UnknownError') return '';
  const one = v.replace(/[^\x20-\x7e]+/g, ' ').trim();
  return one.length > 240 ? `${one.slice(0, 240)}…` : one;
}

// AWS leaves a key whose deletion was cancelled Disabled: cancelling alone does not bring it back.
const UNDELETE = 'cancel the deletion (aws kms cancel-key-deletion), then enable the key (aws kms enable-key): a key whose deletion is cancelled stays disabled';

/** KMSInvalidStateException covers several key states; its message names the state. */
function invalidStateCode(message: string): ErrorCode {
  if (/pending ?(replica ?)?deletion/i.test(message)) return 'key_destroyed';
  if (/\bunavailable\b|disconnected/i.test(message)) return 'unavailable';
  return 'key_disabled';
}

/** The KeyState DescribeKey reports, as the code a health check fails with (undefined: usable). */
export function keyStateError(state: string | undefined, arn: string): KeyhavenError | undefined {
  switch (state) {
    case 'Enabled':
      return undefined;
    case 'Disabled':
      return new KeyhavenError('key_disabled', `AWS KMS key ${arn} is disabled (enable it to use it again: aws kms enable-key)`);
    case 'PendingDeletion':
    case 'PendingReplicaDeletion':
      return new KeyhavenError('key_destroyed', `AWS KMS key ${arn} is pending deletion; to use it again, ${UNDELETE}`);
    case 'PendingImport':
      return new KeyhavenError('key_disabled', `AWS KMS key ${arn} has no key material (pending import, or the imported material expired)`);
    case 'Unavailable':
      return new KeyhavenError('unavailable', `AWS KMS key ${arn} is unavailable (its custom key store is disconnected)`);
    case 'Creating':
    case 'Updating':
      return new KeyhavenError('unavailable', `AWS KMS key ${arn} is being ${state === 'Creating' ? 'created' : 'updated'}`);
    default:
      return new KeyhavenError('failed_precondition', `AWS KMS key ${arn} is in state ${safeName(state)}, which keyhaven does not use`);
  }
}

/**
 * Whether DescribeKey's KeySpec and KeyUsage name a key the plugin can use
 * (undefined: usable). A SYMMETRIC_DEFAULT key can only encrypt and decrypt,
 * so a reply without KeyUsage (some AWS-compatible services omit it) still
 * names an encryption key; without a KeySpec nothing can be told (an RSA key
 * may be ENCRYPT_DECRYPT too), and the message says which field is missing.
 */
export function keyUsageError(keySpec: string | undefined, keyUsage: string | undefined, arn: string): KeyhavenError | undefined {
  const need = 'the plugin needs a symmetric encryption key (KeySpec SYMMETRIC_DEFAULT, KeyUsage ENCRYPT_DECRYPT)';
  if (keySpec === undefined) {
    const usage = keyUsage === undefined ? ' and no KeyUsage' : ` (KeyUsage ${safeName(keyUsage)})`;
    return new KeyhavenError('failed_precondition', `AWS KMS key ${arn}: DescribeKey reported no KeySpec${usage}, so it cannot be told to be a symmetric encryption key; ${need}`);
  }
  if (keySpec === 'SYMMETRIC_DEFAULT' && (keyUsage === undefined || keyUsage === 'ENCRYPT_DECRYPT')) return undefined;
  const usage = keyUsage === undefined ? 'with no KeyUsage reported' : `for ${safeName(keyUsage)}`;
  return new KeyhavenError('failed_precondition', `AWS KMS key ${arn} is ${safeName(keySpec)} ${usage}; ${need}`);
}

// What the SDK's credential providers throw when they cannot load credentials
// (none found, IMDS or the container endpoint not answering or throttled, a
// credential_process failing). AWS has not refused anything: on EC2 a throttled
// IMDS during the hourly refresh must not count as revoked (which fails Status
// at once and drops the cached KEKs), so these ride the grace period.
const LOAD_ERRORS = new Set(['CredentialsProviderError', 'ProviderError', 'TokenProviderError', 'InstanceMetadataV1FallbackError']);

function credentialsNotLoaded(name: string, message: string, operation: string): KeyhavenError {
  // Only the first line: a failing credential_process's message goes on with its stderr.
  const first = safeMessage(message.split('\n', 1)[0]);
  return new KeyhavenError('unavailable', `AWS KMS ${operation}: AWS credentials could not be loaded (${name}${first ? `: ${first}` : ''}); the SDK looks in the environment, shared config files, web identity token, container and instance metadata`);
}

/**
 * An error thrown while the SDK loaded credentials, before any request to
 * KMS. A refusal by AWS itself (STS answering AssumeRoleWithWebIdentity with
 * ExpiredTokenException or AccessDenied) keeps its code; anything else
 * (no answer, a timeout, nothing found) is `unavailable`.
 */
export function classifyCredentialError(e: unknown, operation: string): KeyhavenError {
  if (e instanceof KeyhavenError) return e;
  const err = (e ?? {}) as { name?: unknown; message?: unknown; $metadata?: { httpStatusCode?: unknown } };
  if (typeof err.$metadata?.httpStatusCode === 'number') {
    const answered = classifyAwsError(e, `${operation} (loading credentials)`);
    if (answered.code === 'unauthenticated' || answered.code === 'permission_denied' || answered.code === 'too_many_attempts') return answered;
  }
  return credentialsNotLoaded(safeName(err.name), typeof err.message === 'string' ? err.message : '', operation);
}

/** Any error the SDK threw, as a KeyhavenError whose message names the operation but carries no secret. */
export function classifyAwsError(e: unknown, operation: string): KeyhavenError {
  if (e instanceof KeyhavenError) return e;
  const err = (e ?? {}) as { name?: unknown; code?: unknown; message?: unknown; $fault?: unknown; $metadata?: { httpStatusCode?: unknown } };
  const name = safeName(err.name);
  const message = typeof err.message === 'string' ? err.message : '';
  if (name === 'KMSInvalidStateException') {
    const code = invalidStateCode(message);
    return new KeyhavenError(code, `AWS KMS ${operation}: ${name}: ${safeMessage(message)}${code === 'key_destroyed' ? `; to use the key again, ${UNDELETE}` : ''}`);
  }
  if (LOAD_ERRORS.has(name)) return credentialsNotLoaded(name, message, operation);
  // Before the name: the SDK names a reset socket "TimeoutError" too.
  const sysCode = typeof err.code === 'string' ? err.code : undefined;
  if (sysCode === 'ETIMEDOUT' && name === 'TimeoutError') return new KeyhavenError('unavailable', `AWS KMS ${operation}: no answer within the deadline (attempt timeout)`);
  if (sysCode && NETWORK_CODES.has(sysCode)) return new KeyhavenError('unavailable', `AWS KMS ${operation}: cannot reach the endpoint (${sysCode})`);
  const code = BY_NAME[name];
  if (code === 'unauthenticated') return new KeyhavenError(code, `AWS KMS ${operation}: ${name}: AWS did not accept the plugin's credentials (wrong, expired or revoked)`);
  if (code === 'unavailable' && (name === 'TimeoutError' || name === 'AbortError' || name.startsWith('RequestTimeout'))) {
    return new KeyhavenError(code, `AWS KMS ${operation}: no answer within the deadline`);
  }
  if (code) return new KeyhavenError(code, `AWS KMS ${operation}: ${name}${safeMessage(message) ? `: ${safeMessage(message)}` : ''}`);
  const status = typeof err.$metadata?.httpStatusCode === 'number' ? err.$metadata.httpStatusCode : undefined;
  // Anything else (an answer that is not a KMS reply, a 5xx, an exception this code does not know) rides the grace period.
  return new KeyhavenError('unavailable', `AWS KMS ${operation}: unexpected answer (${name}${status ? `, HTTP ${status}` : ''})`);
}
