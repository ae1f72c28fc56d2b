import type { Command } from 'commander';
import { loadServerConfig } from '../../config/server-config.js';
import { createLogger } from '../../log/logger.js';
import { serveUntilSignal } from '../signals.js';
import { startServer, type RunningServer } from '../../server/run-server.js';

export function registerServer(program: Command, run: (fn: () => Promise<number>) => void): void {
  program
    .command('server')
    .description('Run the key server (HTTP API under /v1)')
    .requiredOption('-c, --config <file>', 'server.yaml (see docs/server.md)')
    .option('--listen <host:port>', 'override listen')
    .option('--log-level <level>', 'override log.level')
    .addHelpText(
      'after',
      [
        '',
        'A keyfile or pkcs11 server unseals itself at start only. After keyhaven operator seal (an operator seal,',
        'kept in the database) it starts sealed, as does every server sharing the database, until a security-admin',
        'runs keyhaven operator unseal. /metrics labels crypto metrics with key ids (metrics.keyNames for names) and',
        'asks for a bearer token when metrics.tokenFile (mode 0600) is set.',
      ].join('\n'),
    )
    .action((flags: { config: string; listen?: string; logLevel?: string }) =>
      run(async () => {
        const cfg = loadServerConfig(flags.config, { listen: flags.listen, log: flags.logLevel ? { level: flags.logLevel } : undefined });
        const logger = createLogger({ level: cfg.log.level });
        const server: RunningServer = await startServer(cfg, logger);
        const code = await serveUntilSignal(() => server.close(), logger);
        await new Promise<void>((r) => logger.flush(() => r()));
        return code;
      }),
    );
}
