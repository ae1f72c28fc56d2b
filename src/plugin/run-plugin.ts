import { createServer as createNetServer, type Server as NetServer } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import type { PluginConfig } from '../config/plugin-config.js';
import { KeyhavenError } from '../errors.js';
import type { Logger } from '../log/logger.js';
import { PACKAGE_VERSION } from '../paths.js';
import { startHealthServer, type HealthServer } from './health-server.js';
import { KMS_SERVER_OPTIONS, loadKmsProtos } from './kms-protos.js';
import { buildProvider } from './providers/registry.js';
import { createKmsHandlers } from './kms-service.js';
import { createPluginMetrics } from './metrics.js';
import { assertAbstractNameExact, clearStaleSocket, parseEndpoint, removeSocketIfOurs, secureSocket, socketIdentity, type SocketIdentity } from './socket.js';
import { createStatusMonitor } from './status-monitor.js';

export interface RunningPlugin {
  readonly socket: string;
  readonly health?: HealthServer;
  /** Stops accepting calls, lets in-flight calls finish, removes the socket. */
  close(): Promise<void>;
}

function parseSocketConfig(socket: string) {
  try {
    return parseEndpoint(socket);
  } catch (e) {
    throw e instanceof KeyhavenError ? new KeyhavenError('config_invalid', `socket: ${e.message}`) : e;
  }
}

/** Serves the KMS API with the provider the config names. */
export async function startPlugin(cfg: PluginConfig, logger: Logger): Promise<RunningPlugin> {
  const endpoint = parseSocketConfig(cfg.socket);
  const metrics = createPluginMetrics();
  const { provider, audit } = await buildProvider({ cfg, logger, metrics });

  const monitor = createStatusMonitor(provider, {
    cacheTtlMs: cfg.status.cacheTTL,
    graceMs: cfg.status.gracePeriod,
    onChange: ({ keyId, previousKeyId, error, degraded }) => {
      metrics.providerUp.set(error ? 0 : 1);
      if (error && degraded) logger.warn({ keyId, err: { code: error.code, message: error.message } }, 'key provider unreachable; Status keeps the last good key_id during the grace period');
      else if (error) logger.error({ err: { code: error.code, message: error.message } }, 'Status fails: the apiserver will stop writing with this plugin');
      else logger.info({ keyId, previousKeyId }, previousKeyId ? 'key_id changed' : 'key_id');
      metrics.setKeyId(error && !degraded ? undefined : keyId, provider.kind);
    },
  });

  // Checked on a timer too, not only when the apiserver asks: v1beta1 never sends
  // Status, and a revoked grant or a rotation must still reach Encrypt.
  const recheck = setInterval(() => void monitor.check().catch(() => {}), Math.max(cfg.status.recheckInterval, 100));
  recheck.unref();

  const protos = loadKmsProtos();
  const handlers = createKmsHandlers({ provider, monitor, metrics, logger, ...(audit ? { audit } : {}), runtimeVersion: PACKAGE_VERSION });
  const server = new grpc.Server(KMS_SERVER_OPTIONS);
  server.addService(protos.v2.KeyManagementService.service, handlers.v2 as unknown as grpc.UntypedServiceImplementation);
  if (cfg.v1beta1) server.addService(protos.v1beta1.KeyManagementService.service, handlers.v1beta1 as unknown as grpc.UntypedServiceImplementation);

  let health: HealthServer | undefined;
  let abstractListener: NetServer | undefined;
  let bound: SocketIdentity | undefined;
  try {
    if (endpoint.kind === 'path') {
      const stale = await clearStaleSocket(endpoint.path);
      if (stale === 'removed') logger.warn({ socket: endpoint.path }, 'removed a stale socket left by an earlier run');
    }
    if (endpoint.kind === 'abstract') {
      // grpc-js cannot bind an abstract socket itself; a net server can, and hands it each connection.
      const injector = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
      const listener = createNetServer((sock) => injector.injectConnection(sock));
      await new Promise<void>((resolve, reject) => {
        listener.once('error', (e: NodeJS.ErrnoException) => reject(new KeyhavenError('config_invalid', `cannot listen on ${cfg.socket}: ${e.code ?? e.message}`)));
        listener.listen(`\0${endpoint.name}`, () => resolve());
      });
      abstractListener = listener;
      assertAbstractNameExact(endpoint.name);
    } else {
      await new Promise<void>((resolve, reject) => {
        server.bindAsync(endpoint.grpcAddress, grpc.ServerCredentials.createInsecure(), (err) => {
          if (err) reject(new KeyhavenError('config_invalid', `cannot listen on ${cfg.socket}: ${err.message}`));
          else resolve();
        });
      });
      if (endpoint.kind === 'path') bound = socketIdentity(endpoint.path);
    }
    if (endpoint.kind === 'path') secureSocket(endpoint.path, cfg.socketMode, cfg.socketGroup === null ? undefined : String(cfg.socketGroup));

    // First Status before serving health, so the first /healthz and key_id log are meaningful.
    await monitor.check().catch(() => {});

    if (cfg.health.address !== 'off') {
      const i = cfg.health.address.lastIndexOf(':');
      const host = cfg.health.address.slice(0, i).replace(/^\[|\]$/g, '');
      const port = Number(cfg.health.address.slice(i + 1));
      health = await startHealthServer({ host, port, monitor, registry: metrics.registry });
      logger.info({ address: health.address, port: health.port }, 'health listening');
    }
  } catch (e) {
    clearInterval(recheck);
    abstractListener?.close();
    server.forceShutdown();
    // Only a socket this process bound: a refused start must not take a live plugin's socket away.
    if (endpoint.kind === 'path' && bound) removeSocketIfOurs(endpoint.path, bound);
    await provider.close();
    throw e;
  }
  logger.info({ socket: cfg.socket, provider: provider.kind, v1beta1: cfg.v1beta1, keyId: monitor.lastKeyId() }, 'kms plugin listening');

  let closing: Promise<void> | undefined;
  return {
    socket: cfg.socket,
    health,
    close() {
      closing ??= (async () => {
        clearInterval(recheck);
        abstractListener?.close();
        await new Promise<void>((resolve) => {
          // In-flight calls finish; after 10 s the rest are cut off.
          const force = setTimeout(() => server.forceShutdown(), 10_000);
          server.tryShutdown(() => {
            clearTimeout(force);
            resolve();
          });
        });
        if (endpoint.kind === 'path' && bound) removeSocketIfOurs(endpoint.path, bound);
        await health?.close();
        await provider.close();
        logger.info('kms plugin stopped');
      })();
      return closing;
    },
  };
}
