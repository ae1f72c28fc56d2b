import type { FastifyInstance } from 'fastify';
import { KeyhavenError } from '../../errors.js';
import type { RouteSeries } from '../pipeline/metrics.js';
import { registerDialect } from '../pipeline/pipeline.js';
import type { RouteDeps } from '../route-deps.js';
import { registerVaultCryptoRoutes } from './crypto.js';
import { vaultDialect } from './dialect.js';
import { registerVaultKeyRoutes } from './keys.js';
import { registerVaultTokenRoutes } from './token.js';

// The Vault / OpenBao Transit compatibility API (docs/compat-vault.md):
// /v1/transit/* and /v1/auth/token/{lookup-self,renew-self}, in Vault's
// shapes, over keyhaven's keys, grants and audit. The routes stay out of the
// OpenAPI document (schema.hide). Errors, also those raised before a handler
// runs, take Vault's shape from the dialect (dialect.ts).

/** The Vault dialect: its routes, error shape and not-found answers in one encapsulated context. */
export function registerVault(app: FastifyInstance, deps: RouteDeps, notFoundSeries: RouteSeries): Promise<void> {
  return registerDialect(app, vaultDialect, { metrics: deps.metrics, notFoundSeries, routes: (vault) => registerVaultRoutes(vault, deps) });
}

function registerVaultRoutes(vault: FastifyInstance, deps: RouteDeps): void {
  // The body parsing below applies to these routes only (their own context).
  // Vault reads every body as JSON whatever its content type (curl -d sends
  // a form type) and takes an empty body as no fields.
  const json = vault.getDefaultJsonParser('error', 'error');
  vault.removeAllContentTypeParsers();
  vault.addContentTypeParser('*', { parseAs: 'string' }, (req, body, done) => {
    if ((body as string).trim() === '') return done(null, undefined);
    json(req, body as string, (err, value) => {
      if (err) return done(new KeyhavenError('invalid_argument', 'failed to parse JSON input: the body is not valid JSON'), undefined);
      done(null, value);
    });
  });
  vault.addHook('onRequest', async (req) => {
    // Response wrapping would hand back a wrapping token instead of the data; keyhaven has none.
    if (req.headers['x-vault-wrap-ttl'] !== undefined) throw new KeyhavenError('invalid_argument', 'response wrapping (X-Vault-Wrap-TTL) is not supported');
  });
  registerVaultKeyRoutes(vault, deps);
  registerVaultCryptoRoutes(vault, deps);
  registerVaultTokenRoutes(vault, deps);
}
