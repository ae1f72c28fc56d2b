import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { SecureContextOptions, TLSSocket, TlsOptions } from 'node:tls';
import fastifyRateLimit from '@fastify/rate-limit';
import fastifySwagger from '@fastify/swagger';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { hasZodFastifySchemaValidationErrors, jsonSchemaTransform, serializerCompiler, validatorCompiler } from 'fastify-type-provider-zod';
import { actorName } from '../access/access.js';
import { KeyhavenError, type ErrorCode } from '../errors.js';
import { HTTP_STATUS } from '../http-status.js';
import type { Logger } from '../log/logger.js';
import { PACKAGE_VERSION } from '../paths.js';
import { dsmBasicPrincipal, isDsmPath, registerDsmRoutes, sendDsmError } from './dsm/index.js';
import { registerVaultRoutes } from './vault/index.js';
import { answerVaultList, listOwnsSocket } from './vault/list.js';
import { isVaultPath, sendVaultError, sendVaultNoRoute, vaultErrorPayload, vaultToken } from './vault/envelope.js';
import type { AccessRule } from './pipeline/context.js';
import type { ServerCore } from './core.js';
import type { ServerMetrics } from './metrics.js';
import type { RouteDeps } from './route-deps.js';
import { registerApprovalRoutes } from './native/approvals.js';
import { registerAuditRoutes } from './native/audit.js';
import { registerAuthRoutes } from './native/auth.js';
import { registerClusterRoutes } from './native/clusters.js';
import { registerCryptoRoutes } from './native/crypto.js';
import { registerKeyRoutes } from './native/keys.js';
import { registerPrincipalRoutes } from './native/principals.js';
import { registerSysRoutes } from './native/sys.js';

export interface AppOptions {
  readonly core: ServerCore;
  readonly logger: Logger;
  readonly metrics: ServerMetrics;
  /** When set, /metrics needs "Authorization: Bearer <this>". */
  readonly metricsToken?: Buffer | undefined;
  readonly bodyLimit: number;
  /** Pending window for scheduled key destruction, in seconds. */
  readonly destroyPendingS: number;
  /** node:https server options (cert, key, client CA). */
  readonly https?: SecureServerOptions;
  /** Sign-in requests allowed per client address per window (auth.rateLimit). */
  readonly signInRateLimit?: SignInRateLimit;
}

export interface SignInRateLimit {
  readonly max: number;
  readonly windowMs: number;
}

const DEFAULT_SIGN_IN_RATE_LIMIT: SignInRateLimit = { max: 20, windowMs: 60_000 };

type SecureServerOptions = TlsOptions & SecureContextOptions;

// Request ids: a random per-process prefix and a counter, 16 hex digits.
// Unique, cheap (randomBytes per request cost ~5% of a crypto call) and not secret.
const ID_PREFIX = randomBytes(4).toString('hex');
let idCounter = 0;
function nextRequestId(): string {
  idCounter = (idCounter + 1) >>> 0;
  return ID_PREFIX + idCounter.toString(16).padStart(8, '0');
}

const KEY_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
// Headers a plugin sends so its calls are attributed to a cluster and an apiserver request.
const LABEL = /^[\x21-\x7e]{1,128}$/;

const AUDIT_FAILED = 'the audit record could not be written; request refused';

function errorBody(code: ErrorCode, message: string, requestId: string): string {
  return JSON.stringify({ error: { code, message, requestId } });
}

/** Maps anything thrown in a request to our error code and a message that is safe to return. */
function classify(err: FastifyError | Error, log: FastifyBaseLogger): { code: ErrorCode; message: string } {
  if (err instanceof KeyhavenError) return { code: err.code, message: err.message };
  if (hasZodFastifySchemaValidationErrors(err)) {
    const where = (err as FastifyError).validationContext ?? 'request';
    const issues = (err as FastifyError).validation!.slice(0, 5).map((v) => {
      const path = (v.instancePath ?? '').replace(/^\//, '').replace(/\//g, '.');
      return `${where}${path ? `.${path}` : ''}: ${v.message ?? 'invalid'}`;
    });
    return { code: 'invalid_argument', message: issues.join('; ') };
  }
  const fe = err as FastifyError;
  switch (fe.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return { code: 'too_large', message: 'request body is larger than the server accepts' };
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return { code: 'invalid_argument', message: 'content-type must be application/json' };
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return { code: 'invalid_argument', message: 'request body is empty; send a JSON object' };
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return { code: 'invalid_argument', message: 'content-length does not match the body' };
    default:
  }
  if (fe.statusCode !== undefined && fe.statusCode >= 400 && fe.statusCode < 500) {
    if (err instanceof SyntaxError || /JSON/i.test(fe.message)) return { code: 'invalid_argument', message: 'request body is not valid JSON' };
    return { code: 'invalid_argument', message: `bad request (${fe.code ?? fe.statusCode})` };
  }
  log.error({ err }, 'unexpected error in request');
  return { code: 'internal', message: 'internal error' };
}

function allowed(rule: AccessRule, req: FastifyRequest): boolean {
  const p = req.principal;
  if ('public' in rule) return true;
  if (!p) return false;
  if ('anyPrincipal' in rule) return true;
  if ('roles' in rule && p.kind === 'user' && p.roles.some((r) => rule.roles.includes(r))) return true;
  // Apps pass here; the handler checks the per-key grant.
  if ('apps' in rule && p.kind === 'app') return true;
  return false;
}

async function authenticate(core: ServerCore, req: FastifyRequest): Promise<void> {
  const h = req.headers.authorization;
  const services = core.services();
  const tls = req.raw.socket as TLSSocket;
  // A client certificate that was presented but does not verify (expired, unknown CA) is refused
  // outright, with or without a token: otherwise a broken mTLS set-up would go unnoticed.
  if (typeof tls.getPeerCertificate === 'function' && !tls.authorized && Object.keys(tls.getPeerCertificate() ?? {}).length > 0) {
    const why = String(tls.authorizationError ?? 'not trusted');
    throw new KeyhavenError('unauthenticated', `the client certificate was refused (${why.slice(0, 80)}); present a valid certificate from the configured client CA, or none`);
  }
  const vault = vaultToken(req);
  if (vault !== undefined) {
    req.principal = await services.access.authenticate(vault);
    return;
  }
  if (h !== undefined) {
    // DSM clients send an app's API key as HTTP Basic on every call.
    if (/^Basic /i.test(h) && isDsmPath(req.url)) {
      req.principal = await dsmBasicPrincipal(services.access, h);
      return;
    }
    const m = /^Bearer +([\x21-\x7e]{1,512})$/i.exec(h);
    if (!m) throw new KeyhavenError('unauthenticated', 'the Authorization header must be "Bearer <token>"');
    req.principal = await services.access.authenticate(m[1]!);
    return;
  }
  const socket = req.raw.socket as TLSSocket;
  if (typeof socket.getPeerCertificate === 'function' && socket.authorized) {
    const cert = socket.getPeerCertificate();
    if (cert?.fingerprint256) req.principal = await services.access.authenticateCert(cert.fingerprint256.replace(/:/g, '').toLowerCase());
  }
}

export async function buildApp(opts: AppOptions): Promise<FastifyInstance> {
  const { core, logger, metrics } = opts;
  const app = Fastify({
    loggerInstance: logger.child({ component: 'http' }) as unknown as FastifyBaseLogger,
    // Every request is in the audit log already; per-request log lines would double it.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: opts.bodyLimit,
    genReqId: nextRequestId,
    // Request logging is off (the audit log has every request); no child logger per request.
    childLoggerFactory: (logger) => logger,
    requestIdHeader: false,
    return503OnClosing: true,
    // Key names have up to 128 characters; longer parameters reach validation and its message.
    routerOptions: { maxParamLength: 1024 },
    // Refused before routing (badly encoded URL, over-long parameter): fastify skips the hooks, so answer and audit here.
    frameworkErrors: (err, req, res) => {
      const reply = res as unknown as FastifyReply;
      const message = err.code === 'FST_ERR_MAX_PARAM_LENGTH' ? 'a path parameter is too long' : 'the URL is not validly encoded';
      void reply.header('x-request-id', req.id).header('cache-control', 'no-store').type('application/json');
      core.audit
        .record({ actor: 'anonymous', operation: 'http.unknown', result: 'invalid_argument', requestId: req.id, details: { status: 400, source: req.ip } })
        .then(
          () => sendDsmError(req.url ?? '', reply, 400, message) || sendVaultError(req.url ?? '', reply, 'invalid_argument', message) || reply.code(400).send(errorBody('invalid_argument', message, req.id)),
          () => sendDsmError(req.url ?? '', reply, 503, AUDIT_FAILED) || sendVaultError(req.url ?? '', reply, 'audit_failed', AUDIT_FAILED) || reply.code(503).send(errorBody('audit_failed', AUDIT_FAILED, req.id)),
        );
    },
    // Malformed HTTP (oversized headers, garbage) never becomes a request; answer it in the error shape anyway.
    clientErrorHandler: (err: Error & { code?: string; rawPacket?: unknown }, socket) => {
      if (err.code === 'ECONNRESET' || socket.destroyed) return;
      // Vault's LIST method is not one node's parser knows (compat-vault-list.ts); a LIST being answered owns its socket.
      if (listOwnsSocket(socket)) return;
      if (err.code === 'HPE_INVALID_METHOD' && answerVaultList(app, core.audit, Buffer.isBuffer(err.rawPacket) ? err.rawPacket : undefined, socket)) return;
      const [status, code, message] =
        err.code === 'HPE_HEADER_OVERFLOW'
          ? ['431 Request Header Fields Too Large', 'too_large', 'request headers are larger than the server accepts'] as const
          : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
            ? ['408 Request Timeout', 'unavailable', 'the request took too long to arrive'] as const
            : ['400 Bad Request', 'invalid_argument', 'malformed HTTP request'] as const;
      const id = randomBytes(8).toString('hex');
      // The compatibility APIs answer in their own shape when the packet shows the path.
      const path = Buffer.isBuffer(err.rawPacket) ? /^[A-Za-z]{1,16} (\/[\x21-\x7e]*) HTTP\//.exec(err.rawPacket.subarray(0, 4096).toString('latin1'))?.[1] : undefined;
      const dsm = path !== undefined && isDsmPath(path);
      const body = path !== undefined && isVaultPath(path) ? vaultErrorPayload(code, message).body : dsm ? message : errorBody(code, message, id);
      const head = `HTTP/1.1 ${status}\r\ncontent-type: ${dsm ? 'text/plain; charset=utf-8' : 'application/json'}\r\ncontent-length: ${Buffer.byteLength(body)}\r\nx-request-id: ${id}\r\nconnection: close\r\n\r\n`;
      if (socket.writable) socket.write(head + body);
      socket.destroy(err);
    },
    ...(opts.https ? { https: opts.https } : {}),
  }) as unknown as FastifyInstance;
  // Per-source limits, only on the routes that set config.rateLimit (the sign-in routes; never crypto).
  // Registered before any route so its onRoute hook sees them; the 429 goes through the error
  // handler (each dialect's error shape) and the onSend audit hook like any other refusal.
  await app.register(fastifyRateLimit, {
    global: false,
    errorResponseBuilder: (_req, ctx) => new KeyhavenError('too_many_attempts', `too many sign-in requests from this address; retry in ${ctx.after}`),
  });
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  await app.register(fastifySwagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'keyhaven', description: 'keyhaven key server API', version: PACKAGE_VERSION },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
    transform: jsonSchemaTransform,
  });

  app.decorateRequest('principal', undefined);
  app.decorateRequest('auditNote', undefined as never);
  app.decorateRequest('startedAt', 0n);

  app.addHook('onRequest', async (req, reply) => {
    req.startedAt = process.hrtime.bigint();
    req.auditNote = { details: {} };
    reply.header('x-request-id', req.id);
    reply.header('cache-control', 'no-store');
    const cfg = req.routeOptions.config;
    const rule = cfg.access;
    if (!rule) return; // the not-found handler
    let status = core.status();
    const sealedOk = 'public' in rule && rule.sealedOk === true;
    if (status.sealed && !sealedOk) {
      // Another server on the database may have run init since: learn it now (at most one check a second).
      await core.catchUp();
      status = core.status();
      if (status.sealed) core.services(); // throws `sealed`
    }
    if (!('public' in rule)) await authenticate(core, req);
    if (!allowed(rule, req)) {
      if (!req.principal) throw new KeyhavenError('unauthenticated', 'authentication required: send "Authorization: Bearer <token>"');
      throw new KeyhavenError('permission_denied', `${actorName(req.principal)} may not ${cfg.op ?? 'do this'}`);
    }
  });

  // A request sent without any body reaches validation as null, which an
  // optional body refuses; read it as {} so a bare POST /v1/sys/seal (or
  // rotate, enable, ...) works. An explicit JSON null is still refused.
  app.addHook('preValidation', async (req) => {
    if (req.body === undefined && req.routeOptions.schema?.body) req.body = {};
  });

  app.setErrorHandler((err: FastifyError, req, reply) => {
    const { code, message } = classify(err, req.log);
    if (req.auditNote) req.auditNote.result = code;
    else req.auditNote = { details: {}, result: code };
    // Compatibility APIs answer errors in their own shape.
    if (sendDsmError(req.url, reply, HTTP_STATUS[code], message)) return;
    if (sendVaultError(req.url, reply, code, message)) return;
    void reply.code(HTTP_STATUS[code]).type('application/json').send(errorBody(code, message, req.id));
  });

  app.setNotFoundHandler((req, reply) => {
    req.auditNote = req.auditNote ?? { details: {} };
    req.auditNote.result = 'not_found';
    if (sendVaultNoRoute(req, reply)) return;
    if (sendDsmError(req.url, reply, 404, `no route ${req.method} ${req.url.split('?')[0]!.slice(0, 200)}`)) return;
    void reply.code(404).type('application/json').send(errorBody('not_found', `no route ${req.method} ${req.url.split('?')[0]!.slice(0, 200)}`, req.id));
  });

  // Fail closed: the answer leaves only after its audit record is stored.
  app.addHook('onSend', async (req: FastifyRequest, reply: FastifyReply, payload) => {
    const note = req.auditNote ?? { details: {} };
    const p = req.principal;
    const cfg = req.routeOptions.config;
    const params = req.params as Record<string, unknown> | undefined;
    const keyName = note.keyName ?? (typeof params?.name === 'string' && KEY_NAME.test(params.name) && req.url.startsWith('/v1/keys/') ? params.name : undefined);
    const details: Record<string, string | number | boolean> = { ...note.details, status: reply.statusCode, source: req.ip };
    if (p) details.role = p.kind === 'app' ? 'app' : p.roles.join(',') || 'none';
    const cluster = req.headers['x-keyhaven-cluster'];
    const uid = req.headers['x-keyhaven-uid'];
    if (typeof cluster === 'string' && LABEL.test(cluster)) details.cluster = cluster;
    if (typeof uid === 'string' && LABEL.test(uid)) details.uid = uid;
    if (!cfg.op) details.route = `${req.method} ${req.url.split('?')[0]!.slice(0, 200)}`;
    const started = process.hrtime.bigint();
    try {
      await core.audit.record({
        actor: p ? actorName(p) : 'anonymous',
        operation: cfg.op ?? 'http.unknown',
        keyName,
        keyVersion: note.keyVersion,
        result: note.result ?? (reply.statusCode < 400 ? 'ok' : `http_${reply.statusCode}`),
        requestId: req.id,
        details,
      });
      metrics.auditWrite.observe(Number(process.hrtime.bigint() - started) / 1e9);
    } catch (e) {
      req.log.error({ err: e }, 'audit record could not be written; answering 503');
      if (isDsmPath(req.url)) {
        void reply.code(503).type('text/plain; charset=utf-8');
        return AUDIT_FAILED;
      }
      if (isVaultPath(req.url)) {
        const v = vaultErrorPayload('audit_failed', AUDIT_FAILED);
        void reply.code(v.status).type('application/json');
        return v.body;
      }
      void reply.code(503).type('application/json');
      return errorBody('audit_failed', AUDIT_FAILED, req.id);
    }
    return payload;
  });

  app.addHook('onResponse', async (req, reply) => {
    const route = req.routeOptions.url ?? 'unknown';
    const known = req.routeOptions.config.op ? route : 'unknown';
    metrics.requests.inc({ route: known, method: req.method, status_class: `${Math.floor(reply.statusCode / 100)}xx` });
    metrics.duration.observe({ route: known, method: req.method }, Number(process.hrtime.bigint() - req.startedAt) / 1e9);
  });

  const limit = opts.signInRateLimit ?? DEFAULT_SIGN_IN_RATE_LIMIT;
  const deps: RouteDeps = { core, metrics, destroyPendingS: opts.destroyPendingS, signInRateLimit: { max: limit.max, timeWindow: limit.windowMs } };
  registerSysRoutes(app, deps);
  registerAuthRoutes(app, deps);
  registerKeyRoutes(app, deps);
  registerCryptoRoutes(app, deps);
  registerClusterRoutes(app, deps);
  registerPrincipalRoutes(app, deps);
  registerApprovalRoutes(app, deps);
  registerAuditRoutes(app, deps);
  registerDsmRoutes(app, deps);
  registerVaultRoutes(app, deps);

  app.get('/v1/openapi.json', { config: { op: 'sys.openapi', access: { public: true, sealedOk: true } }, schema: { hide: true } }, async () => app.swagger());
  const metricsDigest = opts.metricsToken ? createHash('sha256').update(opts.metricsToken).digest() : undefined;
  app.get('/metrics', { config: { op: 'sys.metrics', access: { public: true, sealedOk: true } }, schema: { hide: true } }, async (req, reply) => {
    if (metricsDigest) {
      // Compared as digests: constant time, whatever the length sent.
      const m = /^Bearer +([\x21-\x7e]{1,512})$/i.exec(req.headers.authorization ?? '');
      const sent = createHash('sha256').update(m?.[1] ?? '').digest();
      if (!m || !timingSafeEqual(sent, metricsDigest)) throw new KeyhavenError('unauthenticated', 'metrics need "Authorization: Bearer <token>" with the token from metrics.tokenFile');
    }
    const s = core.status();
    metrics.sealed.set(!s.initialized ? 2 : s.sealed ? 1 : 0);
    void reply.type(metrics.registry.contentType);
    return metrics.registry.metrics();
  });
  return app;
}
