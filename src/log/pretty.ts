import type { DestinationStream } from 'pino';
import pretty from 'pino-pretty';

/**
 * Readable log lines on stdout (keyhaven dev): level, time and message on one
 * line, the fields below it. Formatting runs after pino, so the redaction and
 * serializers of createLogger apply as in JSON. Colours only on a terminal.
 * Write errors are ignored for the reason stdoutDestination gives (logger.ts).
 */
export function prettyStdout(): DestinationStream {
  process.stdout.on('error', () => {});
  return pretty({
    destination: process.stdout,
    sync: true,
    colorize: process.stdout.isTTY === true,
    translateTime: 'SYS:HH:MM:ss.l',
    ignore: 'pid,hostname',
  });
}
