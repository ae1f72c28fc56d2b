import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyInstance } from 'fastify';
import { isVaultPath } from './compat-vault-envelope.js';

// Vault lists with the LIST method. Node's HTTP parser (llhttp) knows a fixed
// set of methods without LIST, so such a request never becomes a request:
// the parser fails with HPE_INVALID_METHOD and hands the bytes it read to
// the server's clientError handler. There, a LIST of a Vault path whose
// whole head arrived (a client writes its head at once) is answered as the
// equivalent `GET <path>?list=true`, through the app itself (so
// authentication, authorization and audit are the usual ones), and the
// connection is closed, since the parser cannot go on.

const REQUEST_LINE = /^LIST (\/[\x21-\x7e]{0,2048}) HTTP\/1\.[01]$/;
const HEADER = /^([!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}):[ \t]*([\x20-\x7e\t]*?)[ \t]*$/;
// Per-connection and framing headers are the proxy's, not the request's.
const HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'content-length', 'upgrade', 'te', 'trailer']);

/** Answers a LIST request the parser refused; false if `packet` is not one (the caller answers 400). */
export function answerVaultList(app: FastifyInstance, packet: Buffer | undefined, socket: Socket): boolean {
  if (!packet || packet.length > 64 * 1024) return false;
  const text = packet.toString('latin1');
  const end = text.indexOf('\r\n\r\n');
  // Only a bodyless request whose head is complete; anything more is not a Vault LIST.
  if (end < 0 || end + 4 !== text.length) return false;
  const [line, ...fields] = text.slice(0, end).split('\r\n');
  const m = REQUEST_LINE.exec(line!);
  if (!m || !isVaultPath(m[1]!)) return false;
  const headers: Record<string, string> = {};
  for (const f of fields) {
    const h = HEADER.exec(f);
    if (!h) return false;
    const name = h[1]!.toLowerCase();
    if (name === 'content-length' && h[2] !== '0') return false;
    if (name === 'transfer-encoding') return false;
    if (!HOP.has(name)) headers[name] = h[2]!;
  }
  const path = m[1]!;
  const url = `${path}${path.includes('?') ? '&' : '?'}list=true`;
  void app
    .inject({ method: 'GET', url, headers, remoteAddress: socket.remoteAddress ?? '127.0.0.1' })
    .then(
      (res) => {
        const out = [`HTTP/1.1 ${res.statusCode} ${STATUS_CODES[res.statusCode] ?? ''}`];
        for (const [k, v] of Object.entries(res.headers)) {
          if (HOP.has(k.toLowerCase()) || v === undefined) continue;
          for (const one of Array.isArray(v) ? v : [v]) out.push(`${k}: ${String(one)}`);
        }
        out.push(`content-length: ${res.rawPayload.length}`, 'connection: close', '', '');
        if (socket.writable) socket.end(Buffer.concat([Buffer.from(out.join('\r\n'), 'latin1'), res.rawPayload]));
        else socket.destroy();
      },
      () => socket.destroy(),
    );
  return true;
}
