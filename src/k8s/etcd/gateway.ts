import { isIP } from 'node:net';
import { connect as tlsConnect, type ConnectionOptions } from 'node:tls';
import { KeyhavenError } from '../../errors.js';
import { keyAfter, prefixRangeEnd, prefixRangeStart } from './keys.js';
import type { EtcdEntry, EtcdSource } from './types.js';
import type { AgentTls } from './undici.js';

// etcd's JSON gRPC gateway (the client port, POST /v3/kv/range): served by
// etcd 3.4 (beside the older /v3beta) and by 3.5 and later (only /v3). Only
// the range call is ever sent, so every source built here is read-only.

const RANGE_PATH = '/v3/kv/range';
/** Keys per page when the caller names none: Kubernetes objects reach 1.5 MiB, so a page stays well below a few hundred MiB. */
const DEFAULT_PAGE_SIZE = 100;
const MAX_PAGE_SIZE = 10_000;

/** What a connection needs to know to explain a failure: never a credential, only file names. */
export interface GatewayTarget {
  /** `http(s)://host:port`, without credentials or path. */
  origin: string;
  /** `etcd https://127.0.0.1:2379` or `snapshot backup.db`. */
  label: string;
  tls: AgentTls;
  /** A unix socket that serves the origin (the temporary etcd of a snapshot). */
  socketPath?: string;
  caFile?: string;
  certFile?: string;
  timeoutMs: number;
}

interface RangeRequest {
  key: string;
  range_end?: string;
  limit?: number;
  revision?: number;
  count_only?: boolean;
  keys_only?: boolean;
}

interface RangeResponse {
  header: { revision: number };
  kvs: { key: Buffer; value: Buffer; modRevision: number }[];
  more: boolean;
  count: number;
}

export interface Gateway {
  range(req: RangeRequest): Promise<RangeResponse>;
  close(): Promise<void>;
}

const b64 = (b: Buffer): string => b.toString('base64');

/** A number sent by the gateway as a JSON string (int64) or number; absent means 0. */
function int64(v: unknown, what: string, target: GatewayTarget): number {
  if (v === undefined) return 0;
  const n = typeof v === 'string' ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) throw notEtcd(target, `its ${what} is not a count`);
  return n;
}

function bytes(v: unknown, what: string, target: GatewayTarget): Buffer {
  if (v === undefined) return Buffer.alloc(0);
  if (typeof v !== 'string') throw notEtcd(target, `its ${what} is not base64`);
  return Buffer.from(v, 'base64');
}

function notEtcd(target: GatewayTarget, why: string): KeyhavenError {
  return new KeyhavenError('invalid_argument', `${target.origin} does not look like etcd (${why} on POST ${RANGE_PATH}); give an etcd client URL, as in https://127.0.0.1:2379`);
}

function parseRange(body: unknown, target: GatewayTarget): RangeResponse {
  if (typeof body !== 'object' || body === null) throw notEtcd(target, 'an answer that is not a JSON object');
  const o = body as Record<string, unknown>;
  const header = o.header as Record<string, unknown> | undefined;
  if (typeof header !== 'object' || header === null || header.revision === undefined) throw notEtcd(target, 'an answer without a header revision');
  const kvs = o.kvs ?? [];
  if (!Array.isArray(kvs)) throw notEtcd(target, 'kvs that is not a list');
  return {
    header: { revision: int64(header.revision, 'revision', target) },
    kvs: kvs.map((kv: Record<string, unknown>) => ({
      key: bytes(kv.key, 'key', target),
      value: bytes(kv.value, 'value', target),
      modRevision: int64(kv.mod_revision, 'mod_revision', target),
    })),
    more: o.more === true,
    count: int64(o.count, 'count', target),
  };
}

/** Every error in a cause chain (undici wraps the socket's error). */
function chain(e: unknown): { code?: unknown; name?: unknown; message?: unknown }[] {
  const out: { code?: unknown; name?: unknown }[] = [];
  for (let x = e, i = 0; typeof x === 'object' && x !== null && i < 8; x = (x as { cause?: unknown }).cause, i++) out.push(x);
  return out;
}

const SERVER_CERT_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT', 'CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID', 'CERT_UNTRUSTED', 'CERT_SIGNATURE_FAILURE',
  'CERT_REJECTED', 'INVALID_CA', 'ERR_TLS_CERT_ALTNAME_INVALID',
]);
const CLOSED_CODES = new Set(['UND_ERR_SOCKET', 'ECONNRESET', 'EPIPE', 'UND_ERR_CLOSED']);
const TIMEOUT_CODES = new Set(['UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'ETIMEDOUT']);

/** A failure below HTTP (connect, TLS, timeout) as a KeyhavenError naming what to check; never the error's own text, which may quote a request. */
function transportError(e: unknown, target: GatewayTarget): KeyhavenError {
  const errs = chain(e);
  const codes = errs.map((x) => x.code).filter((c): c is string => typeof c === 'string');
  const has = (set: Set<string>) => codes.find((c) => set.has(c));
  const where = target.label;
  const serverCert = has(SERVER_CERT_CODES);
  if (serverCert) {
    return new KeyhavenError('unauthenticated', `TLS failure: the certificate of ${where} does not verify against ${target.caFile ? `the CA file ${target.caFile}` : 'the system CAs (give a CA file)'} (${serverCert})`, { cause: e });
  }
  const alert = codes.find((c) => c.startsWith('ERR_SSL_') && c.includes('ALERT'));
  if (alert) {
    const msg = target.certFile
      ? `TLS failure: ${where} refused the client certificate ${target.certFile}: is it signed by a CA that etcd trusts, and still valid? (${alert})`
      : `TLS failure: ${where} requires a client certificate: give a certificate and key file (${alert})`;
    return new KeyhavenError('unauthenticated', msg, { cause: e });
  }
  if (codes.some((c) => c === 'ERR_SSL_WRONG_VERSION_NUMBER' || c === 'ERR_SSL_PACKET_LENGTH_TOO_LONG')) {
    return new KeyhavenError('invalid_argument', `TLS failure: ${where} does not speak TLS; use an http:// endpoint`, { cause: e });
  }
  const timedOut = has(TIMEOUT_CODES) ?? errs.find((x) => x.name === 'TimeoutError')?.name;
  if (timedOut) return new KeyhavenError('unavailable', `${where} did not answer within ${Math.round(target.timeoutMs / 1000)} s`, { cause: e });
  if (codes.includes('ECONNREFUSED')) return new KeyhavenError('unavailable', `cannot reach ${where}: connection refused`, { cause: e });
  if (codes.includes('ENOTFOUND') || codes.includes('EAI_AGAIN')) return new KeyhavenError('unavailable', `cannot reach ${where}: host not found`, { cause: e });
  if (codes.includes('EHOSTUNREACH') || codes.includes('ENETUNREACH')) return new KeyhavenError('unavailable', `cannot reach ${where}: no route to host`, { cause: e });
  if (has(CLOSED_CODES)) {
    // With TLS 1.3 a server that wants a client certificate may only close the connection after the handshake.
    const hint = target.origin.startsWith('https:') && !target.certFile ? ' (does it require a client certificate? give a certificate and key file)' : '';
    return new KeyhavenError('unavailable', `${where} closed the connection${hint}`, { cause: e });
  }
  const code = codes[0];
  return new KeyhavenError('unavailable', `cannot reach ${where}${code ? ` (${code})` : ''}`, { cause: e });
}

// gRPC status codes the gateway puts in its error body.
const GRPC_INVALID_ARGUMENT = 3;
const GRPC_PERMISSION_DENIED = 7;
const GRPC_OUT_OF_RANGE = 11;
const GRPC_UNAUTHENTICATED = 16;

/** An error answer of the gateway ({"error","message","code"}); etcd's messages name no values. */
function gatewayError(status: number, text: string, target: GatewayTarget, req: RangeRequest): KeyhavenError {
  let body: { message?: unknown; error?: unknown; code?: unknown } | undefined;
  try {
    body = JSON.parse(text) as typeof body;
  } catch {
    body = undefined;
  }
  if (typeof body !== 'object' || body === null || (typeof body.message !== 'string' && typeof body.error !== 'string')) {
    if (/HTTP request to an HTTPS server/i.test(text)) return new KeyhavenError('invalid_argument', `${target.label} serves TLS; use an https:// endpoint`);
    return notEtcd(target, `HTTP ${status}`);
  }
  const msg = String(body.message ?? body.error).slice(0, 300);
  const code = typeof body.code === 'number' ? body.code : -1;
  const where = target.label;
  if (code === GRPC_UNAUTHENTICATED || /user name is empty|invalid auth token|authentication failed/i.test(msg)) {
    return new KeyhavenError('unauthenticated', `${where} has authentication enabled and asks for an etcd user (etcd said: ${msg}); keyhaven reads etcd as a TLS client only: read a snapshot instead (etcdctl snapshot save)`);
  }
  if (code === GRPC_PERMISSION_DENIED) return new KeyhavenError('permission_denied', `${where} refused the read: ${msg}`);
  if (code === GRPC_OUT_OF_RANGE && /compacted/i.test(msg)) {
    return new KeyhavenError('unavailable', `${where} compacted revision ${req.revision ?? 0} while it was being read (etcd said: ${msg}); run again`);
  }
  if (code === GRPC_INVALID_ARGUMENT) return new KeyhavenError('internal', `${where} rejected a range request: ${msg}`);
  return new KeyhavenError('unavailable', `${where} failed a read: ${msg}`);
}

/**
 * One TLS handshake with nothing sent, to explain a server that closed the
 * connection before answering the first request. Under TLS 1.3 a server that
 * refuses the client certificate (or wants one) says so only after the
 * client's handshake is done, and undici sees just a closed socket; under TLS
 * 1.2 the refusal is an alert within the handshake. And a TLS-only etcd closes
 * a plain-http connection: a handshake that succeeds says it speaks TLS.
 * Resolves with the handshake's error, 'tls' when it succeeded, or undefined.
 */
function handshake(target: GatewayTarget, opts: ConnectionOptions): Promise<unknown> {
  const u = new URL(target.origin);
  const host = u.hostname.replace(/^\[|\]$/g, '');
  const port = Number(u.port || (u.protocol === 'https:' ? 443 : 80));
  return new Promise((resolve) => {
    const s = tlsConnect({ host, port, ...(isIP(host) ? {} : { servername: host }), ...opts, timeout: target.timeoutMs });
    const done = (v: unknown) => {
      s.destroy();
      resolve(v);
    };
    s.once('secureConnect', () => done('tls'));
    s.once('error', (e) => done(e));
    s.once('timeout', () => done(undefined));
  });
}

async function explainClose(target: GatewayTarget): Promise<KeyhavenError | undefined> {
  if (target.origin.startsWith('http:')) {
    const r = await handshake(target, { rejectUnauthorized: false });
    return r === 'tls' ? new KeyhavenError('invalid_argument', `${target.label} serves TLS; use an https:// endpoint`) : undefined;
  }
  const r = await handshake(target, { ...target.tls, maxVersion: 'TLSv1.2' });
  if (r === 'tls' || r === undefined) return undefined;
  const why = transportError(r, target);
  return why.code === 'unauthenticated' ? why : undefined;
}

/** A gateway client over one undici Agent (loaded on first use). */
export async function connectGateway(target: GatewayTarget): Promise<Gateway> {
  const { createAgent, request } = await import('./undici.js');
  const agent = createAgent(target.tls, target.timeoutMs, target.socketPath);
  let answered = false;
  return {
    async range(req) {
      let status: number;
      let text: string;
      try {
        const res = await request(target.origin + RANGE_PATH, {
          method: 'POST',
          headers: { 'content-type': 'application/json', accept: 'application/json' },
          body: JSON.stringify(req),
          dispatcher: agent,
          signal: AbortSignal.timeout(target.timeoutMs),
        });
        status = res.statusCode;
        text = await res.body.text();
      } catch (e) {
        const err = transportError(e, target);
        if (!answered && !target.socketPath && chain(e).some((x) => typeof x.code === 'string' && CLOSED_CODES.has(x.code))) throw (await explainClose(target)) ?? err;
        throw err;
      }
      answered = true;
      if (status !== 200) throw gatewayError(status, text, target, req);
      let body: unknown;
      try {
        body = JSON.parse(text);
      } catch {
        throw notEtcd(target, 'an answer that is not JSON');
      }
      return parseRange(body, target);
    },
    close: () => agent.close(),
  };
}

function checkPageSize(n: number): number {
  if (!Number.isSafeInteger(n) || n < 1 || n > MAX_PAGE_SIZE) {
    throw new KeyhavenError('invalid_argument', `the etcd page size must be a whole number from 1 to ${MAX_PAGE_SIZE}, not ${n}`);
  }
  return n;
}

/** Checks that the gateway answers a range at all: one exact-key lookup, cheap on any store. */
export async function probe(gw: Gateway): Promise<void> {
  await gw.range({ key: b64(Buffer.from([0])), keys_only: true, limit: 1 });
}

/** An EtcdSource over a gateway; `onClose` releases what the source owns (the agent, a temporary etcd). */
export function gatewaySource(label: string, gw: Gateway, onClose: () => Promise<void> = async () => {}): EtcdSource {
  let closed: Promise<void> | undefined;
  const open = () => {
    if (closed) throw new KeyhavenError('failed_precondition', `${label} is closed`);
  };
  return {
    label,
    async *pages(prefix: string, pageSize = DEFAULT_PAGE_SIZE): AsyncIterable<EtcdEntry[]> {
      const limit = checkPageSize(pageSize);
      open();
      const p = Buffer.from(prefix, 'utf8');
      const end = b64(prefixRangeEnd(p));
      let start = prefixRangeStart(p);
      // 0 reads the newest revision; every later page is read at the first page's revision, so the pages are one consistent view.
      let revision = 0;
      for (;;) {
        open();
        const res = await gw.range({ key: b64(start), range_end: end, limit, ...(revision ? { revision } : {}) });
        if (revision === 0) revision = res.header.revision;
        const last = res.kvs.at(-1);
        if (last) yield res.kvs.map((kv) => ({ key: kv.key.toString('utf8'), value: kv.value, modRevision: kv.modRevision }));
        if (!res.more) return;
        if (!last) throw new KeyhavenError('internal', `${label} said more keys follow but sent none`);
        start = keyAfter(last.key);
      }
    },
    async count(prefix: string): Promise<number> {
      open();
      const p = Buffer.from(prefix, 'utf8');
      const res = await gw.range({ key: b64(prefixRangeStart(p)), range_end: b64(prefixRangeEnd(p)), count_only: true });
      return res.count;
    },
    close() {
      closed ??= (async () => {
        try {
          await gw.close();
        } finally {
          await onClose();
        }
      })();
      return closed;
    },
  };
}
