import { readFileSync } from 'node:fs';
import type { TLSSocket } from 'node:tls';
import { buildConnector, Client, Pool, type Dispatcher } from 'undici';
import { ERROR_CODES, KeyhavenError, type ErrorCode } from '../errors.js';

/**
 * The plugin's HTTP client to one or more key servers: undici keep-alive
 * pools, servers tried in order with healthy ones first, a circuit breaker
 * per server so a dead one does not eat the deadline, and one deadline per
 * call across every server tried.
 *
 * With a health probe, a server whose breaker is open is probed in the
 * background at the back-off rate (one probe in flight per server), so the
 * client knows a server is healthy again before it needs it. A call that finds
 * no healthy server left waits for a failing server's probe within its own
 * deadline instead of failing at once.
 */

export interface TlsOptions {
  /** PEM CA bundle to trust instead of the system's. */
  readonly ca?: Buffer;
  /** SHA-256 fingerprints (lower-case hex) of accepted server certificates; replaces CA checks. */
  readonly pinSha256?: readonly string[];
  readonly clientCert?: Buffer;
  readonly clientKey?: Buffer;
  readonly serverName?: string;
}

export interface KeyServerClientOptions {
  readonly servers: readonly string[];
  readonly tls: TlsOptions;
  /** The app's API key; called again after a 401 in case the file was rotated. */
  readonly apiKey: (reload: boolean) => string;
  readonly cluster: string;
  readonly timeoutMs: number;
  readonly attemptTimeoutMs: number;
  readonly backoffMinMs: number;
  readonly backoffMaxMs: number;
  readonly now?: () => number;
  /** Called once per attempt: the server, the operation, and "ok" or an error code. */
  readonly onAttempt?: (server: string, operation: string, result: string) => void;
  /** Called when a server goes down (with why) or comes back. */
  readonly onServerState?: (server: string, up: boolean, reason?: string) => void;
  /**
   * For other HTTP key services (Vault, DSM): the headers that carry the
   * credential, instead of keyhaven's Bearer and cluster headers.
   */
  readonly headers?: (credential: string) => Record<string, string>;
  /** For other HTTP key services: reads an error answer (JSON, or text when not JSON) into a code and message. */
  readonly errorOf?: (status: number, body: unknown, text: string) => { code: ErrorCode; message: string };
  /**
   * A cheap request that says "this server can serve a call now", sent
   * without credentials. With it, failing servers are re-probed in the
   * background and come back only through a good probe; without it, a call
   * after the back-off is the probe (one at a time).
   */
  readonly healthProbe?: HealthProbe;
  /**
   * A recovery (POST /v1/recoveries) every call is made in, sent as
   * x-keyhaven-recovery: offline recovery of a backup through a break-glass app.
   */
  readonly recoveryId?: string | undefined;
}

export interface HealthProbe {
  readonly path: string;
  /** Why the answer does not mean healthy, or undefined when it does. */
  readonly unhealthy: (status: number, body: unknown) => string | undefined;
}

/**
 * keyhaven's health: GET /v1/sys/health answers 200 only when the server is
 * initialised and unsealed, and only after its audit record is stored, so a
 * 200 also says the store takes writes (an Encrypt is audited the same way).
 */
export const KEYHAVEN_HEALTH_PROBE: HealthProbe = {
  path: '/v1/sys/health',
  unhealthy: (status, body) => {
    const b = body as { initialized?: unknown; sealed?: unknown } | undefined;
    if (b?.initialized === false) return 'not initialised';
    if (b?.sealed === true) return 'sealed';
    if (status !== 200) return `HTTP ${status}`;
    if (b?.initialized !== true || b?.sealed !== false) return 'an unexpected health answer';
    return undefined;
  },
};

export interface ServerState {
  readonly url: string;
  readonly up: boolean;
  readonly consecutiveFailures: number;
  /** Epoch ms before which the breaker keeps this server out; 0 when closed. */
  readonly retryAt: number;
  readonly lastError?: string;
}

export interface CallOptions {
  /** The apiserver's request uid, for the server's audit record. */
  readonly uid?: string;
  /** Epoch ms by which the call must end, when that is sooner than `timeoutMs` from now (several calls sharing one budget). */
  readonly deadlineAt?: number;
  /**
   * Checks a 2xx answer; a reason means this server's answer cannot be used
   * (a server behind the others): the next server is tried, and this one is
   * not blamed, for it answered.
   */
  readonly unusable?: (body: unknown) => string | undefined;
}

export type HttpMethod = 'GET' | 'POST' | 'PUT' | 'DELETE' | 'LIST';

export interface KeyServerClient {
  post<T>(operation: string, path: string, body: unknown, opts?: CallOptions): Promise<T>;
  /** Any method; `body` undefined sends none. */
  request<T>(method: HttpMethod, operation: string, path: string, body: unknown, opts?: CallOptions): Promise<T>;
  servers(): ServerState[];
  close(): Promise<void>;
}

const MAX_RESPONSE_BYTES = 1024 * 1024;
const KNOWN_CODES: ReadonlySet<string> = new Set(ERROR_CODES);
// Answers that say "this server cannot serve now": another one may.
const RETRY_ELSEWHERE: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['unavailable', 'sealed', 'audit_failed', 'internal']);
const UID = /^[\x21-\x7e]{1,128}$/;

interface Endpoint {
  readonly url: string;
  readonly pool: Pool;
  failures: number;
  retryAt: number;
  /** When the breaker last opened or widened: failures of requests sent before it are the same outage. */
  openedAt: number;
  backoffMs: number;
  lastError?: string;
  /** The one probe in flight: resolves true when the server answered it. */
  probing?: Promise<boolean>;
  /** The background probe's timer while the breaker is open. */
  timer?: NodeJS.Timeout;
}

/** A failure of one attempt; `elsewhere` says whether another server may succeed. */
class AttemptError extends Error {
  /** The attempt timed out on what was left of the call's deadline, not on attemptTimeout: the server is not to blame. */
  cutShort = false;
  constructor(
    readonly error: KeyhavenError,
    readonly elsewhere: boolean,
  ) {
    super(error.message);
  }
}

// Less than this left of the deadline is not worth an attempt.
const MIN_ATTEMPT_MS = 25;

function tlsReason(e: NodeJS.ErrnoException): string | undefined {
  const code = e.code ?? '';
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') return 'the server certificate does not name this host (check the URL or provider.tls.serverName)';
  if (code === 'CERT_HAS_EXPIRED') return 'the server certificate has expired';
  if (/CERT|SIGNATURE|ISSUER|SELF_SIGNED|UNABLE_TO/.test(code)) return `the server certificate is not trusted (${code}; check provider.tls.ca)`;
  if (code === 'KH_PIN_MISMATCH') return e.message;
  if (/alert|handshake|certificate/i.test(e.message)) return `the TLS handshake failed (${e.message.slice(0, 160)}; check provider.tls)`;
  return undefined;
}

function transportError(url: string, e: unknown, deadline: boolean): KeyhavenError {
  const err = e as NodeJS.ErrnoException;
  const name = err?.name ?? '';
  if (deadline || name === 'AbortError' || name === 'TimeoutError' || err?.code === 'UND_ERR_HEADERS_TIMEOUT' || err?.code === 'UND_ERR_BODY_TIMEOUT' || err?.code === 'UND_ERR_CONNECT_TIMEOUT') {
    return new KeyhavenError('unavailable', `key server ${url} did not answer in time`);
  }
  const tls = tlsReason(err);
  if (tls) return new KeyhavenError('unavailable', `key server ${url}: ${tls}`);
  const code = err?.code ? ` (${err.code})` : '';
  return new KeyhavenError('unavailable', `key server ${url} is unreachable${code}`);
}

class ResponseTooLarge extends Error {}

/**
 * One HTTP exchange on the pool, the answer read whole, ended by a timer of
 * `budgetMs`. It uses undici's dispatch handler rather than request(): the
 * abort signal, response stream and async iterator of request() cost more
 * plugin CPU per call than the rest of the call's client work.
 */
function exchange(pool: Pool, req: Dispatcher.DispatchOptions, budgetMs: number, maxBytes: number): { done: Promise<{ status: number; text: string }>; timedOut: () => boolean } {
  let timedOut = false;
  const done = new Promise<{ status: number; text: string }>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let status = 0;
    let settled = false;
    let abort: ((err: Error) => void) | undefined;
    const fail = (err: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      // Closes the connection: whatever is still on its way for this request must not become the next one's answer.
      abort?.(err);
      reject(err);
    };
    // A timer cleared when the exchange ends, not AbortSignal.timeout: that one fires for every call long after it is done.
    const timer = setTimeout(() => {
      timedOut = true;
      const err = new Error('the attempt ran out of time');
      err.name = 'TimeoutError';
      fail(err);
    }, Math.max(budgetMs, 1));
    pool.dispatch(req, {
      onConnect(a) {
        // Still queued when the timer fired: end it as soon as it is sent.
        if (settled) a(new Error('the attempt ran out of time'));
        else abort = a;
      },
      onHeaders(code) {
        // 1xx answers are informational; the final status follows.
        if (code >= 200) status = code;
        return true;
      },
      onData(chunk) {
        size += chunk.length;
        if (size > maxBytes) {
          fail(new ResponseTooLarge());
          return false;
        }
        chunks.push(chunk);
        return true;
      },
      onComplete() {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve({ status, text: Buffer.concat(chunks).toString('utf8') });
      },
      onError: (err) => fail(err),
    });
  });
  return { done, timedOut: () => timedOut };
}

export function createKeyServerClient(opts: KeyServerClientOptions): KeyServerClient {
  const now = opts.now ?? Date.now;
  const pins = opts.tls.pinSha256 ? new Set(opts.tls.pinSha256) : undefined;
  const baseConnect = buildConnector({
    ...(opts.tls.ca ? { ca: opts.tls.ca } : {}),
    ...(opts.tls.clientCert ? { cert: opts.tls.clientCert, key: opts.tls.clientKey } : {}),
    ...(opts.tls.serverName ? { servername: opts.tls.serverName } : {}),
    // A pinned certificate replaces chain and name checks; it is checked below instead.
    rejectUnauthorized: !pins,
    // A resumed TLS session carries no peer certificate, so the pin could not be checked: no resumption when pinning.
    ...(pins ? { maxCachedSessions: 0 } : {}),
    timeout: opts.attemptTimeoutMs,
  });
  const connect: buildConnector.connector = (o, cb) =>
    baseConnect(o, (err, socket) => {
      if (err || !pins || o.protocol !== 'https:') return cb(err as Error, socket as never);
      const fp = (socket as TLSSocket).getPeerCertificate().fingerprint256?.replace(/:/g, '').toLowerCase();
      if (fp && pins.has(fp)) return cb(null, socket);
      socket.destroy();
      const e = new Error('the server certificate matches none of provider.tls.pinSha256') as NodeJS.ErrnoException;
      e.code = 'KH_PIN_MISMATCH';
      cb(e, null);
    });

  const endpoints: Endpoint[] = opts.servers.map((url) => ({
    url,
    // As many connections as the apiserver's concurrency at a restart storm needs: a queued request's deadline runs too.
    pool: new Pool(url, { connections: 64, pipelining: 1, keepAliveTimeout: 30_000, connect }),
    failures: 0,
    retryAt: 0,
    openedAt: 0,
    backoffMs: opts.backoffMinMs,
  }));

  let closed = false;
  const closing = new AbortController();

  const succeeded = (ep: Endpoint) => {
    if (ep.failures > 0) opts.onServerState?.(ep.url, true);
    ep.failures = 0;
    ep.retryAt = 0;
    ep.openedAt = 0;
    ep.backoffMs = opts.backoffMinMs;
    delete ep.lastError;
    if (ep.timer) clearTimeout(ep.timer);
    delete ep.timer;
  };
  const failed = (ep: Endpoint, reason: string, sentAt: number, isProbe = false) => {
    // Requests already in flight when the breaker opened fail with it: one blip, not fifty. A probe (one at a
    // time) always counts, so the next one waits a full back-off.
    if (!isProbe && ep.failures > 0 && sentAt <= ep.openedAt) return;
    // Open the breaker; each failure in a row doubles the wait, with jitter so plugins do not retry in step.
    ep.failures += 1;
    ep.openedAt = now();
    const wait = Math.min(ep.backoffMs, opts.backoffMaxMs);
    ep.retryAt = now() + Math.round(wait * (0.75 + Math.random() * 0.5));
    ep.backoffMs = Math.min(ep.backoffMs * 2, opts.backoffMaxMs);
    if (ep.failures === 1 || ep.lastError !== reason) opts.onServerState?.(ep.url, false, reason);
    ep.lastError = reason;
    schedule(ep);
  };

  const probe = opts.healthProbe;

  /** Arms the background probe of a failing server for the end of its back-off (with a health probe only). */
  function schedule(ep: Endpoint): void {
    if (!probe || closed || ep.failures === 0 || ep.probing) return;
    if (ep.timer) clearTimeout(ep.timer);
    ep.timer = setTimeout(() => {
      delete ep.timer;
      void startProbe(ep);
    }, Math.max(0, ep.retryAt - now()));
    // A plugin with nothing else to do may exit: the probe is no reason to stay up.
    ep.timer.unref();
  }

  async function probeOnce(ep: Endpoint, hp: HealthProbe): Promise<string | undefined> {
    const signal = AbortSignal.any([AbortSignal.timeout(opts.attemptTimeoutMs), closing.signal]);
    // A connection of its own, closed after: an aborted request on the pool makes it open a spare connection at once,
    // which a hung server would hold, one more each probe.
    const conn = new Client(ep.url, { pipelining: 1, connect });
    try {
      const res = await conn.request({ method: 'GET', path: hp.path, signal, headersTimeout: opts.attemptTimeoutMs, bodyTimeout: opts.attemptTimeoutMs });
      const chunks: Buffer[] = [];
      let size = 0;
      for await (const chunk of res.body as AsyncIterable<Buffer>) {
        size += chunk.length;
        if (size > 64 * 1024) {
          res.body.destroy();
          return `key server ${ep.url} answered its health check with more than 64 KiB`;
        }
        chunks.push(chunk);
      }
      let body: unknown;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      } catch {
        body = undefined;
      }
      const why = hp.unhealthy(res.statusCode, body);
      return why === undefined ? undefined : `key server ${ep.url} is not ready (${why})`;
    } catch (e) {
      return transportError(ep.url, e, signal.aborted).message;
    } finally {
      void conn.destroy().catch(() => {});
    }
  }

  /** The one probe of a failing server: a health request, never more than one in flight per server. */
  function startProbe(ep: Endpoint): Promise<boolean> {
    if (ep.probing) return ep.probing;
    if (ep.timer) clearTimeout(ep.timer);
    delete ep.timer;
    const sentAt = now();
    const run = (async () => {
      const why = await probeOnce(ep, probe!);
      if (closed) return false;
      opts.onAttempt?.(ep.url, 'health', why === undefined ? 'ok' : 'unavailable');
      if (why === undefined) {
        succeeded(ep);
        return true;
      }
      failed(ep, why, sentAt, true);
      return false;
    })();
    ep.probing = run;
    void run.finally(() => {
      if (ep.probing === run) delete ep.probing;
      schedule(ep);
    });
    return run;
  }

  /** Waits for a failing server's probe, at most until `until`; true when it answered. */
  async function awaitProbe(p: Promise<boolean>, until: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const out = await Promise.race([p, new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), Math.max(0, until - now()))))]);
    clearTimeout(timer);
    return out;
  }

  /**
   * The servers a call goes through. With a health probe: the healthy ones in
   * configured order, then the failing ones (the background probe brings a
   * server back, so a call never has to). Without: configured order, so a
   * server whose back-off is over is tried again (a probe) in its place; put
   * after the healthy ones it would never be tried while a later one answers.
   * Servers in back-off with no probe in flight are left out, except, with a
   * health probe, those whose next probe is due before `until` (a call with
   * no healthy server left waits for it).
   */
  const candidates = (until: number): Endpoint[] => {
    const t = probe ? until : now();
    const usable = endpoints.filter((e) => e.failures === 0 || e.probing !== undefined || e.retryAt <= t);
    return probe ? [...usable.filter((e) => e.failures === 0), ...usable.filter((e) => e.failures > 0)] : usable;
  };

  let apiKey = opts.apiKey(false);
  let reloadedAt = 0;

  async function attempt<T>(ep: Endpoint, method: HttpMethod, operation: string, path: string, payload: string | undefined, uid: string | undefined, deadline: number, key: string): Promise<T> {
    const left = deadline - now();
    const budget = Math.min(opts.attemptTimeoutMs, left);
    const headers: Record<string, string> = opts.headers
      ? { ...opts.headers(key) }
      : { authorization: `Bearer ${key}`, 'x-keyhaven-cluster': opts.cluster };
    if (payload !== undefined) headers['content-type'] = 'application/json';
    if (uid && UID.test(uid)) headers['x-keyhaven-uid'] = uid;
    if (opts.recoveryId !== undefined) headers['x-keyhaven-recovery'] = opts.recoveryId;
    let status: number;
    let text: string;
    const ex = exchange(ep.pool, { method: method as 'POST', path, headers, ...(payload !== undefined ? { body: payload } : {}), headersTimeout: budget, bodyTimeout: budget }, budget, MAX_RESPONSE_BYTES);
    try {
      ({ status, text } = await ex.done);
    } catch (e) {
      if (e instanceof ResponseTooLarge) throw new AttemptError(new KeyhavenError('unavailable', `key server ${ep.url} answered more than ${MAX_RESPONSE_BYTES} bytes`), true);
      const err = new AttemptError(transportError(ep.url, e, ex.timedOut()), true);
      err.cutShort = ex.timedOut() && left < opts.attemptTimeoutMs;
      throw err;
    }
    let body: unknown;
    try {
      body = text === '' && status === 204 ? {} : JSON.parse(text);
    } catch {
      // Some services (DSM) answer errors as plain text.
      if (!(opts.errorOf && status >= 400)) {
        throw new AttemptError(new KeyhavenError('unavailable', `key server ${ep.url} answered HTTP ${status} with a body that is not JSON`), true);
      }
    }
    if (status >= 200 && status < 300) return body as T;
    let code: ErrorCode;
    let detail: string;
    if (opts.errorOf) {
      ({ code, message: detail } = opts.errorOf(status, body, text));
      detail = detail.slice(0, 300);
    } else {
      const errBody = (body as { error?: { code?: unknown; message?: unknown; requestId?: unknown } })?.error;
      code = typeof errBody?.code === 'string' && KNOWN_CODES.has(errBody.code) ? (errBody.code as ErrorCode) : status >= 500 ? 'unavailable' : 'invalid_argument';
      const message = typeof errBody?.message === 'string' ? errBody.message.slice(0, 300) : `HTTP ${status}`;
      const requestId = typeof errBody?.requestId === 'string' ? ` [request ${errBody.requestId.slice(0, 64)}]` : '';
      detail = `${message}${requestId}`;
    }
    const err = new KeyhavenError(code, `key server ${ep.url} refused ${operation}: ${detail}`);
    throw new AttemptError(err, status >= 500 && RETRY_ELSEWHERE.has(code));
  }

  async function request<T>(method: HttpMethod, operation: string, path: string, body: unknown, callOpts: CallOptions = {}): Promise<T> {
      const deadline = Math.min(now() + opts.timeoutMs, callOpts.deadlineAt ?? Infinity);
      const payload = body === undefined ? undefined : JSON.stringify(body);
      const tried = candidates(deadline - MIN_ATTEMPT_MS);
      if (tried.length === 0) {
        const next = Math.min(...endpoints.map((e) => e.retryAt)) - now();
        const last = endpoints.map((e) => `${e.url}: ${e.lastError ?? 'failing'}`).join('; ');
        throw new KeyhavenError('unavailable', `every key server is failing; next attempt in ${Math.max(0, Math.ceil(next / 100) / 10)} s (${last})`);
      }
      let lastError: KeyhavenError | undefined;
      let authRetries = 0;
      const notReady = (ep: Endpoint) => new KeyhavenError('unavailable', ep.lastError ?? `key server ${ep.url} did not pass its health check in time`);
      for (let i = 0; i < tried.length; i++) {
        const ep = tried[i]!;
        if (deadline - now() < MIN_ATTEMPT_MS) break;
        // Set when this call is the probe of a failing server (no health probe): the others wait for its answer.
        let ownProbe: ((answered: boolean) => void) | undefined;
        if (ep.failures > 0) {
          // A server believed healthy further on serves this call sooner than a failing one's probe.
          const healthyLater = tried.slice(i + 1).some((e) => e.failures === 0);
          if (probe) {
            if (healthyLater) continue;
            // No healthy server left: wait for this one's probe (in flight, or due before this call's deadline) rather than fail.
            const until = deadline - MIN_ATTEMPT_MS;
            if (!ep.probing && ep.retryAt > now()) {
              if (ep.retryAt >= until) continue;
              // A timer may fire a millisecond before the clock reaches retryAt: wait until it has, or a probe started.
              while (!ep.probing && ep.failures > 0 && ep.retryAt > now() && ep.retryAt < until) {
                await new Promise((r) => setTimeout(r, Math.max(1, ep.retryAt - now())));
              }
            }
            if (ep.failures > 0) {
              // The back-off may have been extended meanwhile by a probe that failed: then not again before its end.
              const p = ep.probing ?? (!closed && ep.retryAt <= now() ? startProbe(ep) : undefined);
              if (!p || !(await awaitProbe(p, until)) || ep.failures > 0) {
                lastError = notReady(ep);
                continue;
              }
            }
          } else if (ep.probing) {
            if (healthyLater) continue;
            // Another call is trying it: wait for its answer within this call's deadline rather than fail.
            if (!(await awaitProbe(ep.probing, deadline - MIN_ATTEMPT_MS)) || ep.failures > 0) {
              lastError = notReady(ep);
              continue;
            }
          } else if (ep.retryAt > now()) {
            // Its breaker opened while this call was trying the servers before it.
            continue;
          } else {
            // This call is the probe: the others wait for its answer or go on.
            ep.probing = new Promise<boolean>((resolve) => (ownProbe = resolve));
          }
        }
        const sentAt = now();
        const key = apiKey;
        let answered = false;
        try {
          const out = await attempt<T>(ep, method, operation, path, payload, callOpts.uid, deadline, key);
          answered = true;
          succeeded(ep);
          const why = callOpts.unusable?.(out);
          if (why !== undefined) {
            // It answered, so it is not failing; its answer is only of no use to this call.
            opts.onAttempt?.(ep.url, operation, 'unavailable');
            lastError = new KeyhavenError('unavailable', `key server ${ep.url} ${why}`);
            continue;
          }
          opts.onAttempt?.(ep.url, operation, 'ok');
          return out;
        } catch (e) {
          if (!(e instanceof AttemptError)) throw e;
          opts.onAttempt?.(ep.url, operation, e.error.code);
          lastError = e.error;
          // Our deadline ran out, not the server's time: no blame, and the next call may probe it.
          if (e.cutShort) continue;
          if (e.elsewhere) {
            failed(ep, e.error.message, sentAt);
            continue;
          }
          // The server answered: it is up, and the answer stands.
          answered = true;
          succeeded(ep);
          if (e.error.code === 'unauthenticated' && authRetries < 2) {
            authRetries += 1;
            // Sent with a key another call has replaced since: try again with the current one.
            if (key !== apiKey) {
              i -= 1;
              continue;
            }
            // A rotated API key: read the file again, at most every 2 s, and try once more.
            if (now() - reloadedAt > 2000) {
              reloadedAt = now();
              const fresh = opts.apiKey(true);
              if (fresh !== apiKey) {
                apiKey = fresh;
                i -= 1;
                continue;
              }
            }
          }
          throw e.error;
        } finally {
          if (ownProbe) {
            delete ep.probing;
            ownProbe(answered);
          }
        }
      }
      throw lastError ?? new KeyhavenError('unavailable', 'the deadline passed before any key server could be tried');
  }

  return {
    post: <T>(operation: string, path: string, body: unknown, callOpts?: CallOptions) => request<T>('POST', operation, path, body, callOpts),
    request,
    servers() {
      return endpoints.map((e) => ({ url: e.url, up: e.failures === 0, consecutiveFailures: e.failures, retryAt: e.retryAt, ...(e.lastError ? { lastError: e.lastError } : {}) }));
    },
    async close() {
      closed = true;
      for (const e of endpoints) {
        if (e.timer) clearTimeout(e.timer);
        delete e.timer;
      }
      closing.abort();
      await Promise.all(endpoints.map((e) => e.pool.close().catch(() => {})));
    },
  };
}

/**
 * Reads the API key from a file that only its owner may read, or from an
 * environment variable. Errors name the source, never the key.
 */
export function apiKeySource(src: { file?: string; env?: string }, readFile: (p: string) => Buffer = readFileSync): (reload: boolean) => string {
  let cached: string | undefined;
  const read = (): string => {
    let text: string;
    if (src.file) {
      try {
        text = readFile(src.file).toString('utf8');
      } catch (e) {
        // readFile may refuse with its own precise reason (a file others can read): keep it.
        if (e instanceof KeyhavenError) throw e;
        throw new KeyhavenError('config_invalid', `cannot read the API key file ${src.file}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
      }
    } else {
      const v = process.env[src.env!];
      if (v === undefined || v === '') throw new KeyhavenError('config_invalid', `environment variable ${src.env} (provider.apiKeyEnv) is not set`);
      text = v;
    }
    const key = text.trim();
    const where = src.file ? `API key file ${src.file}` : `environment variable ${src.env}`;
    if (!/^[\x21-\x7e]{1,512}$/.test(key)) throw new KeyhavenError('config_invalid', `${where} does not hold an API key (one line of printable characters)`);
    return key;
  };
  return (reload) => {
    if (cached === undefined || reload) {
      try {
        cached = read();
      } catch (e) {
        // On reload keep the key in use: a half-written file must not take the plugin down.
        if (cached !== undefined && reload) return cached;
        throw e;
      }
    }
    return cached;
  };
}
