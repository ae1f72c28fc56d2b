import type { FastifyBaseLogger, FastifyError } from 'fastify';
import { hasZodFastifySchemaValidationErrors } from 'fastify-type-provider-zod';
import { KeyhavenError, type ErrorCode } from '../../errors.js';

// Anything thrown in a request becomes one of our error codes here; each
// dialect then shapes it (dialect.ts).

export const AUDIT_FAILED = 'the audit record could not be written; request refused';

/** Maps anything thrown in a request to our error code and a message that is safe to return. */
export function classify(err: FastifyError | Error, log: FastifyBaseLogger): { code: ErrorCode; message: string } {
  if (err instanceof KeyhavenError) return { code: err.code, message: err.message };
  if (hasZodFastifySchemaValidationErrors(err)) {
    const where = (err as FastifyError).validationContext ?? 'request';
    const issues = (err as FastifyError).validation!.slice(0, 5).map((v) => {
      const path = (v.instancePath ?? '').replace(/^\//, '').replace(/\//g, '.');
      return `${where}${path ? `.${path}` : ''}: ${v.message ?? 'invalid'}`;
    });
    return { code: 'invalid_argument', message: issues.join('; ') };
  }
  const fe = err as FastifyError;
  switch (fe.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return { code: 'too_large', message: 'request body is larger than the server accepts' };
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return { code: 'invalid_argument', message: 'content-type must be application/json' };
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return { code: 'invalid_argument', message: 'request body is empty; send a JSON object' };
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return { code: 'invalid_argument', message: 'content-length does not match the body' };
    default:
  }
  if (fe.statusCode !== undefined && fe.statusCode >= 400 && fe.statusCode < 500) {
    if (err instanceof SyntaxError || /JSON/i.test(fe.message)) return { code: 'invalid_argument', message: 'request body is not valid JSON' };
    return { code: 'invalid_argument', message: `bad request (${fe.code ?? fe.statusCode})` };
  }
  log.error({ err }, 'unexpected error in request');
  return { code: 'internal', message: 'internal error' };
}
