import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { KeyhavenError } from '../errors.js';
import { compactDuration, goDuration, parseDurationFlag, parseTimeFlag } from './duration.js';

describe('CLI durations', () => {
  it('parses compound durations', () => {
    assert.equal(parseDurationFlag('--x', '1h30m'), 5_400_000);
    assert.equal(parseDurationFlag('--x', '500ms'), 500);
    assert.equal(parseDurationFlag('--x', '30d'), 30 * 86_400_000);
    assert.equal(parseDurationFlag('--x', '2w'), 14 * 86_400_000);
    assert.equal(parseDurationFlag('--x', '1.5h'), 5_400_000);
    assert.equal(parseDurationFlag('--x', '1m30s250ms'), 90_250);
  });

  it('refuses what is not a duration, naming the flag', () => {
    for (const bad of ['', '5', 'abc', '-1h', '1 hour', '3m ago', '1h 30m', '1y', 'h', '1e3s', '0x10s']) {
      assert.throws(
        () => parseDurationFlag('--grace-period', bad),
        (e: unknown) => e instanceof KeyhavenError && e.code === 'invalid_argument' && e.message.startsWith('--grace-period must be a duration like 1h30m') && e.message.includes(JSON.stringify(bad)),
        bad,
      );
    }
  });

  it('applies bounds', () => {
    assert.throws(() => parseDurationFlag('--timeout', '0s'), /--timeout must be at least 1ms, not "0s"/);
    assert.equal(parseDurationFlag('--ttl', '0s', { minMs: 0 }), 0);
    assert.throws(() => parseDurationFlag('--timeout', '11m', { maxMs: 600_000 }), /--timeout must be at most 10m, not "11m"/);
  });

  it('--since takes a duration back from now or an ISO time', () => {
    const now = Date.parse('2026-12-07T12:00:00Z');
    assert.equal(parseTimeFlag('--since', '1h', now), '2026-12-07T11:00:00.000Z');
    assert.equal(parseTimeFlag('--since', '1h30m', now), '2026-12-07T10:30:00.000Z');
    assert.equal(parseTimeFlag('--since', '2026-01-31T00:00:00Z', now), '2026-01-31T00:00:00.000Z');
    assert.equal(parseTimeFlag('--since', '2026-01-31', now), '2026-01-31T00:00:00.000Z');
    // An offset is resolved to UTC, the form the log stores.
    assert.equal(parseTimeFlag('--since', '2026-01-31T02:00:00+02:00', now), '2026-01-31T00:00:00.000Z');
    for (const bad of ['yesterday', '2026-13-45', '31/01/2026', '1 hour', '2026-01-31T00:00:00Zjunk']) {
      assert.throws(() => parseTimeFlag('--since', bad, now), (e: unknown) => e instanceof KeyhavenError && e.message === `--since must be a duration like 1h30m or an ISO 8601 time, not ${JSON.stringify(bad)}`, bad);
    }
  });

  it('renders one-unit and Go forms', () => {
    assert.equal(compactDuration(5_400_000), '90m');
    assert.equal(compactDuration(86_400_000), '1d');
    assert.equal(compactDuration(36 * 3_600_000), '36h');
    assert.equal(compactDuration(1500), '1500ms');
    assert.equal(compactDuration(0), '0ms');
    assert.equal(goDuration(5_400_000), '1h30m');
    assert.equal(goDuration(86_400_000), '24h');
    assert.equal(goDuration(3000), '3s');
    assert.equal(goDuration(61_500), '1m1s500ms');
  });
});
