import { join } from 'node:path';
import type { Command } from 'commander';
import { DEFAULT_KEY_NAME, parsePluginConfig } from '../../config/plugin-config.js';
import { renderEncryptionConfig } from '../../k8s/encryption-config.js';
import { createLogger } from '../../log/logger.js';
import { startPlugin } from '../../plugin/run-plugin.js';
import { defaultDataDir } from '../data-dir.js';
import { ensureStore } from './init.js';
import { runUntilSignal } from './plugin.js';

export function registerDev(program: Command, run: (fn: () => Promise<number>) => void): void {
  program
    .command('dev')
    .description('Create ./.keyhaven if absent and run the KMS plugin on it, printing the EncryptionConfiguration to use')
    .option('--data-dir <dir>', 'state folder (default $KEYHAVEN_DATA_DIR or ./.keyhaven)')
    .option('--health-addr <host:port>', 'address for /healthz, /livez, /metrics', '127.0.0.1:8787')
    .option('--log-level <level>', 'log level', 'info')
    .action((flags: { dataDir?: string; healthAddr: string; logLevel: string }) =>
      run(async () => {
        const dataDir = flags.dataDir ?? defaultDataDir();
        const socket = `unix://${join(dataDir, 'kms.sock')}`;
        const cfg = parsePluginConfig(
          { socket, provider: { type: 'embedded', dataDir, key: DEFAULT_KEY_NAME }, health: { address: flags.healthAddr }, log: { level: flags.logLevel } },
          'keyhaven dev',
        );
        const state = await ensureStore(dataDir, DEFAULT_KEY_NAME);
        const logger = createLogger({ level: cfg.log.level });
        const plugin = await startPlugin(cfg, logger);
        const h = plugin.health;
        const where = h ? `http://${h.address.includes(':') ? `[${h.address}]` : h.address}:${h.port}` : undefined;
        const banner = [
          '',
          `keyhaven dev: KMS plugin serving on ${socket}`,
          `  state:   ${dataDir} (${state.created ? 'created now' : 'reused'}; root.key, keyhaven.db)`,
          `  key:     ${DEFAULT_KEY_NAME}`,
          where ? `  health:  ${where}/healthz   liveness: ${where}/livez   metrics: ${where}/metrics` : '  health:  off',
          `  manage:  ./bin/keyhaven key list | rotate ${DEFAULT_KEY_NAME} | disable ${DEFAULT_KEY_NAME} | enable ${DEFAULT_KEY_NAME}`,
          '',
          'EncryptionConfiguration for kube-apiserver (--encryption-provider-config):',
          '',
          renderEncryptionConfig({ name: 'keyhaven', endpoint: socket, timeout: '3s' }),
          'Press Ctrl-C to stop.',
          '',
        ].join('\n');
        process.stderr.write(banner);
        return runUntilSignal(plugin, logger).then(async (code) => {
          await new Promise<void>((r) => logger.flush(() => r()));
          return code;
        });
      }),
    );
}
