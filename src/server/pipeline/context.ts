import type { FastifyRequest } from 'fastify';
import type { Principal } from '../../access/access.js';
import type { CryptoOperation, Role } from '../../access/roles.js';
import { KeyhavenError } from '../../errors.js';
import type { KeyInfo } from '../../keys/key-store.js';
import type { Services } from '../core.js';
import type { Dialect } from './dialect.js';
import type { RouteSeries } from './metrics.js';

/** Who may call a route. Checked before the body is parsed. */
export type AccessRule =
  | { readonly public: true; readonly sealedOk?: boolean }
  | { readonly roles: readonly Role[]; readonly apps?: 'granted' }
  | { readonly apps: 'granted' }
  | { readonly anyPrincipal: true };

/**
 * Every route's config: the audit operation and who may call it. Required by
 * type (FastifyContextConfig below) and checked again when a route is added
 * (pipeline.ts), so no route can forget either.
 */
export interface RouteConfig {
  /** The audit operation name, e.g. "key.rotate". */
  readonly op: string;
  readonly access: AccessRule;
}

/** What the pipeline adds to each route's config when it is registered (pipeline.ts). */
export interface RouteStamp {
  /** The API dialect whose route this is: its error shape, extra credentials. */
  readonly dialect: Dialect;
  /** The route's metric series, bound once. */
  readonly series: RouteSeries;
  /** The not-found handler of a dialect (audited as http.unknown with the path). */
  readonly notFound?: boolean;
  /** The route's `name` path parameter names a key (noted in the audit record). */
  readonly keyParam?: boolean;
  /** The route has a body schema (a request without a body is read as {}). */
  readonly body?: boolean;
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
  interface FastifyContextConfig extends RouteConfig {
    /** Set by the pipeline, never by a route. */
    readonly stamp?: RouteStamp;
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

/** The header naming the recovery (POST /v1/recoveries) a request is made in. */
const RECOVERY_HEADER = 'x-keyhaven-recovery';

/**
 * Checks that an app holds `op` on the key, which must exist; returns the key
 * id. A break-glass app only decrypts, through the native API, inside an open
 * recovery of its own; any app naming a recovery must name such a one (it is
 * then noted in the audit record).
 */
export async function requireGrant(services: Services, req: FastifyRequest, keyName: string, op: CryptoOperation): Promise<string> {
  const p = principalOf(req);
  if (p.kind !== 'app') throw new KeyhavenError('permission_denied', 'crypto operations are for apps with a grant on the key');
  if (p.breakGlass) {
    // Checked before the grant: these refusals say nothing about which keys exist.
    if (op !== 'decrypt') throw new KeyhavenError('permission_denied', `app "${p.name}" is a break-glass app: it may only decrypt (inside an open recovery), never ${op}`);
    if (req.routeConfig?.stamp?.dialect.name !== 'native') throw new KeyhavenError('permission_denied', `app "${p.name}" is a break-glass app: it decrypts only through the native API (POST /v1/keys/{name}/decrypt with ${RECOVERY_HEADER})`);
    if (req.headers[RECOVERY_HEADER] === undefined) throw new KeyhavenError('permission_denied', `app "${p.name}" is a break-glass app: it decrypts only inside an open recovery; open one with POST /v1/recoveries and send its id in the ${RECOVERY_HEADER} header`);
  }
  await services.keys.ensureLoaded(keyName).catch((e: unknown) => {
    // Do not tell an app without grants which keys exist.
    if (e instanceof KeyhavenError && e.code === 'not_found') throw new KeyhavenError('permission_denied', `no ${op} grant on key "${keyName}"`);
    throw e;
  });
  const keyId = services.keys.idOf(keyName)!;
  const ops = await services.access.grantedOperations(p, keyId);
  if (!ops.has(op)) throw new KeyhavenError('permission_denied', `no ${op} grant on key "${keyName}"`);
  const named = req.headers[RECOVERY_HEADER];
  if (named !== undefined) {
    const id = Array.isArray(named) ? '' : named;
    const rec = await services.recoveries.check(p, id);
    req.auditNote.details.recovery = rec.id;
  }
  return keyId;
}

/**
 * Whether a principal may see a key's metadata: every admin role that may
 * call the route does; an app only with a grant on the key. The one place of
 * this rule, for all three dialects.
 */
export async function canSeeKey(services: Services, p: Principal, keyId: string): Promise<boolean> {
  return p.kind !== 'app' || (await services.access.grantedOperations(p, keyId)).size > 0;
}

/**
 * Reads a key for a principal. An app gets `hidden` both for a key that does
 * not exist and for one it holds no grant on, so it cannot learn which keys
 * exist; others get the key store's own errors (not_found).
 */
export async function visibleKey(services: Services, p: Principal, name: string, hidden: () => KeyhavenError): Promise<KeyInfo> {
  if (p.kind === 'app') {
    await services.keys.ensureLoaded(name).catch(() => {
      throw hidden();
    });
    if (!(await canSeeKey(services, p, services.keys.idOf(name)!))) throw hidden();
  }
  return services.keys.get(name);
}
