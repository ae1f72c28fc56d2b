import pino, { type Logger } from 'pino';

// Secret-bearing field names are censored wherever they appear, as a second
// line of defence: code never passes secrets to the logger in the first place.
const REDACT_PATHS = [
  'plaintext', 'ciphertext', 'plain', 'cipher', 'key', 'rootKey', 'material', 'password', 'token', 'apiKey', 'authorization',
  '*.plaintext', '*.ciphertext', '*.plain', '*.cipher', '*.key', '*.rootKey', '*.material', '*.password', '*.token', '*.apiKey', '*.authorization',
];

/**
 * stdout, written directly. Its errors are ignored: when the reader is gone
 * (EPIPE: a closed pipe, a stopped journal reader) logging must neither crash
 * the plugin nor keep it from stopping. (sonic-boom, pino's async writer,
 * retries a failed write forever while flushing at exit.)
 */
function stdoutDestination(): pino.DestinationStream {
  process.stdout.on('error', () => {});
  return process.stdout;
}

export function createLogger(opts: { level: string; name?: string; destination?: pino.DestinationStream }): Logger {
  return pino(
    {
      level: opts.level,
      name: opts.name ?? 'keyhaven',
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      formatters: { level: (label) => ({ level: label }) },
    },
    opts.destination ?? stdoutDestination(),
  );
}

export type { Logger };
