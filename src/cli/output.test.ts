import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { KeyhavenError } from '../errors.js';
import { relativeTime } from './output.js';
import { namingFlags } from './remote-command.js';

describe('CLI output helpers', () => {
  it('relativeTime shows ages and time to go', () => {
    const now = Date.parse('2026-12-07T12:00:00Z');
    assert.equal(relativeTime('2026-12-07T11:59:48Z', now), '12s ago');
    assert.equal(relativeTime('2026-12-07T11:57:00Z', now), '3m ago');
    assert.equal(relativeTime('2026-12-07T07:00:00Z', now), '5h ago');
    assert.equal(relativeTime('2026-12-05T11:00:00Z', now), '2d ago');
    assert.equal(relativeTime('2026-12-07T12:03:00Z', now), 'in 3m');
    assert.equal(relativeTime('2026-12-07T12:00:00Z', now), 'now');
    assert.equal(relativeTime(null, now), '-');
    assert.equal(relativeTime('not a time', now), 'not a time');
  });

  it('namingFlags names the flag behind a refused query or body field', async () => {
    const refuse = (m: string) => () => Promise.reject(new KeyhavenError('invalid_argument', m));
    await assert.rejects(
      namingFlags({ since: '--since', limit: '--lines' }, refuse('querystring.since: must be an ISO 8601 time such as 2026-01-31T12:00:00Z; querystring.limit: too big (request r1)')),
      (e: unknown) => e instanceof KeyhavenError && e.code === 'invalid_argument' && e.message === '--since: must be an ISO 8601 time such as 2026-01-31T12:00:00Z; --lines: too big (request r1)',
    );
    await assert.rejects(namingFlags({ ttlS: '--ttl' }, refuse('body.ttlS: too small')), { message: '--ttl: too small' });
    // Unknown fields and other errors pass through unchanged.
    await assert.rejects(namingFlags({ since: '--since' }, refuse('querystring.other: bad')), { message: 'querystring.other: bad' });
    const denied = new KeyhavenError('permission_denied', 'querystring.since: no');
    await assert.rejects(namingFlags({ since: '--since' }, () => Promise.reject(denied)), (e: unknown) => e === denied);
    assert.equal(await namingFlags({}, () => Promise.resolve(7)), 7);
  });
});
