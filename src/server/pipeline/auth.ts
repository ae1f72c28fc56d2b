import type { TLSSocket } from 'node:tls';
import type { FastifyRequest } from 'fastify';
import type { Principal } from '../../access/access.js';
import { KeyhavenError } from '../../errors.js';
import type { Services } from '../core.js';
import type { AccessRule } from './context.js';
import type { Dialect } from './dialect.js';

const BEARER = /^Bearer +([\x21-\x7e]{1,512})$/i;

/** Whether a client certificate was presented and did not verify (expired, unknown CA). */
function refusedCertificate(tls: TLSSocket): boolean {
  return typeof tls.getPeerCertificate === 'function' && !tls.authorized && Object.keys(tls.getPeerCertificate() ?? {}).length > 0;
}

/**
 * Who sent the request: the dialect's own credentials first (X-Vault-Token,
 * DSM Basic), then "Authorization: Bearer", then a verified client
 * certificate registered to an app. Undefined when it carries none.
 */
export async function authenticate(services: Services, req: FastifyRequest, dialect: Dialect): Promise<Principal | undefined> {
  const tls = req.raw.socket as TLSSocket;
  // A client certificate that was presented but does not verify is refused
  // outright, with or without a token: otherwise a broken mTLS set-up would go unnoticed.
  if (refusedCertificate(tls)) {
    const why = String(tls.authorizationError ?? 'not trusted');
    throw new KeyhavenError('unauthenticated', `the client certificate was refused (${why.slice(0, 80)}); present a valid certificate from the configured client CA, or none`);
  }
  const own = dialect.credentials?.(req, services.access);
  if (own !== undefined) return own;
  const h = req.headers.authorization;
  if (h !== undefined) {
    const m = BEARER.exec(h);
    if (!m) throw new KeyhavenError('unauthenticated', 'the Authorization header must be "Bearer <token>"');
    return services.access.authenticate(m[1]!);
  }
  if (typeof tls.getPeerCertificate === 'function' && tls.authorized) {
    const cert = tls.getPeerCertificate();
    if (cert?.fingerprint256) return services.access.authenticateCert(cert.fingerprint256.replace(/:/g, '').toLowerCase());
  }
  return undefined;
}

/** Whether the route's access rule lets this principal in (apps then need a per-key grant, checked by the handler). */
export function allowed(rule: AccessRule, p: Principal | undefined): boolean {
  if ('public' in rule) return true;
  if (!p) return false;
  if ('anyPrincipal' in rule) return true;
  if ('roles' in rule && p.kind === 'user' && p.roles.some((r) => rule.roles.includes(r))) return true;
  if ('apps' in rule && p.kind === 'app') return true;
  return false;
}

/** A well-formed access rule (the route-table check, pipeline.ts). */
export function isAccessRule(rule: unknown): rule is AccessRule {
  if (typeof rule !== 'object' || rule === null) return false;
  const r = rule as Record<string, unknown>;
  if (r.public === true) return true;
  if (r.anyPrincipal === true) return true;
  if (Array.isArray(r.roles)) return r.roles.length > 0 && (r.apps === undefined || r.apps === 'granted');
  return r.apps === 'granted';
}
