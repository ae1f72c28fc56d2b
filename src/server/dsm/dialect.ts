import { HTTP_STATUS } from '../../http-status.js';
import type { Dialect } from '../pipeline/dialect.js';
import { dsmBasicPrincipal } from './auth.js';

// DSM answers errors as a status with a plain-text message. DSM clients in
// the field send an app's API key as HTTP Basic on every call, so Basic is a
// credential on every DSM route (a user's name:password only signs in, at
// /sys/v1/session/auth, which reads it itself).

const TEXT = 'text/plain; charset=utf-8';
const BASIC = /^Basic /i;

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
