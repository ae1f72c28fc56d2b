import { HTTP_STATUS } from '../../http-status.js';
import type { Dialect } from '../pipeline/dialect.js';
import { dsmBasicPrincipal } from './auth.js';

// DSM answers errors as a status with a plain-text message. DSM clients in
// the field send an app's API key as HTTP Basic on every call, so Basic is a
// credential on every DSM route (a user's name:password only signs in, at
// /sys/v1/session/auth, which reads it itself).

const TEXT = 'text/plain; charset=utf-8';
const BASIC = /^Basic /i;
// A run of leading slashes before a DSM prefix: what a client makes of a base URL ending in "/".
const DOUBLED_DSM_PREFIX = /^\/{2,}(?=(?:sys|crypto)\/v1(?:[/?]|$))/;

/**
 * The URL with a doubled leading slash before a DSM path collapsed
 * ("//sys/v1/session/auth" → "/sys/v1/session/auth"); every other URL as it is.
 * The original SmartKey KMS plugin joins its configured base URL, whose sample
 * ends in "/", with "/sys/v1/…", and DSM itself answers those paths. Only DSM
 * paths: fastify's ignoreDuplicateSlashes would also start answering
 * "//v1/…" and "/v1/transit//…", which the native and Vault APIs refuse (404).
 */
export function collapseDsmSlashes(url: string): string {
  // Most URLs have one leading slash: skip the regex for them.
  return url.charCodeAt(1) === 0x2f ? url.replace(DOUBLED_DSM_PREFIX, '/') : url;
}

export const dsmDialect: Dialect = {
  name: 'dsm',
  prefixes: ['/sys/v1', '/crypto/v1'],
  error: (code, message) => ({ status: HTTP_STATUS[code], type: TEXT, body: message }),
  notFound: (method, url) => ({ status: 404, type: TEXT, body: `no route ${method} ${url.split('?')[0]!.slice(0, 200)}`, result: 'not_found' }),
  credentials: (req, access) => {
    const h = req.headers.authorization;
    return h !== undefined && BASIC.test(h) ? dsmBasicPrincipal(access, h) : undefined;
  },
};
