import { randomBytes } from 'node:crypto';
import { loadPluginConfig, parsePluginConfig, type KeyhavenProviderConfig, type PluginConfig } from '../config/plugin-config.js';
import { KeyhavenError } from '../errors.js';
import type { RecoveryKeys } from '../k8s/recover.js';
import { createLogger } from '../log/logger.js';
import { apiKeySource, createKeyServerClient } from '../plugin/key-server-client.js';
import { createPluginMetrics } from '../plugin/metrics.js';
import { deadlineOptions, readConfigFile, readTlsFiles } from '../plugin/providers/http-client-wiring.js';
import { buildProvider } from '../plugin/providers/registry.js';
import { reportApprovalFiled, type ApprovalView } from './remote-command.js';

export interface RecoveryKeyFlags {
  pluginConfig?: string;
  dataDir?: string;
  keyName?: string;
  reason?: string;
  recovery?: string;
}

export interface OpenedRecoveryKeys {
  readonly keys: RecoveryKeys;
  /** Set when the key server filed an approval request instead of opening the recovery: prints it, gives the exit code. */
  readonly pending?: () => number;
  /** Tells the key server how the recovery ended (audited); a no-op elsewhere. */
  finish(stats: { objects?: number; failed?: number }): Promise<void>;
  close(): Promise<void>;
}

const REASON = /^[^\x00-\x1f\x7f]{1,500}$/;

/** The recovery's own record on the key server: opened (or filed for approval) with the operator's reason. */
async function openServerRecovery(p: KeyhavenProviderConfig, reason: string): Promise<{ id: string } | { approval: ApprovalView; id: string }> {
  const client = serverClient(p);
  try {
    // 201: the recovery; 202: {approval, recovery} waiting for the quorum.
    const r = await client.post<{ id?: unknown; approval?: ApprovalView; recovery?: { id?: unknown } }>('recovery', '/v1/recoveries', { reason, cluster: p.cluster });
    const id = r.approval ? r.recovery?.id : r.id;
    if (typeof id !== 'string') throw new KeyhavenError('unavailable', 'the key server answered the recovery request without an id');
    return r.approval ? { approval: r.approval, id } : { id };
  } finally {
    await client.close();
  }
}

/** A recovery named with --recovery must be open: a pending or ended one would only fail object by object. */
async function checkServerRecovery(p: KeyhavenProviderConfig, id: string): Promise<void> {
  if (!/^[0-9a-f]{16}$/.test(id)) throw new KeyhavenError('invalid_argument', `--recovery must be a recovery id (16 hex digits), not ${JSON.stringify(id.slice(0, 40))}`);
  const client = serverClient(p);
  try {
    const r = await client.request<{ state?: unknown; expiresAt?: unknown }>('GET', 'recovery', `/v1/recoveries/${id}`, undefined);
    if (r.state !== 'open') {
      const why = r.state === 'pending' ? 'still waiting for approval' : `${String(r.state)}; open a new one with --reason`;
      throw new KeyhavenError('failed_precondition', `recovery ${id} is ${why}`);
    }
  } finally {
    await client.close();
  }
}

function serverClient(p: KeyhavenProviderConfig, recoveryId?: string) {
  const apiKey = apiKeySource(p.apiKeyFile ? { file: p.apiKeyFile } : { env: p.apiKeyEnv! }, (f) => readConfigFile(f, 'API key file', true));
  return createKeyServerClient({ servers: p.servers, tls: readTlsFiles(p.tls), apiKey, cluster: p.cluster, ...deadlineOptions(p), ...(recoveryId ? { recoveryId } : {}) });
}

/**
 * The keys a recovery decrypts with: any plugin provider, built from a
 * plugin.yaml or for an embedded store. Through the key server the recovery
 * is opened first (audited, with the reason, perhaps under a quorum) and every
 * call names it.
 */
export async function openRecoveryKeys(f: RecoveryKeyFlags): Promise<OpenedRecoveryKeys> {
  let cfg: Readonly<PluginConfig>;
  if (f.pluginConfig !== undefined) cfg = loadPluginConfig(f.pluginConfig, {});
  else cfg = parsePluginConfig({ provider: { type: 'embedded', dataDir: f.dataDir, ...(f.keyName ? { key: f.keyName } : {}) }, log: { level: 'silent' } }, '--data-dir');
  if (f.reason !== undefined && !REASON.test(f.reason)) throw new KeyhavenError('invalid_argument', '--reason must be 1 to 500 characters without control characters');

  let recoveryId: string | undefined = f.recovery;
  let serverProvider: KeyhavenProviderConfig | undefined;
  if (cfg.provider.type === 'keyhaven') {
    serverProvider = cfg.provider;
    if (recoveryId === undefined) {
      if (f.reason === undefined) throw new KeyhavenError('invalid_argument', 'a recovery through the key server needs --reason "…" (it is recorded in the audit log)');
      const opened = await openServerRecovery(cfg.provider, f.reason);
      if ('approval' in opened) {
        const { approval, id } = opened;
        return {
          keys: { unwrapV1: () => Promise.reject(new Error('pending')), unwrapV2: () => Promise.reject(new Error('pending')) },
          pending: () => {
            reportApprovalFiled({ approval }, 'text');
            process.stdout.write(`recovery ${id} opens once approved; then run this command again with --recovery ${id}\n`);
            return 0;
          },
          finish: async () => {},
          close: async () => {},
        };
      }
      recoveryId = opened.id;
    } else {
      await checkServerRecovery(cfg.provider, recoveryId);
    }
  } else if (f.recovery !== undefined) {
    throw new KeyhavenError('invalid_argument', '--recovery names a key server recovery; this provider is not the key server');
  }

  // Errors go to stderr as log lines only at warn and above; the provider logs no value.
  const logger = createLogger({ level: 'warn', name: 'recover', destination: process.stderr as never });
  const closeRecovery = async (stats: { objects?: number; failed?: number }) => {
    if (!serverProvider || !recoveryId) return;
    const client = serverClient(serverProvider, recoveryId);
    try {
      await client.post('recovery', `/v1/recoveries/${encodeURIComponent(recoveryId)}/close`, stats);
    } catch (e) {
      // The run's result stands; a recovery left open expires on its own (1 h). Say so.
      process.stderr.write(`keyhaven: warning: could not close recovery ${recoveryId} on the key server: ${e instanceof KeyhavenError ? e.message : 'unexpected error'}\n`);
    } finally {
      await client.close();
    }
  };
  let provider;
  try {
    ({ provider } = await buildProvider({ cfg, logger, metrics: createPluginMetrics(), ...(recoveryId ? { recoveryId } : {}) }));
  } catch (e) {
    await closeRecovery({});
    throw e;
  }
  const uid = recoveryId ? `recovery-${recoveryId}`.slice(0, 128) : `recovery-${randomBytes(8).toString('hex')}`;
  return {
    keys: {
      unwrapV2: async (keyId, src, annotations) => (await provider.decrypt(src, keyId, annotations, { uid })).plaintext,
      unwrapV1: async (dek) => (await provider.decrypt(dek, undefined, {}, { uid })).plaintext,
    },
    finish: closeRecovery,
    close: () => provider.close(),
  };
}
