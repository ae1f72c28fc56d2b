import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { describe, it } from 'node:test';
import { KeyhavenError } from '../errors.js';
import { createLogger, serializeError } from './logger.js';

function capture(): { lines: () => Array<Record<string, any>>; raw: () => string; destination: Writable } {
  let text = '';
  const destination = new Writable({
    write(chunk, _enc, cb) {
      text += String(chunk);
      cb();
    },
  });
  return { destination, raw: () => text, lines: () => text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, any>) };
}

describe('logger', () => {
  it('logs an error with its type, message, stack and code, and its cause', () => {
    const c = capture();
    const log = createLogger({ level: 'info', destination: c.destination });
    const cause = new TypeError('boom below');
    log.error({ err: new KeyhavenError('internal', 'boom', { cause }) }, 'unexpected');
    const [line] = c.lines();
    assert.equal(line!.err.type, 'KeyhavenError');
    assert.equal(line!.err.message, 'boom');
    assert.equal(line!.err.code, 'internal');
    assert.match(line!.err.stack, /^KeyhavenError: boom\n\s+at /);
    assert.equal(line!.err.cause.type, 'TypeError');
    assert.match(line!.err.cause.stack, /TypeError: boom below/);
  });

  it('keeps only the named fields of an error, and redaction still censors secret-bearing fields', () => {
    const c = capture();
    const log = createLogger({ level: 'info', destination: c.destination });
    const e = Object.assign(new Error('connection failed'), { config: { headers: { authorization: 'Bearer SECRET-IN-ERROR' } }, password: 'SECRET-PW' });
    log.error({ err: e, password: 'SECRET-FIELD', user: { apiKey: 'SECRET-KEY' } }, 'x');
    assert.doesNotMatch(c.raw(), /SECRET/);
    const [line] = c.lines();
    assert.equal(line!.password, '[redacted]');
    assert.equal(line!.user.apiKey, '[redacted]');
    assert.deepEqual(Object.keys(line!.err).sort(), ['message', 'stack', 'type']);
  });

  it('a plain {code, message} object keeps both, without a made-up stack', () => {
    assert.deepEqual(serializeError({ code: 'unavailable', message: 'down' }), { type: 'object', message: 'down', code: 'unavailable' });
    assert.deepEqual(serializeError('text'), { type: 'string', message: 'text' });
    assert.equal(serializeError(undefined), undefined);
  });

  it('a cause chain that loops ends after a few levels', () => {
    const a = new Error('a') as Error & { cause?: unknown };
    a.cause = a;
    let depth = 0;
    for (let e = serializeError(a); e; e = e.cause) depth++;
    assert.equal(depth, 4);
  });
});
