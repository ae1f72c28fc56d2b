import { readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { KeyhavenError } from '../errors.js';
import { durationMs } from './duration.js';
import { configError } from './format-issues.js';
import { checkApiKeySource, checkDeadlines, checkServerList, checkTlsPair, clusterName, deadlineFields, envVarName, localKekSchema, originUrl, resolveTlsPaths, tlsSchema } from './providers/common.js';
import { awsKmsProviderSchema, checkAwsKmsProvider } from './providers/aws-kms.js';
import { checkFortanixDsmProvider, fortanixDsmProviderSchema } from './providers/fortanix-dsm.js';
import { checkPkcs11Provider, pkcs11ProviderSchema } from './providers/pkcs11.js';
import { checkVaultProvider, vaultProviderSchema } from './providers/vault.js';
import { KEY_NAME } from '../key-name.js';

export const DEFAULT_KEY_NAME = 'kubernetes-secrets';
const MAX_CONFIG_BYTES = 1024 * 1024;

const hostPort = z
  .string()
  .regex(/^(off|(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5})$/, 'must be host:port (for example 127.0.0.1:8787) or "off"')
  .refine((v) => !/:\d+$/.test(v) || Number(v.slice(v.lastIndexOf(':') + 1)) <= 65535, 'port must be 0-65535');

const embeddedProvider = z.strictObject({
  type: z.literal('embedded'),
  dataDir: z.string().min(1),
  key: z.string().regex(KEY_NAME, 'must be 1-128 letters, digits, ".", "_" or "-"').default(DEFAULT_KEY_NAME),
  rootKeyFile: z.string().min(1).optional(),
  // Keys Decrypt still accepts after the cluster moved to `key` (Encrypt never uses them).
  previousKeys: z.array(z.string().regex(KEY_NAME, 'must be key names')).max(16).default([]),
});

const keyName = z.string().regex(KEY_NAME, 'must be 1-128 letters, digits, ".", "_" or "-"');

const serverUrl = originUrl();

const keyhavenProvider = z.strictObject({
  type: z.literal('keyhaven'),
  // Tried in order, healthy ones first; one per site is typical.
  servers: z.array(serverUrl).min(1).max(8),
  key: keyName.default(DEFAULT_KEY_NAME),
  // How the central team will recognise this cluster (`keyhaven cluster list`).
  cluster: clusterName,
  // The app's API key: from a file (mode 0600) or an environment variable, never a flag.
  apiKeyFile: z.string().min(1).optional(),
  apiKeyEnv: envVarName.optional(),
  tls: tlsSchema(),
  allowInsecureHttp: z.boolean().default(false),
  // Deadline of one plugin call across every server tried; one server gets at most attemptTimeout of it.
  ...deadlineFields,
  localKek: localKekSchema,
  // How often the plugin reports its cluster, version and key_id to the server (and on every key_id change).
  reportInterval: durationMs.prefault('60s'),
});

export const pluginConfigSchema = z.strictObject({
  socket: z
    .string()
    .regex(/^unix:\/\/\/./, 'must be unix:///absolute/path.sock or unix:///@abstract-name')
    .default('unix:///run/keyhaven/kms.sock'),
  socketMode: z
    .string({ error: (iss) => (typeof iss.input === 'number' ? 'must be a quoted octal string such as "0600" (YAML reads an unquoted 0600 as the number 600)' : undefined) })
    .regex(/^0?[0-7]{3}$/, 'must be an octal mode such as "0600"')
    .default('0600')
    .transform((v) => parseInt(v, 8)),
  socketGroup: z.union([z.string().min(1), z.number().int().nonnegative()]).nullable().default(null),
  provider: z.discriminatedUnion('type', [embeddedProvider, keyhavenProvider, vaultProviderSchema, fortanixDsmProviderSchema, awsKmsProviderSchema, pkcs11ProviderSchema]),
  status: z
    .strictObject({
      cacheTTL: durationMs.prefault('5s'),
      gracePeriod: durationMs.prefault('5m'),
      // The provider is also checked this often without a Status call: v1beta1 never sends one.
      recheckInterval: durationMs.prefault('30s'),
    })
    .prefault({}),
  health: z.strictObject({ address: hostPort.default('127.0.0.1:8787') }).prefault({}),
  audit: z
    .strictObject({
      // false: a request's record is written before it is answered and survives
      // a process crash; true: it is also fsynced (power-loss safe, slower).
      fsync: z.boolean().default(false),
    })
    .prefault({}),
  log: z.strictObject({ level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info') }).prefault({}),
  v1beta1: z.boolean().default(true),
});

export type PluginConfig = z.output<typeof pluginConfigSchema>;

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Deep-merges flag overrides onto the file's content (flags win). */
export function mergeConfig(base: unknown, overrides: Record<string, unknown>): unknown {
  if (!isPlainObject(base)) return overrides;
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(overrides)) {
    if (v === undefined) continue;
    out[k] = isPlainObject(v) && isPlainObject(out[k]) ? mergeConfig(out[k], v) : v;
  }
  return out;
}

export function readYamlFile(path: string): unknown {
  let size: number;
  try {
    size = statSync(path).size;
  } catch (e) {
    throw new KeyhavenError('config_invalid', `cannot read config file ${path}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  if (size > MAX_CONFIG_BYTES) throw new KeyhavenError('config_invalid', `config file ${path} is ${size} bytes; the limit is ${MAX_CONFIG_BYTES}`);
  const text = readFileSync(path, 'utf8');
  try {
    return parseYaml(text, { uniqueKeys: true, maxAliasCount: 100 }) ?? {};
  } catch (e) {
    throw new KeyhavenError('config_invalid', `config file ${path} is not valid YAML: ${(e as Error).message.split('\n')[0]}`);
  }
}

/** Parses and freezes the plugin configuration; every problem is a readable error. */
export function parsePluginConfig(raw: unknown, source: string): Readonly<PluginConfig> {
  const res = pluginConfigSchema.safeParse(raw);
  if (!res.success) throw configError(source, res.error);
  const cfg = res.data;
  if (cfg.provider.type === 'embedded') {
    cfg.provider.dataDir = resolve(cfg.provider.dataDir);
    cfg.provider.rootKeyFile = resolve(cfg.provider.rootKeyFile ?? join(cfg.provider.dataDir, 'root.key'));
  }
  if (cfg.provider.type === 'keyhaven') checkKeyhavenProvider(cfg.provider, source);
  const problems =
    cfg.provider.type === 'vault' ? checkVaultProvider(cfg.provider)
    : cfg.provider.type === 'fortanix-dsm' ? checkFortanixDsmProvider(cfg.provider)
    : cfg.provider.type === 'aws-kms' ? checkAwsKmsProvider(cfg.provider)
    : cfg.provider.type === 'pkcs11' ? checkPkcs11Provider(cfg.provider)
    : [];
  if (problems.length) throw new KeyhavenError('config_invalid', `invalid configuration in ${source}:\n  ${problems.join('\n  ')}`);
  return deepFreeze(cfg);
}

export type KeyhavenProviderConfig = z.output<typeof keyhavenProvider>;
export type EmbeddedProviderConfig = z.output<typeof embeddedProvider>;

function checkKeyhavenProvider(p: KeyhavenProviderConfig, source: string): void {
  const problems = [
    ...checkApiKeySource(p, "the app's API key"),
    ...checkTlsPair(p.tls),
    ...checkDeadlines(p),
    ...checkServerList('servers', p.servers, 'a server', p.allowInsecureHttp, 'the API key'),
  ];
  if (problems.length) throw new KeyhavenError('config_invalid', `invalid configuration in ${source}:\n  ${problems.join('\n  ')}`);
  if (p.apiKeyFile) p.apiKeyFile = resolve(p.apiKeyFile);
  resolveTlsPaths(p.tls);
}

export function loadPluginConfig(file: string | undefined, overrides: Record<string, unknown>): Readonly<PluginConfig> {
  const base = file ? readYamlFile(file) : {};
  if (!isPlainObject(base)) throw new KeyhavenError('config_invalid', `config file ${file} must hold a YAML mapping`);
  return parsePluginConfig(mergeConfig(base, overrides), file ?? 'command-line flags');
}

function deepFreeze<T>(v: T): T {
  if (isPlainObject(v)) {
    for (const x of Object.values(v)) deepFreeze(x);
    Object.freeze(v);
  }
  return v;
}
