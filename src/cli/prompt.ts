import { KeyhavenError } from '../errors.js';

const MAX_STDIN = 64 * 1024;

/** All of stdin (for --password-stdin, --share-stdin), bounded. */
export async function readStdin(what: string): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of process.stdin as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_STDIN) throw new KeyhavenError('invalid_argument', `${what} on stdin is larger than ${MAX_STDIN} bytes`);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** stdin with one trailing newline removed: `echo secret | keyhaven ...` works. */
export async function readStdinSecret(what: string): Promise<string> {
  const v = (await readStdin(what)).replace(/\r?\n$/, '');
  if (v.length === 0) throw new KeyhavenError('invalid_argument', `no ${what} on stdin`);
  return v;
}

export function canPrompt(): boolean {
  return process.stdin.isTTY === true && process.stderr.isTTY === true;
}

/**
 * Reads a line from the terminal; with `secret` nothing is echoed. The prompt
 * goes to stderr so stdout stays clean for --output json.
 */
export function promptLine(question: string, opts: { secret: boolean; noTty: string }): Promise<string> {
  if (!canPrompt()) throw new KeyhavenError('invalid_argument', opts.noTty);
  const stdin = process.stdin;
  process.stderr.write(question);
  return new Promise<string>((resolve, reject) => {
    let value = '';
    const done = (err?: KeyhavenError) => {
      stdin.off('data', onData);
      stdin.setRawMode(false);
      stdin.pause();
      process.stderr.write('\n');
      if (err) reject(err);
      else resolve(value);
    };
    const onData = (buf: Buffer) => {
      for (const ch of buf.toString('utf8')) {
        if (ch === '\r' || ch === '\n') return done();
        if (ch === '\u0003') return done(new KeyhavenError('invalid_argument', 'interrupted'));
        if (ch === '\u0004') return value.length === 0 ? done(new KeyhavenError('invalid_argument', 'no input')) : done();
        if (ch === '\u007f' || ch === '\b') {
          value = [...value].slice(0, -1).join('');
          if (!opts.secret) process.stderr.write('\b \b');
        } else if (ch >= ' ') {
          value += ch;
          if (!opts.secret) process.stderr.write(ch);
        }
      }
    };
    // Raw mode turns the terminal's echo off; a visible answer is echoed here.
    stdin.setRawMode(true);
    stdin.resume();
    stdin.on('data', onData);
  });
}

export function promptSecret(question: string, noTty: string): Promise<string> {
  return promptLine(question, { secret: true, noTty });
}
