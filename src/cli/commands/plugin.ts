import type { Command } from 'commander';
import { loadPluginConfig, type PluginConfig } from '../../config/plugin-config.js';
import { createLogger, type Logger } from '../../log/logger.js';
import { startPlugin } from '../../plugin/run-plugin.js';
import { defaultDataDir } from '../data-dir.js';
import { serveUntilSignal } from '../signals.js';

interface PluginFlags {
  config?: string;
  socket?: string;
  socketMode?: string;
  socketGroup?: string;
  dataDir?: string;
  key?: string;
  rootKeyFile?: string;
  healthAddr?: string;
  logLevel?: string;
  statusCacheTtl?: string;
  gracePeriod?: string;
  v1beta1?: boolean;
}

function overridesFrom(f: PluginFlags): Record<string, unknown> {
  const provider: Record<string, unknown> = {};
  if (f.dataDir !== undefined) provider.dataDir = f.dataDir;
  if (f.key !== undefined) provider.key = f.key;
  if (f.rootKeyFile !== undefined) provider.rootKeyFile = f.rootKeyFile;
  if (!f.config) {
    provider.type = 'embedded';
    provider.dataDir ??= defaultDataDir();
  } else if (f.dataDir !== undefined || f.rootKeyFile !== undefined) {
    // Embedded-only flags; --key alone applies to whichever provider the file names.
    provider.type = 'embedded';
  }
  return {
    socket: f.socket,
    socketMode: f.socketMode,
    socketGroup: f.socketGroup,
    provider: Object.keys(provider).length > 0 ? provider : undefined,
    health: f.healthAddr !== undefined ? { address: f.healthAddr } : undefined,
    log: f.logLevel !== undefined ? { level: f.logLevel } : undefined,
    status: f.statusCacheTtl !== undefined || f.gracePeriod !== undefined ? { cacheTTL: f.statusCacheTtl, gracePeriod: f.gracePeriod } : undefined,
    v1beta1: f.v1beta1 === false ? false : undefined,
  };
}

async function servePlugin(cfg: Readonly<PluginConfig>, logger: Logger): Promise<number> {
  const plugin = await startPlugin(cfg, logger);
  const code = await serveUntilSignal(() => plugin.close(), logger);
  await new Promise<void>((r) => logger.flush(() => r()));
  return code;
}

export function registerPlugin(program: Command, run: (fn: () => Promise<number>) => void): void {
  program
    .command('plugin')
    .description('Serve the Kubernetes KMS API (v2 and v1beta1) on a unix socket')
    .addHelpText(
      'after',
      '\nProviders: with --data-dir (or no --config) the embedded key store. Others are set in plugin.yaml (provider.type):\n' +
        '  keyhaven      keyhaven key servers (docs/plugin-remote.md)\n' +
        '  vault         Vault/OpenBao Transit (docs/provider-vault.md)\n' +
        '  fortanix-dsm  Fortanix DSM / SmartKey (docs/provider-fortanix-dsm.md)\n' +
        '  aws-kms       AWS KMS (docs/provider-aws-kms.md)\n' +
        '  pkcs11        an AES key in a PKCS#11 HSM token (docs/provider-pkcs11.md)\n' +
        'Credentials (API keys, tokens, PINs) are read from files or environment variables, never from flags.',
    )
    .option('-c, --config <file>', 'plugin.yaml (flags override its fields)')
    .option('--socket <endpoint>', 'unix:///path/to.sock or unix:///@abstract-name (default unix:///run/keyhaven/kms.sock)')
    .option('--socket-mode <mode>', 'octal mode of the socket file (default 0600)')
    .option('--socket-group <group>', 'group name or gid to own the socket')
    .option('--data-dir <dir>', 'embedded key store folder (default $KEYHAVEN_DATA_DIR or ./.keyhaven)')
    .option('--key <name>', 'key to wrap with (default kubernetes-secrets)')
    .option('--root-key-file <file>', 'root key file (default <data-dir>/root.key)')
    .option('--health-addr <host:port>', 'address for /healthz, /livez, /metrics, or "off" (default 127.0.0.1:8787)')
    .option('--log-level <level>', 'fatal, error, warn, info, debug, trace or silent (default info)')
    .option('--status-cache-ttl <duration>', 'reuse a provider round trip this long (default 5s)')
    .option('--grace-period <duration>', 'keep answering the last good key_id this long while the provider is unreachable (default 5m)')
    .option('--no-v1beta1', 'do not serve the deprecated v1beta1 API')
    .action((flags: PluginFlags) =>
      run(async () => {
        const cfg = loadPluginConfig(flags.config, overridesFrom(flags));
        return servePlugin(cfg, createLogger({ level: cfg.log.level }));
      }),
    );
}
