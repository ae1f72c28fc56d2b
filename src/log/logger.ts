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

/** What an error becomes in a log line: {type, message, stack, code}, and its cause (a few levels). */
interface LoggedError {
  type: string;
  message: string;
  stack?: string;
  code?: string | number;
  cause?: LoggedError;
}

/**
 * The `err` serializer. Only these fields are kept: an error's other own
 * properties (a driver's query parameters, a client's request options) may
 * carry secrets that the redaction paths, one level deep, would not reach.
 * Plain objects with a message (provider errors passed as {code, message})
 * keep their message and code without a made-up type or an empty stack.
 */
export function serializeError(err: unknown, depth = 0): LoggedError | undefined {
  if (err === undefined || err === null) return undefined;
  if (typeof err !== 'object') return { type: typeof err, message: String(err) };
  const e = err as { name?: unknown; message?: unknown; stack?: unknown; code?: unknown; cause?: unknown };
  const out: LoggedError = {
    type: err instanceof Error ? (typeof e.name === 'string' && e.name !== 'Error' ? e.name : err.constructor.name) : 'object',
    message: typeof e.message === 'string' ? e.message : '',
  };
  if (typeof e.stack === 'string' && e.stack !== '') out.stack = e.stack;
  if (typeof e.code === 'string' || typeof e.code === 'number') out.code = e.code;
  if (e.cause !== undefined && depth < 3) out.cause = serializeError(e.cause, depth + 1);
  return out;
}

export function createLogger(opts: { level: string; name?: string; destination?: pino.DestinationStream }): Logger {
  return pino(
    {
      level: opts.level,
      name: opts.name ?? 'keyhaven',
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      serializers: { err: (e: unknown) => serializeError(e) },
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      formatters: { level: (label) => ({ level: label }) },
    },
    opts.destination ?? stdoutDestination(),
  );
}

export type { Logger };
