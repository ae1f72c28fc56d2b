import type { Logger } from '../log/logger.js';

/**
 * Runs until SIGTERM/SIGINT, then calls `close` (in-flight work finishes);
 * a second signal exits at once. Resolves with the exit code.
 */
export function serveUntilSignal(close: () => Promise<void>, logger: Logger): Promise<number> {
  return new Promise<number>((resolve) => {
    let stopping = false;
    const onSignal = (sig: NodeJS.Signals) => {
      if (stopping) {
        logger.warn({ signal: sig }, 'second signal: exiting now');
        logger.flush();
        process.exit(130);
      }
      stopping = true;
      logger.info({ signal: sig }, 'stopping: letting in-flight calls finish');
      close().then(
        () => resolve(0),
        (e: unknown) => {
          logger.error({ err: e }, 'error while stopping');
          resolve(1);
        },
      );
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
}
