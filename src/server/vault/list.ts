import { randomBytes } from 'node:crypto';
import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { FastifyInstance } from 'fastify';
import type { AuditLog } from '../../audit/audit-log.js';
import { isVaultPath, vaultErrorPayload, vaultNoRoute } from './envelope.js';

// Vault lists with the LIST method. Node's HTTP parser (llhttp) knows a fixed
// set of methods without LIST, so such a request never becomes a request:
// the parser fails with HPE_INVALID_METHOD and hands the bytes it read to
// the server's clientError handler. There, a LIST of the Transit key list
// is answered as the equivalent `GET <path>?list=true`, through the app
// itself (so authentication, authorization and audit are the usual ones),
// and the connection is closed, since the parser cannot go on. A head that
// arrives in several pieces is read on from the socket first.
//
// app.inject runs on a socket of its own, so what the real socket knows is
// checked here: a client certificate that was presented and does not verify
// is refused, as authenticate() refuses it for every other request.

const REQUEST_LINE = /^LIST (\/[\x21-\x7e]{0,2048}) HTTP\/1\.[01]$/;
const HEADER = /^([!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}):[ \t]*([\x20-\x7e\t]*?)[ \t]*$/;
// Per-connection and framing headers are the proxy's, not the request's.
const HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'content-length', 'upgrade', 'te', 'trailer']);
// The one path Vault LISTs here: the Transit key list, with or without a trailing slash and a query.
const LIST_PATH = /^\/v1\/transit\/keys\/?(?:\?[^#]*)?$/;
const MAX_HEAD = 64 * 1024;
// How long the rest of a head split over several packets may take (headersTimeout's role).
const HEAD_TIMEOUT_MS = 10_000;

// Sockets whose LIST this module answers: the parser's later errors on them
// (the rest of the head, a request timeout) must not answer over it.
const owned = new WeakSet<Socket>();

/** Whether a LIST on this socket is being answered here (app.ts then ignores the parser's errors). */
export function listOwnsSocket(socket: Socket): boolean {
  return owned.has(socket);
}

function write(socket: Socket, status: number, headers: [string, string][], body: Buffer): void {
  const out = [`HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}`];
  for (const [k, v] of headers) out.push(`${k}: ${v}`);
  out.push(`content-length: ${body.length}`, 'connection: close', '', '');
  if (socket.writable) socket.end(Buffer.concat([Buffer.from(out.join('\r\n'), 'latin1'), body]));
  else socket.destroy();
}

/** A Vault-shaped refusal, audited first (fail closed, as every other answer). */
function refuse(socket: Socket, audit: AuditLog, status: number, errors: string[], result: string, route: string): void {
  const id = randomBytes(8).toString('hex');
  const send = (s: number, e: string[]) =>
    write(socket, s, [['content-type', 'application/json'], ['cache-control', 'no-store'], ['x-request-id', id]], Buffer.from(JSON.stringify({ errors: e })));
  audit
    .record({ actor: 'anonymous', operation: 'transit.keys.list', result, requestId: id, details: { status, source: socket.remoteAddress ?? '', route } })
    .then(
      () => send(status, errors),
      () => {
        const p = vaultErrorPayload('audit_failed', 'the audit record could not be written; request refused');
        send(p.status, (JSON.parse(p.body) as { errors: string[] }).errors);
      },
    );
}

/** Dot segments (plain or percent-encoded) or encoded separators: a path that normalises to another. */
function dotted(path: string): boolean {
  return /%2e|%2f|%5c|\\/i.test(path) || path.split('/').some((s) => s === '.' || s === '..');
}

/** The path, if it is exactly the Transit key list: no dot segments, encoded or not, before or after normalisation. */
function listPath(raw: string): string | undefined {
  if (!LIST_PATH.test(raw)) return undefined;
  const path = raw.split('?')[0]!;
  if (dotted(path)) return undefined;
  let normal: string;
  try {
    normal = new URL(path, 'http://keyhaven.invalid').pathname;
  } catch {
    return undefined;
  }
  return normal === path && LIST_PATH.test(normal) ? raw : undefined;
}

/** Answers one complete LIST head (no body). */
function answerHead(app: FastifyInstance, audit: AuditLog, head: string, socket: Socket): void {
  const [line, ...fields] = head.split('\r\n');
  const m = REQUEST_LINE.exec(line!)!;
  const raw = m[1]!;
  const route = `LIST ${raw.split('?')[0]!.slice(0, 200)}`;
  const path = listPath(raw);
  if (path === undefined) {
    // Another Vault route takes another method (405); a dotted path or an unknown one has none (404).
    const plain = raw.split('?')[0]!;
    const { status, message } = dotted(plain) ? { status: 404, message: 'unsupported path' } : vaultNoRoute(plain);
    refuse(socket, audit, status, [message], status === 405 ? 'invalid_argument' : 'not_found', route);
    return;
  }
  const headers: Record<string, string> = {};
  for (const f of fields) {
    const h = HEADER.exec(f);
    const name = h?.[1]!.toLowerCase();
    if (!h || (name === 'content-length' && h[2] !== '0') || name === 'transfer-encoding') {
      refuse(socket, audit, 400, ['a LIST request has well-formed headers and no body'], 'invalid_argument', route);
      return;
    }
    if (!HOP.has(name!)) headers[name!] = h[2]!;
  }
  const tls = socket as TLSSocket;
  if (typeof tls.getPeerCertificate === 'function' && !tls.authorized && Object.keys(tls.getPeerCertificate() ?? {}).length > 0) {
    const why = String(tls.authorizationError ?? 'not trusted').slice(0, 80);
    refuse(socket, audit, 403, ['permission denied', `the client certificate was refused (${why}); present a valid certificate from the configured client CA, or none`], 'unauthenticated', route);
    return;
  }
  const url = `${path}${path.includes('?') ? '&' : '?'}list=true`;
  void app.inject({ method: 'GET', url, headers, remoteAddress: socket.remoteAddress ?? '127.0.0.1' }).then(
    (res) => {
      const out: [string, string][] = [];
      for (const [k, v] of Object.entries(res.headers)) {
        if (HOP.has(k.toLowerCase()) || v === undefined) continue;
        for (const one of Array.isArray(v) ? v : [v]) out.push([k, String(one)]);
      }
      write(socket, res.statusCode, out, res.rawPayload);
    },
    () => socket.destroy(),
  );
}

/** The parser's own answer to what is not a Vault LIST, in keyhaven's shape (as app.ts gives it). */
function malformed(socket: Socket): void {
  const id = randomBytes(8).toString('hex');
  const body = JSON.stringify({ error: { code: 'invalid_argument', message: 'malformed HTTP request', requestId: id } });
  write(socket, 400, [['content-type', 'application/json'], ['x-request-id', id]], Buffer.from(body));
}

/**
 * Answers a request starting "LIST " that the parser refused; false if
 * `packet` does not start one (the caller answers 400). LIST of a Vault path
 * other than the key list is refused in Vault's shape; LIST elsewhere gets
 * the parser's 400.
 */
export function answerVaultList(app: FastifyInstance, audit: AuditLog, packet: Buffer | undefined, socket: Socket): boolean {
  if (!packet || packet.length > MAX_HEAD) return false;
  let text = packet.toString('latin1');
  if (!text.startsWith('LIST /')) return false;
  owned.add(socket);
  const done = () => {
    const end = text.indexOf('\r\n\r\n');
    if (end < 0) return false;
    const head = text.slice(0, end);
    const m = REQUEST_LINE.exec(head.slice(0, head.indexOf('\r\n') < 0 ? head.length : head.indexOf('\r\n')));
    if (!m || !isVaultPath(m[1]!)) malformed(socket);
    // A body (or a second request) after the head: not a Vault LIST.
    else if (end + 4 !== text.length) refuse(socket, audit, 400, ['a LIST request has no body'], 'invalid_argument', 'LIST');
    else answerHead(app, audit, head, socket);
    return true;
  };
  if (done()) return true;
  // The head came in pieces: read on from the socket (node's parser has given up on it).
  const timer = setTimeout(() => {
    socket.removeListener('data', onData);
    refuse(socket, audit, 408, ['the request took too long to arrive'], 'invalid_argument', 'LIST');
  }, HEAD_TIMEOUT_MS);
  timer.unref();
  const onData = (chunk: Buffer) => {
    text += chunk.toString('latin1');
    if (text.length > MAX_HEAD) {
      clearTimeout(timer);
      socket.removeListener('data', onData);
      refuse(socket, audit, 431, ['request headers are larger than the server accepts'], 'too_large', 'LIST');
      return;
    }
    if (done()) {
      clearTimeout(timer);
      socket.removeListener('data', onData);
    }
  };
  socket.on('data', onData);
  socket.once('close', () => clearTimeout(timer));
  return true;
}
