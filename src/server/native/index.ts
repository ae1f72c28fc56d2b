import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { KeyhavenError } from '../../errors.js';
import { countNodesOnOldVersion } from '../metrics.js';
import type { RouteSeries } from '../pipeline/metrics.js';
import { registerDialect } from '../pipeline/pipeline.js';
import type { RouteDeps } from '../route-deps.js';
import { registerApprovalRoutes } from './approvals.js';
import { registerAuditRoutes } from './audit.js';
import { registerAuthRoutes } from './auth.js';
import { registerClusterRoutes } from './clusters.js';
import { registerCryptoRoutes } from './crypto.js';
import { nativeDialect } from './dialect.js';
import { registerKeyRoutes } from './keys.js';
import { registerPrincipalRoutes } from './principals.js';
import { registerRecoveryRoutes } from './recoveries.js';
import { registerScanRoutes } from './scans.js';
import { registerSysRoutes } from './sys.js';

// The native API (/v1, OpenAPI at /v1/openapi.json) and /metrics. Its
// not-found answer is the server-wide one.

const BEARER = /^Bearer +([\x21-\x7e]{1,512})$/i;
// Routes whose `name` parameter is a key's name (audited with the key).
const KEY_ROUTE = /^\/v1\/keys\/:name(?:\/|$)/;

interface NativeOptions {
  /** When set, /metrics needs "Authorization: Bearer <this>". */
  readonly metricsToken?: Buffer | undefined;
}

export function registerNative(app: FastifyInstance, deps: RouteDeps, notFoundSeries: RouteSeries, opts: NativeOptions): Promise<void> {
  return registerDialect(app, nativeDialect, {
    metrics: deps.metrics,
    notFoundSeries,
    keyParam: (url) => KEY_ROUTE.test(url),
    routes: (scope) => {
      registerSysRoutes(scope, deps);
      registerAuthRoutes(scope, deps);
      registerKeyRoutes(scope, deps);
      registerCryptoRoutes(scope, deps);
      registerClusterRoutes(scope, deps);
      registerScanRoutes(scope, deps);
      registerRecoveryRoutes(scope, deps);
      registerPrincipalRoutes(scope, deps);
      registerApprovalRoutes(scope, deps);
      registerAuditRoutes(scope, deps);
      registerServiceRoutes(scope, app, deps, opts);
    },
  });
}

/** /v1/openapi.json (of the whole app, `root`) and /metrics. */
function registerServiceRoutes(scope: FastifyInstance, root: FastifyInstance, { core, metrics }: RouteDeps, opts: NativeOptions): void {
  scope.get('/v1/openapi.json', { config: { op: 'sys.openapi', access: { public: true, sealedOk: true } }, schema: { hide: true } }, async () => root.swagger());
  const metricsDigest = opts.metricsToken ? createHash('sha256').update(opts.metricsToken).digest() : undefined;
  scope.get('/metrics', { config: { op: 'sys.metrics', access: { public: true, sealedOk: true } }, schema: { hide: true } }, async (req, reply) => {
    if (metricsDigest) {
      // Compared as digests: constant time, whatever the length sent.
      const m = BEARER.exec(req.headers.authorization ?? '');
      const sent = createHash('sha256').update(m?.[1] ?? '').digest();
      if (!m || !timingSafeEqual(sent, metricsDigest)) throw new KeyhavenError('unauthenticated', 'metrics need "Authorization: Bearer <token>" with the token from metrics.tokenFile');
    }
    const s = core.status();
    metrics.sealed.set(!s.initialized ? 2 : s.sealed ? 1 : 0);
    await updateNodesOnOldVersion(core, metrics);
    void reply.type(metrics.registry.contentType);
    return metrics.registry.metrics();
  });
}

/** Counted at scrape time from the plugins' reports; nothing while sealed or when storage does not answer. */
async function updateNodesOnOldVersion(core: RouteDeps['core'], metrics: RouteDeps['metrics']): Promise<void> {
  try {
    // services() throws while sealed.
    const [keys, reports] = await Promise.all([core.services().keys.list(), core.store.listPluginReports({})]);
    metrics.setNodesOnOldVersion(countNodesOnOldVersion(keys, reports, Date.now()));
  } catch {
    metrics.setNodesOnOldVersion([]);
  }
}
