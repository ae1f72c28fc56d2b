import { resolve } from 'node:path';
import { z } from 'zod';
import { KeyhavenError } from '../errors.js';
import { durationMs } from './duration.js';
import { configError } from './format-issues.js';
import { mergeConfig, readYamlFile } from './plugin-config.js';

const hostPort = z
  .string()
  .regex(/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/, 'must be host:port, for example 127.0.0.1:8200')
  .refine((v) => Number(v.slice(v.lastIndexOf(':') + 1)) <= 65535, 'port must be 0-65535');

const file = z.string().min(1);

const sqliteStorage = z.strictObject({ path: file });
const postgresStorage = z
  .strictObject({
    url: z.string().regex(/^postgres(ql)?:\/\//, 'must be a postgres:// URL'),
    poolSize: z.number().int().min(1).max(100).default(10),
    // Longest a server may idle inside a write transaction before PostgreSQL
    // ends it, releasing the write lock (bounds the stall a hung server causes).
    lockHold: durationMs.prefault('500ms').refine((v) => v >= 100 && v <= 60_000, 'must be between 100ms and 60s'),
    // How long a writer waits for the write lock before answering `unavailable`.
    lockWait: durationMs.prefault('5s').refine((v) => v >= 100 && v <= 300_000, 'must be between 100ms and 5m'),
  })
  .refine((v) => !(v.lockHold >= v.lockWait), { error: 'lockWait must be longer than lockHold (a waiter must outlast a hung holder)', path: ['lockWait'] });

// One object with exactly one of its keys (not a union), so a problem inside
// the chosen backend is reported at its own field.
const storage = z
  .strictObject({ sqlite: sqliteStorage.optional(), postgres: postgresStorage.optional() })
  .refine((v) => (v.sqlite === undefined) !== (v.postgres === undefined), 'must be {sqlite: {path}} or {postgres: {url}}')
  .transform((v): { sqlite: z.output<typeof sqliteStorage> } | { postgres: z.output<typeof postgresStorage> } => (v.sqlite ? { sqlite: v.sqlite } : { postgres: v.postgres! }));

const seal = z.union([
  z.strictObject({ keyfile: z.strictObject({ path: file }) }),
  z.strictObject({ shamir: z.strictObject({}).prefault({}) }),
  z.strictObject({
    pkcs11: z
      .strictObject({
        module: file,
        tokenLabel: z.string().min(1).optional(),
        slot: z.number().int().nonnegative().optional(),
        // The PIN comes from a file or an environment variable, never from the config itself.
        pinFile: file.optional(),
        pinEnv: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/).optional(),
        keyLabel: z.string().min(1).max(64).default('keyhaven-root-wrap'),
      })
      .refine((v) => (v.tokenLabel === undefined) !== (v.slot === undefined), 'set exactly one of tokenLabel or slot')
      .refine((v) => (v.pinFile === undefined) !== (v.pinEnv === undefined), 'set exactly one of pinFile or pinEnv'),
  }),
], { error: () => 'must be {keyfile: {path}}, {shamir: {}} or {pkcs11: {module, tokenLabel, pinFile|pinEnv}}' });

const sink = z.union([
  z.strictObject({ file: z.strictObject({ path: file }) }),
  z.strictObject({ stdout: z.strictObject({}) }),
  z.strictObject({
    syslog: z.strictObject({
      address: hostPort,
      facility: z.number().int().min(0).max(23).default(13),
      tag: z.string().regex(/^[A-Za-z0-9._-]{1,48}$/).default('keyhaven'),
    }),
  }),
], { error: () => 'must be {file: {path}}, {stdout: {}} or {syslog: {address}}' });

export const serverConfigSchema = z.strictObject({
  listen: hostPort.default('127.0.0.1:8200'),
  tls: z
    .strictObject({
      cert: file,
      key: file,
      // Client certificates signed by this CA may authenticate apps (mTLS).
      clientCa: file.optional(),
    })
    .optional(),
  // Plain HTTP is only served on loopback unless this is set.
  allowInsecureHttp: z.boolean().default(false),
  storage,
  seal,
  audit: z
    .strictObject({
      // true: each batch of records is fsynced before the answers go out.
      fsync: z.boolean().default(true),
      sink: sink.optional(),
      // Signed checkpoints of the chain, written outside the database (to the
      // sink and to this file): verify --witness catches a rollback or a wipe.
      checkpoint: z
        .strictObject({
          path: file.optional(),
          every: z.number().int().min(1).max(1_000_000).default(1000),
          interval: durationMs.refine((v) => v >= 100 && v <= 86_400_000, 'must be between 100ms and 24h').prefault('10s'),
        })
        .prefault({}),
    })
    .prefault({}),
  auth: z
    .strictObject({
      sessionTTL: durationMs.prefault('8h'),
      maxFailedLogins: z.number().int().min(1).max(100).default(5),
      lockBase: durationMs.prefault('30s'),
      lockMax: durationMs.prefault('15m'),
      // Sign-in requests (POST /v1/auth/login, POST /sys/v1/session/auth) per client address per window.
      rateLimit: z
        .strictObject({
          max: z.number().int().min(1).max(100_000).default(20),
          window: durationMs.prefault('1m'),
        })
        .prefault({}),
      // Password hashing: worker threads, and hashes admitted to wait for one; more are answered 429 at once.
      // scryptN: the cost of new hashes (32768: ~50 ms and 32 MiB each); lower only for tests.
      hashing: z
        .strictObject({
          workers: z.number().int().min(1).max(16).default(1),
          queue: z.number().int().min(0).max(1024).default(16),
          scryptN: z
            .number()
            .int()
            .min(1024)
            // 2^17 (128 MiB a hash) at most: a pool of 16 workers stays within 2 GiB.
            .max(1 << 17)
            .refine((n) => (n & (n - 1)) === 0, { message: 'must be a power of two (1024, 2048, ... 131072)' })
            .default(1 << 15),
        })
        .prefault({}),
    })
    .refine((a) => a.lockBase <= a.lockMax, { message: 'lockBase must not exceed lockMax', path: ['lockBase'] })
    .prefault({}),
  keys: z.strictObject({ destroyPending: durationMs.prefault('7d') }).prefault({}),
  scheduler: z.strictObject({ interval: durationMs.prefault('30s') }).prefault({}),
  http: z.strictObject({ bodyLimit: z.number().int().min(1024).max(64 * 1024 * 1024).default(1024 * 1024) }).prefault({}),
  metrics: z
    .strictObject({
      // A 0600 file holding the bearer token /metrics asks for; without it /metrics is open to anyone who reaches the port.
      tokenFile: file.optional(),
      // Label crypto metrics with key names (default: key ids, which tell an anonymous reader nothing the API hides).
      keyNames: z.boolean().default(false),
    })
    .prefault({}),
  log: z.strictObject({ level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info') }).prefault({}),
});

export type ServerConfig = z.output<typeof serverConfigSchema>;

function isLoopback(listen: string): boolean {
  const host = listen.slice(0, listen.lastIndexOf(':')).replace(/^\[|\]$/g, '');
  return host === 'localhost' || host === '::1' || /^127\./.test(host);
}

/** Parses, checks cross-field rules, resolves paths and freezes. */
export function parseServerConfig(raw: unknown, source: string, baseDir = process.cwd()): Readonly<ServerConfig> {
  const res = serverConfigSchema.safeParse(raw);
  if (!res.success) throw configError(source, res.error);
  const cfg = res.data;
  if (!cfg.tls && !cfg.allowInsecureHttp && !isLoopback(cfg.listen)) {
    throw new KeyhavenError('config_invalid', `invalid configuration in ${source}:\n  listen: ${cfg.listen} is not a loopback address; configure tls (cert, key) or set allowInsecureHttp: true`);
  }
  const abs = (p: string) => resolve(baseDir, p);
  if ('sqlite' in cfg.storage) cfg.storage.sqlite.path = abs(cfg.storage.sqlite.path);
  if ('keyfile' in cfg.seal) cfg.seal.keyfile.path = abs(cfg.seal.keyfile.path);
  if ('pkcs11' in cfg.seal && cfg.seal.pkcs11.pinFile) cfg.seal.pkcs11.pinFile = abs(cfg.seal.pkcs11.pinFile);
  if (cfg.tls) {
    cfg.tls.cert = abs(cfg.tls.cert);
    cfg.tls.key = abs(cfg.tls.key);
    if (cfg.tls.clientCa) cfg.tls.clientCa = abs(cfg.tls.clientCa);
  }
  if (cfg.audit.sink && 'file' in cfg.audit.sink) cfg.audit.sink.file.path = abs(cfg.audit.sink.file.path);
  if (cfg.audit.checkpoint.path) cfg.audit.checkpoint.path = abs(cfg.audit.checkpoint.path);
  if (cfg.metrics.tokenFile) cfg.metrics.tokenFile = abs(cfg.metrics.tokenFile);
  return deepFreeze(cfg);
}

export function loadServerConfig(path: string, overrides: Record<string, unknown> = {}): Readonly<ServerConfig> {
  const base = readYamlFile(path);
  if (typeof base !== 'object' || base === null || Array.isArray(base)) throw new KeyhavenError('config_invalid', `config file ${path} must hold a YAML mapping`);
  return parseServerConfig(mergeConfig(base, overrides), path, resolve(path, '..'));
}

function deepFreeze<T>(v: T): T {
  if (typeof v === 'object' && v !== null) {
    for (const x of Object.values(v)) deepFreeze(x);
    Object.freeze(v);
  }
  return v;
}
