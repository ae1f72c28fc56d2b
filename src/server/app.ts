import { randomBytes } from 'node:crypto';
import type { SecureContextOptions, TlsOptions } from 'node:tls';
import fastifyRateLimit from '@fastify/rate-limit';
import fastifySwagger from '@fastify/swagger';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply } from 'fastify';
import { jsonSchemaTransform, serializerCompiler, validatorCompiler } from 'fastify-type-provider-zod';
import { KeyhavenError } from '../errors.js';
import type { Logger } from '../log/logger.js';
import { PACKAGE_VERSION } from '../paths.js';
import type { ServerCore } from './core.js';
import { collapseDsmSlashes, dsmDialect } from './dsm/dialect.js';
import { registerDsm } from './dsm/index.js';
import type { ServerMetrics } from './metrics.js';
import { nativeDialect } from './native/dialect.js';
import { registerNative } from './native/index.js';
import { dialectOfPath } from './pipeline/dialect.js';
import { AUDIT_FAILED } from './pipeline/errors.js';
import { RouteSeries } from './pipeline/metrics.js';
import { installPipeline } from './pipeline/pipeline.js';
import type { RouteDeps } from './route-deps.js';
import { vaultDialect } from './vault/dialect.js';
import { registerVault } from './vault/index.js';
import { answerVaultList, listOwnsSocket } from './vault/list.js';

// The key server's fastify app: the shared request pipeline (pipeline/) on
// the root instance, and each API dialect — native /v1, Vault Transit,
// Fortanix DSM — as an encapsulated plugin with its own routes, error shape
// and not-found handler.

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

// Dialects by path prefix, only for the answers given before routing (frameworkErrors, clientErrorHandler).
const DIALECTS = [vaultDialect, dsmDialect];
const REQUEST_LINE = /^[A-Za-z]{1,16} (\/[\x21-\x7e]*) HTTP\//;

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
    // DSM clients built on a base URL ending in "/" send "//sys/v1/…": route them as DSM does (dsm/dialect.ts).
    // Before routing, so a DSM path also gets DSM's not-found and bad-URL answers; other paths are left alone.
    rewriteUrl: (req) => collapseDsmSlashes(req.url ?? '/'),
    // Refused before routing (badly encoded URL, over-long parameter): fastify skips the hooks, so answer and audit here.
    frameworkErrors: (err, req, res) => {
      const reply = res as unknown as FastifyReply;
      const message = err.code === 'FST_ERR_MAX_PARAM_LENGTH' ? 'a path parameter is too long' : 'the URL is not validly encoded';
      const dialect = dialectOfPath(DIALECTS, nativeDialect, req.url ?? '');
      const send = (a: { status: number; type: string; body: string }) => reply.code(a.status).type(a.type).send(a.body);
      void reply.header('x-request-id', req.id).header('cache-control', 'no-store');
      core.audit
        .record({ actor: 'anonymous', operation: 'http.unknown', result: 'invalid_argument', requestId: req.id, details: { status: 400, source: req.ip } })
        .then(
          () => send(dialect.error('invalid_argument', message, req.id)),
          () => send(dialect.error('audit_failed', AUDIT_FAILED, req.id)),
        );
    },
    // Malformed HTTP (oversized headers, garbage) never becomes a request; answer it in the error shape anyway.
    clientErrorHandler: (err: Error & { code?: string; rawPacket?: unknown }, socket) => {
      if (err.code === 'ECONNRESET' || socket.destroyed) return;
      // Vault's LIST method is not one node's parser knows (vault/list.ts); a LIST being answered owns its socket.
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
      const path = Buffer.isBuffer(err.rawPacket) ? REQUEST_LINE.exec(err.rawPacket.subarray(0, 4096).toString('latin1'))?.[1] : undefined;
      const a = dialectOfPath(DIALECTS, nativeDialect, collapseDsmSlashes(path ?? '')).error(code, message, id);
      const head = `HTTP/1.1 ${status}\r\ncontent-type: ${a.type}\r\ncontent-length: ${Buffer.byteLength(a.body)}\r\nx-request-id: ${id}\r\nconnection: close\r\n\r\n`;
      if (socket.writable) socket.write(head + a.body);
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

  installPipeline(app, { core, metrics }, nativeDialect);
  const limit = opts.signInRateLimit ?? DEFAULT_SIGN_IN_RATE_LIMIT;
  const deps: RouteDeps = { core, metrics, destroyPendingS: opts.destroyPendingS, signInRateLimit: { max: limit.max, timeWindow: limit.windowMs } };
  // One "unknown" route label for whatever reaches no route, in any dialect.
  const notFound = new RouteSeries(metrics, 'unknown');
  await registerNative(app, deps, notFound, { metricsToken: opts.metricsToken });
  await registerVault(app, deps, notFound);
  await registerDsm(app, deps, notFound);
  return app;
}
