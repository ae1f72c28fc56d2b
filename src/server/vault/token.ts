import type { FastifyInstance, FastifyRequest } from 'fastify';
import { actorName, type Principal } from '../../access/access.js';
import { parseToken } from '../../access/secrets.js';
import type { RouteDeps } from '../route-deps.js';
import type { ServerCore } from '../core.js';
import { principalOf } from '../pipeline/context.js';
import { envelope, readBody } from './envelope.js';

// Vault clients check their token at start (lookup-self) and keep it alive
// (renew-self). Here the token is a keyhaven session (ttl from its expiry) or
// an app API key (no expiry: ttl 0, like a Vault root token). Neither is
// renewable: renew-self answers the remaining ttl and renewable=false.
// The token itself is never echoed back (Vault's "id" and "client_token" are empty).

/** The credential the request authenticated with, as sent. */
function presentedToken(req: FastifyRequest): string | undefined {
  const v = req.headers['x-vault-token'];
  if (typeof v === 'string' && v) return v;
  const m = /^Bearer +(\S+)$/i.exec(req.headers.authorization ?? '');
  return m?.[1];
}

interface TokenFacts {
  readonly accessor: string;
  readonly issuedAt: Date | undefined;
  readonly expiresAt: Date | undefined;
  readonly ttl: number;
}

async function tokenFacts(core: ServerCore, req: FastifyRequest, p: Principal): Promise<TokenFacts> {
  const parsed = p.via === 'session' || p.via === 'api_key' ? parseToken(presentedToken(req) ?? '') : undefined;
  // The credential row, by its public id (the token's secret part was verified by authentication).
  const cred = parsed ? await core.store.findCredential(parsed.id) : undefined;
  const expiresAt = cred?.expires_at ? new Date(cred.expires_at) : undefined;
  const ttl = expiresAt ? Math.max(0, Math.floor((expiresAt.getTime() - Date.now()) / 1000)) : 0;
  return { accessor: cred?.id ?? '', issuedAt: cred ? new Date(cred.created_at) : undefined, expiresAt, ttl };
}

const policiesOf = (p: Principal): string[] => (p.kind === 'app' ? ['keyhaven-app'] : p.roles.length ? [...p.roles] : ['default']);

export function registerVaultTokenRoutes(app: FastifyInstance, { core }: RouteDeps): void {
  const access = { anyPrincipal: true } as const;
  const hide = { hide: true };

  app.get('/v1/auth/token/lookup-self', { config: { op: 'vault.token.lookup-self', access }, schema: hide }, async (req) => {
    const p = principalOf(req);
    const f = await tokenFacts(core, req, p);
    const created = f.issuedAt ? Math.floor(f.issuedAt.getTime() / 1000) : 0;
    return envelope(req, {
      accessor: f.accessor,
      creation_time: created,
      creation_ttl: f.expiresAt && f.issuedAt ? Math.round((f.expiresAt.getTime() - f.issuedAt.getTime()) / 1000) : 0,
      display_name: actorName(p),
      entity_id: '',
      expire_time: f.expiresAt ? f.expiresAt.toISOString() : null,
      explicit_max_ttl: 0,
      id: '',
      issue_time: f.issuedAt ? f.issuedAt.toISOString() : null,
      meta: { principal: actorName(p), credential: p.via },
      num_uses: 0,
      orphan: true,
      path: p.via === 'session' ? 'auth/keyhaven/login' : '',
      policies: policiesOf(p),
      renewable: false,
      ttl: f.ttl,
      type: 'service',
    });
  });

  app.route({
    method: ['POST', 'PUT'],
    url: '/v1/auth/token/renew-self',
    config: { op: 'vault.token.renew-self', access },
    schema: hide,
    handler: async (req) => {
      const warnings: string[] = [];
      readBody(req.body, { increment: 'duration' }, warnings);
      const p = principalOf(req);
      const f = await tokenFacts(core, req, p);
      if (p.via === 'session') warnings.push('keyhaven sessions cannot be extended: the TTL is unchanged; log in again before it ends');
      return envelope(req, null, warnings, {
        client_token: '',
        accessor: f.accessor,
        policies: policiesOf(p),
        token_policies: policiesOf(p),
        metadata: { principal: actorName(p), credential: p.via },
        lease_duration: f.ttl,
        renewable: false,
        entity_id: '',
        token_type: 'service',
        orphan: true,
      });
    },
  });
}
