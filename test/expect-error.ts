import assert from 'node:assert/strict';
import { KeyhavenError, type ErrorCode } from '../src/errors.js';

/** For assert.throws/rejects: a KeyhavenError with this code (and a message matching `pattern`). */
export function code(c: ErrorCode, pattern?: RegExp): (e: unknown) => true {
  return (e: unknown) => {
    assert.ok(e instanceof KeyhavenError, `expected a KeyhavenError, got ${String(e)}`);
    assert.equal(e.code, c, `expected ${c}, got ${e.code}: ${e.message}`);
    if (pattern) assert.match(e.message, pattern);
    return true;
  };
}

/** The KeyhavenError a promise rejects with (fails if it resolves, or rejects with anything else). */
export async function caught(p: Promise<unknown>): Promise<KeyhavenError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof KeyhavenError, `expected a KeyhavenError, got ${String(e)}`);
    return e;
  }
  return assert.fail('expected the call to reject');
}
