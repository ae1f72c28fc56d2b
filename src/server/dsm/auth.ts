import type { Access, Principal } from '../../access/access.js';
import { KeyhavenError } from '../../errors.js';

// DSM authentication, mapped onto keyhaven credentials.
//
// A DSM "API key" is base64("<app-id>:<secret>"), sent as HTTP Basic. For a
// keyhaven app either form works:
//   <app name>:<full API key kha_…>   (recommended: readable, checked against the key)
//   <key id>:<secret part>            (the two halves of kha_<key id>_<secret part>)
// Any other Basic pair is a user's name and password, accepted only by
// POST /sys/v1/session/auth (a login, counted towards lock-out like
// /v1/auth/login); users then send the Bearer access_token it returns.

export interface BasicPair {
  readonly user: string;
  readonly pass: string;
}

const BASIC = /^Basic +([A-Za-z0-9+/]{1,4096}={0,2})$/i;
const API_KEY = /^kha_([0-9a-f]{16})_[A-Za-z0-9_-]{43}$/;
const APP_NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;

/** Parses `Authorization: Basic …`; never echoes the credentials. */
export function parseBasic(header: string): BasicPair {
  const m = BASIC.exec(header);
  if (!m) throw new KeyhavenError('unauthenticated', 'the Authorization header must be "Basic <base64 of app-id:api-key>" or "Bearer <access_token>"');
  const text = Buffer.from(m[1]!, 'base64').toString('utf8');
  const at = text.indexOf(':');
  if (at <= 0 || at === text.length - 1) throw new KeyhavenError('unauthenticated', 'the Basic credentials must be base64 of "<app-id>:<api-key>" or "<user>:<password>"');
  return { user: text.slice(0, at), pass: text.slice(at + 1) };
}

/** The keyhaven API key a Basic pair carries, and the app name it must belong to; undefined for a user:password pair. */
export function apiKeyOf(pair: BasicPair): { token: string; appName: string | undefined } | undefined {
  const full = API_KEY.exec(pair.pass);
  if (full) {
    if (pair.user === full[1]) return { token: pair.pass, appName: undefined };
    if (APP_NAME.test(pair.user)) return { token: pair.pass, appName: pair.user };
    return undefined;
  }
  if (/^[0-9a-f]{16}$/.test(pair.user) && /^[A-Za-z0-9_-]{43}$/.test(pair.pass)) return { token: `kha_${pair.user}_${pair.pass}`, appName: undefined };
  return undefined;
}

/** Authenticates an app's API key given as a Basic pair. */
export async function authenticateAppKey(access: Access, key: { token: string; appName: string | undefined }): Promise<Principal> {
  const p = await access.authenticate(key.token);
  if (p.kind !== 'app' || (key.appName !== undefined && key.appName !== p.name)) {
    throw new KeyhavenError('unauthenticated', 'the app-id does not match the API key');
  }
  return p;
}

/** Basic on a crypto or key route: only an app's API key (users log in at /sys/v1/session/auth). */
export async function dsmBasicPrincipal(access: Access, header: string): Promise<Principal> {
  const key = apiKeyOf(parseBasic(header));
  if (!key) {
    throw new KeyhavenError('unauthenticated', 'Basic credentials here must be an app API key (base64 of "<app name>:kha_…"); users log in at POST /sys/v1/session/auth and send the Bearer access_token');
  }
  return authenticateAppKey(access, key);
}
