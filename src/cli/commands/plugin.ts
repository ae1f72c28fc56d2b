import type { Command } from 'commander';
import { compactDuration, parseDurationFlag } from '../duration.js';
import { loadPluginConfig, type PluginConfig } from '../../config/plugin-config.js';
import { createLogger, type Logger } from '../../log/logger.js';
import { startPlugin } from '../../plugin/run-plugin.js';
import type { PluginStatusReport } from '../../plugin/status-client.js';
import { defaultDataDir } from '../data-dir.js';
import { printable, printData, type OutputFormat } from '../output.js';
import { serveUntilSignal } from '../signals.js';
import { parseOutput } from '../store-command.js';

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

const DEFAULT_SOCKET = 'unix:///run/keyhaven/kms.sock';
const MAX_STATUS_TIMEOUT_MS = 10 * 60_000;

function parseTimeout(v: string): number {
  return parseDurationFlag('--timeout', v, { maxMs: MAX_STATUS_TIMEOUT_MS });
}

/** A config duration flag ("1h30m") in the one-unit form plugin.yaml takes ("90m"). */
const configDuration = (flag: string) => (v: string) => compactDuration(parseDurationFlag(flag, v, { minMs: 0 }));

function printStatus(r: PluginStatusReport): void {
  const rows: [string, string][] = [['socket', r.socket]];
  if ('error' in r.v2) rows.push(['v2 Status', `FAILED: ${r.v2.error.code}: ${r.v2.error.message}`]);
  else rows.push(['v2 Status', `version ${r.v2.version}, healthz ${r.v2.healthz}`], ['key_id', r.v2.keyId || '(empty)']);
  if (r.v1beta1 === null) rows.push(['v1beta1', 'not served']);
  else if ('error' in r.v1beta1) rows.push(['v1beta1 Version', `FAILED: ${r.v1beta1.error.code}: ${r.v1beta1.error.message}`]);
  else rows.push(['v1beta1 Version', r.v1beta1.version], ['runtime', `${r.v1beta1.runtimeName} ${r.v1beta1.runtimeVersion}`.trim()]);
  rows.push(['healthy', r.healthy ? 'yes' : 'NO: the apiserver cannot write with this plugin']);
  const width = Math.max(...rows.map(([k]) => k.length)) + 1;
  // Everything but the labels came from the socket: shown with control characters escaped.
  process.stdout.write(rows.map(([k, v]) => `${`${k}:`.padEnd(width)} ${printable(v)}`).join('\n') + '\n');
}

export function registerPlugin(program: Command, run: (fn: () => Promise<number>) => void): void {
  const plugin = program
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
    .option('--status-cache-ttl <duration>', 'reuse a provider round trip this long, e.g. 5s or 1m30s (default 5s)', configDuration('--status-cache-ttl'))
    .option('--grace-period <duration>', 'keep answering the last good key_id this long while the provider is unreachable, e.g. 5m or 1h30m (default 5m)', configDuration('--grace-period'))
    .option('--no-v1beta1', 'do not serve the deprecated v1beta1 API')
    .action((flags: PluginFlags) =>
      run(async () => {
        const cfg = loadPluginConfig(flags.config, overridesFrom(flags));
        return servePlugin(cfg, createLogger({ level: cfg.log.level }));
      }),
    );

  plugin
    .command('status')
    .description('Ask a running KMS plugin over its socket what the apiserver hears: v2 Status (version, healthz, key_id) and v1beta1 Version')
    .addHelpText(
      'after',
      '\nExit code 0 when Status answers healthz "ok" with a key_id, 1 when it fails or is not ok; 3 when the socket does not exist.\n' +
        'Works with any KMS plugin. After "keyhaven key rotate", key_id changes within the Status cache TTL.',
    )
    .option('--socket <endpoint>', `unix:///path/to.sock or unix:///@abstract-name (default ${DEFAULT_SOCKET})`)
    .option('--timeout <duration>', 'deadline of the calls (default 5s)', parseTimeout)
    .option('-o, --output <format>', 'text, json or yaml', parseOutput, 'text' as OutputFormat)
    .action((flags: { socket?: string; timeout?: number; output: OutputFormat }) =>
      run(async () => {
        // Loaded here: serving needs every provider, asking needs only gRPC.
        const { queryPluginStatus } = await import('../../plugin/status-client.js');
        const r = await queryPluginStatus(flags.socket ?? DEFAULT_SOCKET, flags.timeout ?? 5000);
        if (flags.output !== 'text') printData(r, flags.output);
        else printStatus(r);
        return r.healthy ? 0 : 1;
      }),
    );
}
