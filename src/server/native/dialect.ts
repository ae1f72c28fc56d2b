import type { ErrorCode } from '../../errors.js';
import { HTTP_STATUS } from '../../http-status.js';
import type { Dialect } from '../pipeline/dialect.js';

// The native API's error shape: {"error": {"code", "message", "requestId"}}
// with the status of HTTP_STATUS. It is also the server-wide not-found
// answer (prefix "/").

function errorBody(code: ErrorCode, message: string, requestId: string): string {
  return JSON.stringify({ error: { code, message, requestId } });
}

export const nativeDialect: Dialect = {
  name: 'native',
  prefixes: ['/'],
  error: (code, message, requestId) => ({ status: HTTP_STATUS[code], type: 'application/json', body: errorBody(code, message, requestId) }),
  notFound: (method, url, requestId) => ({
    status: 404,
    type: 'application/json',
    body: errorBody('not_found', `no route ${method} ${url.split('?')[0]!.slice(0, 200)}`, requestId),
    result: 'not_found',
  }),
};
