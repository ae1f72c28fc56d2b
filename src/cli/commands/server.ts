import type { Command } from 'commander';
import { loadServerConfig } from '../../config/server-config.js';
import { createLogger, type Logger } from '../../log/logger.js';
import { startServer, type RunningServer } from '../../server/run-server.js';

/** Runs until SIGTERM/SIGINT, then closes; a second signal exits at once. */
export function serveUntilSignal(close: () => Promise<void>, logger: Logger): Promise<number> {
  return new Promise<number>((resolve) => {
    let stopping = false;
    const onSignal = (sig: NodeJS.Signals) => {
      if (stopping) {
        logger.warn({ signal: sig }, 'second signal: exiting now');
        process.exit(130);
      }
      stopping = true;
      logger.info({ signal: sig }, 'stopping');
      close().then(
        () => resolve(0),
        (e: unknown) => {
          logger.error({ err: String(e) }, 'error while stopping');
          resolve(1);
        },
      );
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
}

export function registerServer(program: Command, run: (fn: () => Promise<number>) => void): void {
  program
    .command('server')
    .description('Run the key server (HTTP API under /v1)')
    .requiredOption('-c, --config <file>', 'server.yaml (see docs/server.md)')
    .option('--listen <host:port>', 'override listen')
    .option('--log-level <level>', 'override log.level')
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
