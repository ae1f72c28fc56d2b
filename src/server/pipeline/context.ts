import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Principal } from '../../access/access.js';
import type { CryptoOperation, Role } from '../../access/roles.js';
import { KeyhavenError } from '../../errors.js';
import type { Services } from '../core.js';

/** Who may call a route. Checked before the body is parsed. */
export type AccessRule =
  | { readonly public: true; readonly sealedOk?: boolean }
  | { readonly roles: readonly Role[]; readonly apps?: 'granted' }
  | { readonly apps: 'granted' }
  | { readonly anyPrincipal: true };

export interface RouteConfig {
  /** The audit operation name, e.g. "key.rotate". */
  readonly op: string;
  readonly access: AccessRule;
}

/** What a handler adds to its request's audit record. */
export interface AuditNote {
  keyName?: string | undefined;
  keyVersion?: number | undefined;
  /** Error code (or "ok") of the outcome. */
  result?: string;
  details: Record<string, string | number | boolean>;
}

declare module 'fastify' {
  interface FastifyContextConfig {
    op?: string;
    access?: AccessRule;
  }
  interface FastifyRequest {
    principal: Principal | undefined;
    auditNote: AuditNote;
    startedAt: bigint;
  }
}

export function principalOf(req: FastifyRequest): Principal {
  if (!req.principal) throw new KeyhavenError('unauthenticated', 'authentication required');
  return req.principal;
}

/** The services of an unsealed server, for a handler. */
export type ServicesOf = () => Services;

/** Checks that an app holds `op` on the key, which must exist; returns the key id. */
export async function requireGrant(services: Services, req: FastifyRequest, keyName: string, op: CryptoOperation): Promise<string> {
  const p = principalOf(req);
  if (p.kind !== 'app') throw new KeyhavenError('permission_denied', 'crypto operations are for apps with a grant on the key');
  await services.keys.ensureLoaded(keyName).catch((e: unknown) => {
    // Do not tell an app without grants which keys exist.
    if (e instanceof KeyhavenError && e.code === 'not_found') throw new KeyhavenError('permission_denied', `no ${op} grant on key "${keyName}"`);
    throw e;
  });
  const keyId = services.keys.idOf(keyName)!;
  const ops = await services.access.grantedOperations(p, keyId);
  if (!ops.has(op)) throw new KeyhavenError('permission_denied', `no ${op} grant on key "${keyName}"`);
  return keyId;
}

export function accepted(reply: FastifyReply): FastifyReply {
  return reply.code(202);
}
