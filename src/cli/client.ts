import { readFileSync } from 'node:fs';
import { connect as netConnect, isIP } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import type { Agent } from 'undici';
import { ERROR_CODES, KeyhavenError, type ErrorCode } from '../errors.js';
import { readSessions, selectContext, type Context } from './session.js';

// The CLI's HTTP client for the key server's /v1 API. undici's request on a
// keep-alive Agent: commands that page (audit export) reuse one connection.

const DEFAULT_SERVER = 'http://127.0.0.1:8200';

// What the server accepts after "Bearer ".
const TOKEN = /^[\x21-\x7e]{1,512}$/;

export interface ConnectionFlags {
  server?: string;
  caFile?: string;
  /** A saved context by name (else $KEYHAVEN_CONTEXT, else the current one). */
  context?: string;
}

export interface Connection {
  /** Base URL without a trailing slash. */
  readonly server: string;
  readonly token?: string;
  readonly caFile?: string;
  /** The saved context serving this server, if any. */
  readonly context?: string;
  /** Why no token is sent, for the "not authenticated" hint. */
  readonly noTokenReason?: string;
}

function normalizeServer(raw: string, from: string): string {
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw new KeyhavenError('invalid_argument', `${from} must be a URL such as https://keys.example.com:8200, not ${JSON.stringify(raw)}`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new KeyhavenError('invalid_argument', `${from} must be an http:// or https:// URL`);
  if (u.username || u.password || u.search || u.hash) throw new KeyhavenError('invalid_argument', `${from} must not carry credentials, a query or a fragment`);
  return `${u.protocol}//${u.host}${u.pathname.replace(/\/+$/, '')}`;
}

/**
 * Where to connect and with which token. The server: --server, else the
 * --context's server, else $KEYHAVEN_ADDR, else the server of
 * $KEYHAVEN_CONTEXT or of the current context, else the default. The token:
 * $KEYHAVEN_TOKEN, else a saved login for that same server.
 */
export function resolveConnection(flags: ConnectionFlags, opts: { useSessionToken?: boolean } = {}): Connection {
  const envContext = process.env.KEYHAVEN_CONTEXT || undefined;
  const explicit = flags.context ?? envContext;
  const all = readSessions();
  const sel = selectContext(all, explicit, flags.context !== undefined ? '--context' : 'KEYHAVEN_CONTEXT');

  let server: string;
  if (flags.server) server = normalizeServer(flags.server, '--server');
  else if (flags.context !== undefined && sel) server = sel.context.server;
  else if (process.env.KEYHAVEN_ADDR) server = normalizeServer(process.env.KEYHAVEN_ADDR, 'KEYHAVEN_ADDR');
  else server = sel?.context.server ?? DEFAULT_SERVER;

  // A token goes only to the server that issued it: the selected context's, or
  // (no context named) another saved one for this server.
  let ctx: { name: string; context: Context } | undefined;
  if (sel?.context.server === server) ctx = sel;
  else if (explicit === undefined) {
    const hit = Object.entries(all.contexts).find(([, c]) => c.server === server);
    if (hit) ctx = { name: hit[0], context: hit[1] };
  }
  const caFile = flags.caFile || process.env.KEYHAVEN_CACERT || ctx?.context.caFile || undefined;
  const context = ctx ? { context: ctx.name } : {};

  const envToken = process.env.KEYHAVEN_TOKEN;
  if (envToken) {
    // Checked here so a stray newline gives a clear error; the value is never echoed.
    if (!TOKEN.test(envToken)) throw new KeyhavenError('invalid_argument', 'KEYHAVEN_TOKEN does not look like a keyhaven token (printable characters only, no spaces or newlines)');
    return { server, token: envToken, caFile };
  }
  if (opts.useSessionToken === false) return { server, caFile, ...context };
  const login = ctx ? ` --context ${ctx.name}` : '';
  if (!ctx) {
    if (sel) return { server, caFile, noTokenReason: `the saved login is for ${sel.context.server}, not ${server}: run "keyhaven login --server ${server}"` };
    return { server, caFile, noTokenReason: 'not logged in: run "keyhaven login" (or set KEYHAVEN_TOKEN)' };
  }
  const s = ctx.context;
  if (!s.token || !s.expiresAt) return { server, caFile, ...context, noTokenReason: `not logged in to ${server} (context ${ctx.name}): run "keyhaven login${login}"` };
  if (Date.parse(s.expiresAt) <= Date.now()) return { server, caFile, ...context, noTokenReason: `the saved session has expired: run "keyhaven login${login}"` };
  if (!TOKEN.test(s.token)) return { server, caFile, ...context, noTokenReason: `the saved session is damaged: run "keyhaven login${login}"` };
  return { server, token: s.token, caFile, ...context };
}

export interface ApiResponse<T> {
  readonly status: number;
  readonly body: T;
  readonly requestId: string | undefined;
  /** The Date header: the server's clock. */
  readonly date: string | undefined;
}

export interface RequestOptions {
  readonly body?: unknown;
  readonly query?: Record<string, string | number | undefined>;
  /** Send the token (default true when there is one). */
  readonly auth?: boolean;
  /** Return the body as text instead of parsing JSON (JSON-lines routes). */
  readonly text?: boolean;
}

export interface ApiClient {
  readonly connection: Connection;
  call<T = any>(method: string, path: string, opts?: RequestOptions): Promise<ApiResponse<T>>;
  close(): Promise<void>;
}

const STATUS_CODE: Record<number, ErrorCode> = {
  400: 'invalid_argument',
  401: 'unauthenticated',
  403: 'permission_denied',
  404: 'not_found',
  409: 'failed_precondition',
  410: 'key_destroyed',
  413: 'too_large',
  429: 'too_many_attempts',
  503: 'unavailable',
};

function isErrorCode(c: unknown): c is ErrorCode {
  return typeof c === 'string' && (ERROR_CODES as readonly string[]).includes(c);
}

/** The server's error answer as a KeyhavenError, so exit.ts maps it to an exit code. */
function serverError(status: number, text: string, conn: Connection): KeyhavenError {
  let parsed: { error?: { code?: unknown; message?: unknown; requestId?: unknown } } | undefined;
  try {
    parsed = JSON.parse(text) as typeof parsed;
  } catch {
    // not our error shape (a proxy in between, say)
  }
  const e = parsed?.error;
  const code: ErrorCode = isErrorCode(e?.code) ? e.code : (STATUS_CODE[status] ?? 'internal');
  let message = typeof e?.message === 'string' ? e.message : `the server answered HTTP ${status}`;
  if (code === 'unauthenticated' && !conn.token && conn.noTokenReason) message = `${message}; ${conn.noTokenReason}`;
  if (typeof e?.requestId === 'string') message += ` (request ${e.requestId})`;
  return new KeyhavenError(code, message);
}

const TLS_CODES = /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS|ERR_SSL|EPROTO/;
// What a scheme mismatch looks like from undici: a TLS server hangs up on (or
// answers garbage to) plain HTTP; a plain server's reply breaks the handshake.
const MISMATCH_CODES = /UND_ERR_SOCKET|ECONNRESET|HPE_|UND_ERR_INFO|EPROTO|ERR_SSL_WRONG_VERSION|ERR_SSL_PACKET_LENGTH|ERR_SSL_HTTP_REQUEST/;
const PROBE_MS = 3000;

function hostPort(server: string): { host: string; port: number } {
  const u = new URL(server);
  return { host: u.hostname.replace(/^\[|\]$/g, ''), port: Number(u.port || (u.protocol === 'https:' ? 443 : 80)) };
}

/** Completes a TLS handshake (certificate not checked: only "does it speak TLS"). */
function speaksTls(server: string): Promise<boolean> {
  const { host, port } = hostPort(server);
  return new Promise((resolve) => {
    const sock = tlsConnect({ host, port, rejectUnauthorized: false, ...(isIP(host) ? {} : { servername: host }) });
    const done = (v: boolean) => {
      sock.destroy();
      resolve(v);
    };
    sock.setTimeout(PROBE_MS, () => done(false));
    sock.once('secureConnect', () => done(true));
    sock.once('error', () => done(false));
  });
}

/** Answers a plain HTTP request with an HTTP status line. */
function speaksPlainHttp(server: string): Promise<boolean> {
  const { host, port } = hostPort(server);
  return new Promise((resolve) => {
    const sock = netConnect({ host, port });
    let got = '';
    const done = (v: boolean) => {
      sock.destroy();
      resolve(v);
    };
    sock.setTimeout(PROBE_MS, () => done(false));
    sock.once('connect', () => sock.write(`HEAD / HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`));
    sock.on('data', (d: Buffer) => {
      got += d.toString('latin1');
      if (got.length >= 9) done(/^HTTP\/1\.[01] \d/.test(got));
    });
    sock.once('end', () => done(/^HTTP\/1\.[01] \d/.test(got)));
    sock.once('error', () => done(false));
  });
}

async function connectError(e: unknown, server: string): Promise<KeyhavenError> {
  const err = e as { code?: string; errors?: Array<{ code?: string }>; cause?: { code?: string } };
  const code = err.code ?? err.errors?.[0]?.code ?? err.cause?.code ?? 'error';
  let message = `cannot reach the keyhaven server at ${server}: ${code}`;
  const https = server.startsWith('https:');
  // A second connection tells which protocol the other side speaks, so the
  // message can say "use https://" instead of a bare socket error.
  if (MISMATCH_CODES.test(code)) {
    const other = https ? server.replace(/^https:/, 'http:') : server.replace(/^http:/, 'https:');
    if (https ? await speaksPlainHttp(server) : await speaksTls(server)) {
      message += ` (the server speaks ${https ? 'plain http, not https' : 'https, not plain http'}: use --server ${other})`;
      return new KeyhavenError('unavailable', message, { cause: e });
    }
  }
  if (TLS_CODES.test(code)) message += ' (for a server with a private CA pass --ca-file or set KEYHAVEN_CACERT)';
  return new KeyhavenError('unavailable', message, { cause: e });
}

function isPlainRemote(server: string): boolean {
  const u = new URL(server);
  return u.protocol === 'http:' && !['127.0.0.1', 'localhost', '[::1]'].includes(u.hostname);
}

export function createClient(conn: Connection): ApiClient {
  let ca: Buffer | undefined;
  if (conn.caFile) {
    try {
      ca = readFileSync(conn.caFile);
    } catch (e) {
      throw new KeyhavenError('config_invalid', `cannot read the CA file ${conn.caFile}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
    }
  }
  if (conn.token && isPlainRemote(conn.server)) {
    process.stderr.write(`keyhaven: warning: sending credentials over plain http to ${conn.server}; use https\n`);
  }
  // undici is loaded on the first request (http-agent.ts says why).
  let undici: Promise<{ agent: Agent; request: typeof import('undici').request }> | undefined;
  const connection = () => (undici ??= import('./http-agent.js').then((h) => ({ agent: h.createAgent(ca), request: h.request })));
  return {
    connection: conn,
    async call<T>(method: string, path: string, opts: RequestOptions = {}): Promise<ApiResponse<T>> {
      const headers: Record<string, string> = { accept: 'application/json' };
      if (conn.token && opts.auth !== false) headers.authorization = `Bearer ${conn.token}`;
      let body: string | undefined;
      // Every /v1 POST and PUT takes a JSON object; a bare one is sent as {}.
      const payload = opts.body === undefined && (method === 'POST' || method === 'PUT') ? {} : opts.body;
      if (payload !== undefined) {
        body = JSON.stringify(payload);
        headers['content-type'] = 'application/json';
      }
      let url = conn.server + path;
      if (opts.query) {
        const q = new URLSearchParams();
        for (const [k, v] of Object.entries(opts.query)) if (v !== undefined) q.set(k, String(v));
        const qs = q.toString();
        if (qs) url += `?${qs}`;
      }
      const { agent, request } = await connection();
      let res;
      try {
        res = await request(url, { method: method as 'GET', headers, body, dispatcher: agent });
      } catch (e) {
        throw await connectError(e, conn.server);
      }
      const text = await res.body.text();
      const rid = res.headers['x-request-id'];
      const requestId = typeof rid === 'string' ? rid : undefined;
      const date = typeof res.headers.date === 'string' ? res.headers.date : undefined;
      if (res.statusCode >= 400) throw serverError(res.statusCode, text, conn);
      if (opts.text) return { status: res.statusCode, body: text as T, requestId, date };
      let parsed: T;
      try {
        parsed = (text.length ? JSON.parse(text) : undefined) as T;
      } catch {
        throw new KeyhavenError('internal', `the server at ${conn.server} answered ${method} ${path} with something other than JSON`);
      }
      return { status: res.statusCode, body: parsed, requestId, date };
    },
    close: async () => {
      if (undici) await (await undici).agent.close();
    },
  };
}
