import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest, RouteOptions } from 'fastify';
import { actorName } from '../../access/access.js';
import { KeyhavenError } from '../../errors.js';
import { KEY_NAME } from '../../key-name.js';
import type { ServerCore, Services } from '../core.js';
import type { ServerMetrics } from '../metrics.js';
import { allowed, authenticate, isAccessRule } from './auth.js';
import type { RouteConfig, RouteStamp } from './context.js';
import type { Dialect } from './dialect.js';
import { AUDIT_FAILED, classify } from './errors.js';
import { RouteSeries } from './metrics.js';

// The one request pipeline every dialect shares, as root-level hooks that
// run once per request: onRequest (request id, seal state, authentication,
// authorization), onSend (the audit record, fail closed) and onResponse
// (metrics). The dialect of a request comes from its route's config, stamped
// when the route is registered (registerDialect), never from its URL.

interface PipelineDeps {
  readonly core: ServerCore;
  readonly metrics: ServerMetrics;
}

// Headers a plugin sends so its calls are attributed to a cluster and an apiserver request.
const LABEL = /^[\x21-\x7e]{1,128}$/;

declare module 'fastify' {
  interface FastifyRequest {
    /** The route's config, read once per request (fastify's routeOptions getter allocates). */
    routeConfig: FastifyContextConfig;
  }
}

function pathOf(url: string): string {
  const q = url.indexOf('?');
  return (q < 0 ? url : url.slice(0, q)).slice(0, 200);
}

/** The error handler of a dialect's context: our code, the dialect's shape. */
function errorHandlerOf(dialect: Dialect) {
  return (err: FastifyError, req: FastifyRequest, reply: FastifyReply): void => {
    const { code, message } = classify(err, req.log);
    if (req.auditNote) req.auditNote.result = code;
    else req.auditNote = { details: {}, result: code };
    const a = dialect.error(code, message, req.id);
    void reply.code(a.status).type(a.type).send(a.body);
  };
}

/** Services of an unsealed server; throws `sealed` otherwise (after learning whether a peer has unsealed since). */
async function unsealed(core: ServerCore): Promise<Services> {
  try {
    return core.services();
  } catch {
    // Another server on the database may have run init since: learn it now (at most one check a second).
    await core.catchUp();
    return core.services();
  }
}

/**
 * Installs the shared pipeline on the root instance. `fallback` answers for
 * what has no dialect of its own (a route outside every dialect, which the
 * route-table check below makes impossible for forgotten config).
 */
export function installPipeline(app: FastifyInstance, { core, metrics }: PipelineDeps, fallback: Dialect): void {
  const fallbackStamp: RouteStamp = { dialect: fallback, series: new RouteSeries(metrics, 'unknown'), notFound: true };

  app.decorateRequest('principal', undefined);
  app.decorateRequest('auditNote', undefined as never);
  app.decorateRequest('startedAt', 0n);
  app.decorateRequest('routeConfig', undefined as never);

  // The route table check: no route without its audit operation and access rule.
  app.addHook('onRoute', checkRouteConfig);

  app.addHook('onRequest', async (req, reply) => {
    req.startedAt = process.hrtime.bigint();
    req.auditNote = { details: {} };
    reply.header('x-request-id', req.id);
    reply.header('cache-control', 'no-store');
    const cfg = req.routeOptions.config;
    req.routeConfig = cfg;
    // A request sent without any body reaches validation as null, which an
    // optional body refuses; start it as {} so a bare POST /v1/sys/seal (or
    // rotate, enable, ...) works. A body that is sent replaces it when parsed
    // (an explicit JSON null is still refused). Here rather than in a hook of
    // its own: one hook less per request.
    if (cfg.stamp?.body === true) req.body = {};
    const rule = cfg.access;
    const isPublic = 'public' in rule;
    if (isPublic && rule.sealedOk === true) return;
    const services = await unsealed(core);
    if (isPublic) return;
    const p = await authenticate(services, req, (cfg.stamp ?? fallbackStamp).dialect);
    req.principal = p;
    if (!allowed(rule, p)) {
      if (!p) throw new KeyhavenError('unauthenticated', 'authentication required: send "Authorization: Bearer <token>"');
      throw new KeyhavenError('permission_denied', `${actorName(p)} may not ${cfg.op}`);
    }
  });

  // Fail closed: the answer leaves only after its audit record is stored.
  app.addHook('onSend', async (req: FastifyRequest, reply: FastifyReply, payload) => {
    const note = req.auditNote ?? { details: {} };
    const cfg = req.routeConfig ?? req.routeOptions.config;
    const stamp = cfg.stamp ?? fallbackStamp;
    const p = req.principal;
    let keyName = note.keyName;
    if (keyName === undefined && stamp.keyParam === true) {
      const name = (req.params as Record<string, unknown> | undefined)?.name;
      if (typeof name === 'string' && KEY_NAME.test(name)) keyName = name;
    }
    const details = note.details;
    details.status = reply.statusCode;
    details.source = req.ip;
    if (p) details.role = p.kind === 'app' ? 'app' : p.roles.join(',') || 'none';
    const cluster = req.headers['x-keyhaven-cluster'];
    const uid = req.headers['x-keyhaven-uid'];
    if (typeof cluster === 'string' && LABEL.test(cluster)) details.cluster = cluster;
    if (typeof uid === 'string' && LABEL.test(uid)) details.uid = uid;
    if (stamp.notFound === true) details.route = `${req.method} ${pathOf(req.url)}`;
    const started = process.hrtime.bigint();
    try {
      await core.audit.record({
        actor: p ? actorName(p) : 'anonymous',
        operation: cfg.op,
        keyName,
        keyVersion: note.keyVersion,
        result: note.result ?? (reply.statusCode < 400 ? 'ok' : `http_${reply.statusCode}`),
        requestId: req.id,
        details,
      });
      metrics.auditWrite.observe(Number(process.hrtime.bigint() - started) / 1e9);
    } catch (e) {
      req.log.error({ err: e }, 'audit record could not be written; answering 503');
      metrics.auditFailures.inc();
      const a = stamp.dialect.error('audit_failed', AUDIT_FAILED, req.id);
      void reply.code(a.status).type(a.type);
      return a.body;
    }
    return payload;
  });

  app.addHook('onResponse', (req, reply, done) => {
    const stamp = (req.routeConfig ?? req.routeOptions.config).stamp ?? fallbackStamp;
    stamp.series.observe(req.method, reply.statusCode, Number(process.hrtime.bigint() - req.startedAt) / 1e9);
    done();
  });

  app.setErrorHandler(errorHandlerOf(fallback));
}

/** Throws unless the route names its audit operation and a well-formed access rule. */
function checkRouteConfig(r: Pick<RouteOptions, 'method' | 'url' | 'config'>): void {
  const cfg = r.config as Partial<RouteConfig> | undefined;
  if (typeof cfg?.op !== 'string' || cfg.op === '' || !isAccessRule(cfg.access)) {
    throw new KeyhavenError('internal', `route ${String(r.method)} ${r.url} needs config.op (its audit operation) and config.access (who may call it)`);
  }
}

interface DialectOptions {
  readonly metrics: ServerMetrics;
  /** Series for requests that reach no route (one "unknown" route label across dialects). */
  readonly notFoundSeries: RouteSeries;
  /** Registers the dialect's routes (in a context of their own: their hooks and parsers stay there). */
  readonly routes: (scope: FastifyInstance) => void | Promise<void>;
  /** Routes whose `name` path parameter names a key, noted in the audit record. */
  readonly keyParam?: (url: string) => boolean;
}

/**
 * Registers a dialect as one encapsulated fastify plugin: its routes, its
 * error handler and its not-found handler for each of its prefixes.
 */
export async function registerDialect(app: FastifyInstance, dialect: Dialect, opts: DialectOptions): Promise<void> {
  await app.register(async (scope) => {
    scope.addHook('onRoute', (r) => {
      const stamp: RouteStamp = { dialect, series: new RouteSeries(opts.metrics, r.url), keyParam: opts.keyParam?.(r.url) ?? false, body: r.schema?.body !== undefined };
      r.config = { ...r.config!, stamp };
    });
    scope.setErrorHandler(errorHandlerOf(dialect));
    const notFound = (req: FastifyRequest, reply: FastifyReply) => {
      const a = dialect.notFound(req.method, req.url, req.id);
      req.auditNote.result = a.result;
      void reply.code(a.status).type(a.type).send(a.body);
    };
    const config = { op: 'http.unknown', access: { public: true, sealedOk: true } as const, stamp: { dialect, series: opts.notFoundSeries, notFound: true } };
    for (const prefix of dialect.prefixes) {
      // The root prefix is the server-wide not-found handler; others are scoped to their prefix.
      if (prefix === '/') scope.setNotFoundHandler({ config } as never, notFound);
      else await scope.register(async (nf) => nf.setNotFoundHandler({ config } as never, notFound), { prefix });
    }
    await scope.register(async (routes) => opts.routes(routes));
  });
}
