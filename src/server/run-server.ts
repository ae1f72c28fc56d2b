import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import { checkpointFile, sinkWitness, startCheckpointer, type Checkpointer, type CheckpointWitness } from '../audit/checkpointer.js';
import type { Checkpoint } from '../audit/checkpoint.js';
import { startSinkPump, fileSink, stdoutSink, syslogSink, type AuditSink, type SinkPump } from '../audit/sinks.js';
import { readSecret, readSecretFile } from '../config/secret-file.js';
import type { ServerConfig } from '../config/server-config.js';
import { closePasswordHashing, configurePasswordHashing, DEFAULT_SCRYPT_N } from '../access/secrets.js';
import { KeyhavenError } from '../errors.js';
import type { Logger } from '../log/logger.js';
import { keyFileSeal } from '../seal/keyfile.js';
import { pkcs11Seal } from '../seal/pkcs11.js';
import type { Seal } from '../seal/seal.js';
import { shamirSeal } from '../seal/shamir.js';
import { openStore } from '../storage/open-store.js';
import type { Store } from '../storage/store.js';
import { buildApp } from './app.js';
import { createOpsLog } from './ops-log.js';
import { openServerCore, type ServerCore } from './core.js';
import { createServerMetrics } from './metrics.js';

export interface RunningServer {
  readonly core: ServerCore;
  readonly app: FastifyInstance;
  /** Base URL, e.g. http://127.0.0.1:8200 */
  readonly url: string;
  close(): Promise<void>;
}

/** The /metrics bearer token: read once at start, from a file only its owner may read. */
function readMetricsToken(path: string): Buffer {
  const text = readSecretFile(path, { what: 'the metrics token file', field: 'metrics.tokenFile' });
  if (!/^[\x21-\x7e]{1,512}$/.test(text)) throw new KeyhavenError('config_invalid', `the metrics token in ${path} (metrics.tokenFile) must be 1-512 printable characters without spaces`);
  return Buffer.from(text, 'utf8');
}

export function sealFromConfig(cfg: ServerConfig['seal']): Seal {
  if ('keyfile' in cfg) return keyFileSeal(cfg.keyfile.path);
  if ('shamir' in cfg) return shamirSeal();
  const p = cfg.pkcs11;
  return pkcs11Seal({ module: p.module, tokenLabel: p.tokenLabel, slot: p.slot, pin: readSecret({ file: p.pinFile, env: p.pinEnv }, { what: 'the HSM PIN file', envField: 'seal.pkcs11.pinEnv' }), keyLabel: p.keyLabel });
}

function readTls(cfg: NonNullable<ServerConfig['tls']>) {
  const read = (what: string, path: string) => {
    try {
      return readFileSync(path);
    } catch (e) {
      throw new KeyhavenError('config_invalid', `cannot read the TLS ${what} ${path}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
    }
  };
  return {
    cert: read('certificate', cfg.cert),
    key: read('key', cfg.key),
    // Client certificates are asked for, not required: users use tokens.
    ...(cfg.clientCa ? { ca: read('client CA', cfg.clientCa), requestCert: true, rejectUnauthorized: false } : {}),
    minVersion: 'TLSv1.2' as const,
  };
}

/** How often a server sharing PostgreSQL re-reads the key rows (see refreshKeys). */
const KEY_POLL_MS = 1000;

/** Opens storage and the seal, serves the API, runs the scheduler. */
export async function startServer(
  cfg: Readonly<ServerConfig>,
  logger: Logger,
  // singlePersonDev: keyhaven dev only; server.yaml has no way to set it.
  extra: { store?: Store; singlePersonDev?: boolean } = {},
): Promise<RunningServer> {
  const https = cfg.tls ? readTls(cfg.tls) : undefined;
  const store =
    extra.store ??
    (await openStore('sqlite' in cfg.storage ? { sqlite: { path: cfg.storage.sqlite.path, create: true } } : { postgres: { url: cfg.storage.postgres.url, poolSize: cfg.storage.postgres.poolSize, lockHoldMs: cfg.storage.postgres.lockHold, lockWaitMs: cfg.storage.postgres.lockWait } }));
  let core: ServerCore | undefined;
  let pump: SinkPump | undefined;
  let app: FastifyInstance | undefined;
  let checkpoints: Checkpointer | undefined;
  let sink: AuditSink | undefined;
  const witnesses: CheckpointWitness[] = [];
  const ops = createOpsLog(logger);
  try {
    const seal = sealFromConfig(cfg.seal);
    if (cfg.audit.sink) {
      const s = cfg.audit.sink;
      sink = 'file' in s ? fileSink(s.file.path) : 'stdout' in s ? stdoutSink() : syslogSink(s.syslog);
      witnesses.push(sinkWitness(sink));
    }
    let last: Checkpoint | undefined;
    if (cfg.audit.checkpoint.path) {
      const f = checkpointFile(cfg.audit.checkpoint.path);
      witnesses.push(f.witness);
      last = f.last;
    }
    if (witnesses.length) {
      checkpoints = startCheckpointer({
        store,
        witnesses,
        every: cfg.audit.checkpoint.every,
        intervalMs: cfg.audit.checkpoint.interval,
        last,
        onError: (e) => logger.error({ err: e }, 'audit checkpoint write failed; will retry'),
        onMismatch: (what) => logger.error({ problem: what }, 'the audit log does not match the checkpoint file; run keyhaven audit verify --witness'),
      });
    }
    core = await openServerCore({
      store,
      seal,
      auditFsync: cfg.audit.fsync,
      access: { sessionTtlS: cfg.auth.sessionTTL / 1000, maxFailedLogins: cfg.auth.maxFailedLogins, lockBaseS: cfg.auth.lockBase / 1000, lockMaxS: cfg.auth.lockMax / 1000 },
      // Each scheduled rotation, destruction and expiry has its own line (ops-log.ts, from its audit record).
      onAuditStored: (_last, _change, records) => ops.stored(records),
      onSignInLock: ops.signInLocked,
      checkpoints,
      onSealChange: (state) =>
        logger.warn({ sealed: state === 'sealed' }, state === 'sealed' ? 'an operator sealed the servers sharing this database; sealed until a security-admin unseals (keyhaven operator unseal)' : 'the operator seal was lifted on a server sharing this database; unsealed again'),
      singlePersonDev: extra.singlePersonDev === true,
    });
    if (checkpoints) core.audit.onStored(checkpoints.stored);
    if (sink) {
      pump = await startSinkPump(store, sink, { intervalMs: 1000, onError: ops.auditSinkFailed });
      core.audit.onStored(pump.kick);
    }
    const c = core;
    const metrics = createServerMetrics({
      keyNames: cfg.metrics.keyNames,
      keyId: (name) => {
        try {
          return c.services().keys.idOf(name);
        } catch {
          return undefined; // sealed
        }
      },
    });
    const metricsToken = cfg.metrics.tokenFile ? readMetricsToken(cfg.metrics.tokenFile) : undefined;
    configurePasswordHashing(cfg.auth.hashing);
    if (cfg.auth.hashing.scryptN < DEFAULT_SCRYPT_N) {
      logger.warn({ scryptN: cfg.auth.hashing.scryptN, default: DEFAULT_SCRYPT_N }, 'auth.hashing.scryptN is below the default: new password hashes are cheaper to guess offline; use it for tests only');
    }
    const signInRateLimit = { max: cfg.auth.rateLimit.max, windowMs: cfg.auth.rateLimit.window };
    app = await buildApp({ core, logger, metrics, metricsToken, bodyLimit: cfg.http.bodyLimit, destroyPendingS: cfg.keys.destroyPending / 1000, https, signInRateLimit });
    const at = cfg.listen.lastIndexOf(':');
    await app.listen({ host: cfg.listen.slice(0, at).replace(/^\[|\]$/g, ''), port: Number(cfg.listen.slice(at + 1)) });
  } catch (e) {
    await app?.close().catch(() => {});
    await checkpoints?.stop().catch(() => {});
    if (!checkpoints) for (const w of witnesses) await w.close().catch(() => {});
    if (pump) await pump.stop().catch(() => {});
    else await sink?.close().catch(() => {});
    await core?.close().catch(() => {});
    await store.close();
    if (e instanceof KeyhavenError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EADDRINUSE' || code === 'EACCES' || code === 'EADDRNOTAVAIL') throw new KeyhavenError('config_invalid', `cannot listen on ${cfg.listen}: ${code}`);
    throw e;
  }
  const addr = app.server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  const url = `${cfg.tls ? 'https' : 'http'}://${host}:${addr.port}`;
  const status = core.status();
  logger.info({ url, storage: 'sqlite' in cfg.storage ? 'sqlite' : 'postgres', seal: status.kind, initialized: status.initialized, sealed: status.sealed, ...(status.sealedBy ? { sealedBy: status.sealedBy } : {}) }, 'keyhaven server listening');
  if (status.sealedBy === 'operator') logger.warn({ sealedBy: 'operator' }, 'an operator seal holds: the server stays sealed until a security-admin unseals it (keyhaven operator unseal)');
  if (status.initialized && status.initConfirmed === false) logger.warn('initialisation is not confirmed yet: until the first login of a user it made, keyhaven operator init may be run again');

  let ticking: Promise<void> | undefined;
  const c = core;
  const timer = setInterval(() => {
    if (ticking) return;
    ticking = c
      .tick()
      .catch((e: unknown) => logger.error({ err: e }, 'scheduled work failed; will retry'))
      .finally(() => {
        ticking = undefined;
      });
  }, cfg.scheduler.interval);
  // Several servers may share a PostgreSQL database: each re-reads the key rows
  // every second, so a rotation or a disable made through another server applies
  // here within about a second rather than at the next tick. One SQLite file
  // belongs to one server (and the CLI, whose changes the tick picks up), so no poll there.
  let polling: Promise<void> | undefined;
  let pollFailed = false;
  const keyPoll =
    'postgres' in cfg.storage
      ? setInterval(() => {
          if (polling) return;
          polling = c
            .refreshKeys()
            .then(
              () => {
                if (pollFailed) logger.info('reading key changes made by other servers works again');
                pollFailed = false;
              },
              (e: unknown) => {
                // Once per outage, not every second; the tick logs its own failures.
                if (!pollFailed) logger.warn({ err: e }, 'cannot read key changes made by other servers; will retry every second');
                pollFailed = true;
              },
            )
            .finally(() => {
              polling = undefined;
            });
        }, KEY_POLL_MS)
      : undefined;
  const a = app;
  const p = pump;
  const cps = checkpoints;
  return {
    core: c,
    app: a,
    url,
    async close() {
      clearInterval(timer);
      if (keyPoll) clearInterval(keyPoll);
      await a.close();
      await ticking;
      await polling;
      await c.close();
      // After the last record: the final checkpoint covers the whole log.
      await cps?.stop();
      await p?.stop();
      await store.close();
      await closePasswordHashing();
    },
  };
}
