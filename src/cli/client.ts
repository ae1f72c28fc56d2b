import { readFileSync } from 'node:fs';
import type { Agent } from 'undici';
import { ERROR_CODES, KeyhavenError, type ErrorCode } from '../errors.js';
import { readSession, type Session } from './session.js';

// The CLI's HTTP client for the key server's /v1 API. undici's request on a
// keep-alive Agent: commands that page (audit export) reuse one connection.

const DEFAULT_SERVER = 'http://127.0.0.1:8200';

// What the server accepts after "Bearer ".
const TOKEN = /^[\x21-\x7e]{1,512}$/;

export interface ConnectionFlags {
  server?: string;
  caFile?: string;
}

export interface Connection {
  /** Base URL without a trailing slash. */
  readonly server: string;
  readonly token?: string;
  readonly caFile?: string;
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

/** Where to connect and with which token: flags, then environment, then the saved login. */
export function resolveConnection(flags: ConnectionFlags, opts: { useSessionToken?: boolean } = {}): Connection {
  let session: Session | undefined;
  let sessionRead = false;
  const saved = () => {
    if (!sessionRead) {
      session = readSession();
      sessionRead = true;
    }
    return session;
  };
  let server: string;
  if (flags.server) server = normalizeServer(flags.server, '--server');
  else if (process.env.KEYHAVEN_ADDR) server = normalizeServer(process.env.KEYHAVEN_ADDR, 'KEYHAVEN_ADDR');
  else server = saved()?.server ?? DEFAULT_SERVER;

  const caFile = flags.caFile || process.env.KEYHAVEN_CACERT || (saved()?.server === server ? saved()?.caFile : undefined) || undefined;

  const envToken = process.env.KEYHAVEN_TOKEN;
  if (envToken) {
    // Checked here so a stray newline gives a clear error; the value is never echoed.
    if (!TOKEN.test(envToken)) throw new KeyhavenError('invalid_argument', 'KEYHAVEN_TOKEN does not look like a keyhaven token (printable characters only, no spaces or newlines)');
    return { server, token: envToken, caFile };
  }
  if (opts.useSessionToken === false) return { server, caFile };
  const s = saved();
  if (!s) return { server, caFile, noTokenReason: 'not logged in: run "keyhaven login" (or set KEYHAVEN_TOKEN)' };
  // A token goes only to the server that issued it.
  if (s.server !== server) return { server, caFile, noTokenReason: `the saved login is for ${s.server}, not ${server}: run "keyhaven login --server ${server}"` };
  if (Date.parse(s.expiresAt) <= Date.now()) return { server, caFile, noTokenReason: 'the saved session has expired: run "keyhaven login"' };
  if (!TOKEN.test(s.token)) return { server, caFile, noTokenReason: 'the saved session is damaged: run "keyhaven login"' };
  return { server, token: s.token, caFile };
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

function connectError(e: unknown, server: string): KeyhavenError {
  const err = e as { code?: string; errors?: Array<{ code?: string }>; cause?: { code?: string } };
  const code = err.code ?? err.errors?.[0]?.code ?? err.cause?.code ?? 'error';
  let message = `cannot reach the keyhaven server at ${server}: ${code}`;
  if (TLS_CODES.test(code)) message += ' (for a server with a private CA pass --ca-file or set KEYHAVEN_CACERT)';
  else if (code === 'ECONNREFUSED') message = `cannot reach the keyhaven server at ${server}: ECONNREFUSED`;
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
        throw connectError(e, conn.server);
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
