import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import { KeyhavenError } from '../errors.js';
import type { StatusMonitor } from './status-monitor.js';

export interface HealthServer {
  readonly address: string;
  readonly port: number;
  close(): Promise<void>;
}

/** /livez (process alive), /healthz (provider round trip), /metrics (Prometheus). */
export async function startHealthServer(opts: { host: string; port: number; monitor: StatusMonitor; registry: Registry }): Promise<HealthServer> {
  const server: Server = createServer((req, res) => {
    const url = (req.url ?? '/').split('?')[0];
    const send = (code: number, body: string, type = 'text/plain; charset=utf-8') => {
      res.writeHead(code, { 'content-type': type, 'cache-control': 'no-store' });
      res.end(body);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(405, 'method not allowed\n');
    if (url === '/livez') return send(200, 'ok\n');
    if (url === '/healthz' || url === '/readyz') {
      // Unlike Status, /healthz reports a provider outage at once, grace period or not.
      opts.monitor.check().then(
        (snap) => (snap.degraded ? send(503, `degraded: key provider unreachable; Status still answers the last good key_id ${snap.keyId} during the grace period\n`) : send(200, 'ok\n')),
        (e: unknown) => send(503, `unhealthy: ${e instanceof KeyhavenError ? e.message : 'internal error'}\n`),
      );
      return;
    }
    if (url === '/metrics') {
      opts.registry.metrics().then(
        (text) => send(200, text, opts.registry.contentType),
        () => send(500, 'metrics unavailable\n'),
      );
      return;
    }
    send(404, 'not found\n');
  });
  server.keepAliveTimeout = 5000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) =>
      reject(new KeyhavenError('config_invalid', `cannot listen for health on ${opts.host}:${opts.port}: ${e.code ?? 'error'}`)),
    );
    server.listen(opts.port, opts.host, () => resolve());
  });
  const addr = server.address() as AddressInfo;
  return {
    address: addr.address,
    port: addr.port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
