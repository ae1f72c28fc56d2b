import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { KeyhavenError, type ErrorCode } from '../../errors.js';
import { deadlineAfter } from './deadline.js';
import { ACCESS_REVOKED, asKeyhavenError, isTransient } from './error-class.js';
import { KeyGate } from './key-gate.js';

function manualClock(start = 1_000_000) {
  const c = { t: start, now: () => c.t, advance: (ms: number) => void (c.t += ms) };
  return c;
}

const refusal = (code: ErrorCode, re?: RegExp) => (e: unknown) => e instanceof KeyhavenError && e.code === code && (!re || re.test(e.message));

function gate(clock = manualClock(), onRefused?: (e: KeyhavenError) => void) {
  return { clock, g: new KeyGate({ service: 'the KMS', graceMs: 60_000, timeoutMs: 2_000, clock: clock.now, ...(onRefused ? { onRefused } : {}) }) };
}

describe('runtime: error classes', () => {
  it('transient failures are the ones Status rides out', () => {
    for (const c of ['unavailable', 'sealed', 'audit_failed', 'internal', 'too_many_attempts'] as const) assert.ok(isTransient(c), c);
    for (const c of ['permission_denied', 'unauthenticated', 'not_found', 'key_destroyed', 'key_disabled', 'integrity', 'invalid_argument', 'config_invalid'] as const) assert.ok(!isTransient(c), c);
    for (const c of ACCESS_REVOKED) assert.ok(!isTransient(c), c);
  });

  it('a foreign error becomes unavailable, its message kept out (it may quote a secret)', () => {
    const e = asKeyhavenError(new Error('token s3cr3t rejected'), 'the KMS health check failed');
    assert.equal(e.code, 'unavailable');
    assert.equal(e.message, 'the KMS health check failed');
    assert.ok(e.cause instanceof Error);
    const own = new KeyhavenError('key_disabled', 'off');
    assert.equal(asKeyhavenError(own, 'x'), own);
  });
});

describe('runtime: deadline', () => {
  it('is the start on the injected clock plus the timeout', () => {
    const c = manualClock(5_000);
    assert.equal(deadlineAfter(c.now, 2_000), 7_000);
    c.advance(1_000);
    assert.equal(deadlineAfter(c.now, 2_000), 8_000);
  });

  it('a health check gets one deadline, measured on the gate clock at its start', async () => {
    const { clock, g } = gate();
    const seen: number[] = [];
    await g.check(async (deadlineAt) => {
      seen.push(deadlineAt);
      clock.advance(1_500); // the check's steps share the deadline; it does not move with them
      seen.push(deadlineAt);
    });
    assert.deepEqual(seen, [1_002_000, 1_002_000]);
    assert.equal(g.deadline(), clock.now() + 2_000);
  });
});

describe('runtime: KeyGate (Encrypt gate and grace period)', () => {
  it('is closed until a check has confirmed the key', async () => {
    const { g } = gate();
    assert.throws(() => g.assertOpen(), refusal('unavailable', /the KMS has not confirmed the key yet/));
    await g.check(async () => 'ok');
    g.assertOpen();
  });

  it('stays open through transient failures for the grace period, counted from the last good check\'s start', async () => {
    const { clock, g } = gate();
    await g.check(async () => {
      clock.advance(500); // the check took 0.5 s: the grace period counts from its start
    });
    await assert.rejects(g.check(async () => Promise.reject(new KeyhavenError('unavailable', 'down'))), refusal('unavailable', /down/));
    clock.advance(59_500);
    g.assertOpen(); // exactly 60 s after the good check started
    clock.advance(1);
    assert.throws(() => g.assertOpen(), refusal('unavailable', /within the Status grace period/));
    await g.check(async () => {});
    g.assertOpen();
  });

  it('while checks succeed Encrypt never waits for one, however long ago the last was', async () => {
    const { clock, g } = gate();
    await g.check(async () => {});
    clock.advance(3_600_000);
    g.assertOpen();
  });

  it('a refusal closes it at once, with the refusal itself, until a good check', async () => {
    const refused: KeyhavenError[] = [];
    const { g } = gate(undefined, (e) => refused.push(e));
    await g.check(async () => {});
    const disabled = new KeyhavenError('key_disabled', 'key disabled by its admin');
    await assert.rejects(g.check(async () => Promise.reject(disabled)), (e) => e === disabled);
    assert.throws(() => g.assertOpen(), (e) => e === disabled);
    assert.deepEqual(refused, [disabled]);
    await g.check(async () => {});
    g.assertOpen();
  });

  it('a foreign error in a check is classified as transient, not thrown raw', async () => {
    const refused: KeyhavenError[] = [];
    const { g } = gate(undefined, (e) => refused.push(e));
    await g.check(async () => {});
    await assert.rejects(g.check(async () => Promise.reject(new TypeError('boom'))), refusal('unavailable', /^the KMS health check failed$/));
    g.assertOpen(); // within the grace period
    assert.equal(refused.length, 0);
  });

  it('lastSuccessAt is the start of the last good check', async () => {
    const { clock, g } = gate();
    assert.equal(g.lastSuccessAt, undefined);
    await g.check(async () => clock.advance(700));
    assert.equal(g.lastSuccessAt, 1_000_000);
    await g.check(async () => Promise.reject(new KeyhavenError('unavailable', 'x'))).catch(() => {});
    assert.equal(g.lastSuccessAt, 1_000_000);
  });
});
