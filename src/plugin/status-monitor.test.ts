import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { KeyhavenError, type ErrorCode } from '../errors.js';
import type { KmsProvider, ProviderDecryptResult, ProviderEncryptResult } from './provider.js';
import { createStatusMonitor, type StatusMonitorOptions } from './status-monitor.js';

/** A provider test double: healthCheck does whatever `next` says and counts its calls. */
class ProviderDouble implements KmsProvider {
  readonly kind = 'double';
  readonly maxPlaintextBytes = 983;
  calls = 0;
  next: () => Promise<string> = async () => 'kid-1';

  healthCheck(): Promise<string> {
    this.calls += 1;
    return this.next();
  }

  answer(keyId: string): void {
    this.next = async () => keyId;
  }

  fail(e: unknown): void {
    this.next = async () => {
      throw e;
    };
  }

  /** Makes the next health checks wait until the returned functions settle them. */
  hold(): { resolve: (keyId: string) => void; reject: (e: unknown) => void } {
    let resolve!: (keyId: string) => void;
    let reject!: (e: unknown) => void;
    const p = new Promise<string>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    this.next = () => p;
    return { resolve, reject };
  }

  async encrypt(): Promise<ProviderEncryptResult> {
    throw new Error('not used');
  }

  async decrypt(): Promise<ProviderDecryptResult> {
    throw new Error('not used');
  }

  async close(): Promise<void> {}
}

type ChangeEvent = Parameters<NonNullable<StatusMonitorOptions['onChange']>>[0];

function setup(opts: { cacheTtlMs?: number; graceMs?: number } = {}) {
  const provider = new ProviderDouble();
  const clock = { t: 1_000_000 };
  const changes: ChangeEvent[] = [];
  const monitor = createStatusMonitor(provider, {
    cacheTtlMs: opts.cacheTtlMs ?? 5_000,
    graceMs: opts.graceMs ?? 60_000,
    now: () => clock.t,
    onChange: (e) => changes.push(e),
  });
  return { provider, clock, changes, monitor };
}

function rejectsWith(c: ErrorCode): (e: unknown) => true {
  return (e: unknown) => {
    assert.ok(e instanceof KeyhavenError, `expected a KeyhavenError, got ${String(e)}`);
    assert.equal(e.code, c, e.message);
    return true;
  };
}

const DEFINITIVE: ErrorCode[] = ['key_disabled', 'key_destroyed', 'not_found', 'unknown_key_id', 'permission_denied', 'unauthenticated', 'integrity', 'config_invalid', 'invalid_argument', 'failed_precondition', 'too_large', 'already_exists'];

describe('plugin/status-monitor with a provider double: caching', () => {
  it('answers the provider key_id, not degraded', async () => {
    const { monitor, provider } = setup();
    assert.equal(monitor.lastKeyId(), undefined);
    assert.deepEqual(await monitor.check(), { keyId: 'kid-1', degraded: false });
    assert.equal(provider.calls, 1);
    assert.equal(monitor.lastKeyId(), 'kid-1');
  });

  it('caches a result within cacheTtlMs: the health check runs once', async () => {
    const { monitor, provider, clock } = setup({ cacheTtlMs: 5_000 });
    await monitor.check();
    provider.answer('kid-2');
    clock.t += 1;
    assert.deepEqual(await monitor.check(), { keyId: 'kid-1', degraded: false });
    clock.t += 4_998; // 4999 ms after the first check
    assert.deepEqual(await monitor.check(), { keyId: 'kid-1', degraded: false });
    assert.equal(provider.calls, 1);
  });

  it('checks again once cacheTtlMs has passed', async () => {
    const { monitor, provider, clock } = setup({ cacheTtlMs: 5_000 });
    await monitor.check();
    provider.answer('kid-2');
    clock.t += 5_000;
    assert.deepEqual(await monitor.check(), { keyId: 'kid-2', degraded: false });
    assert.equal(provider.calls, 2);
  });

  it('with cacheTtlMs 0 every check asks the provider', async () => {
    const { monitor, provider } = setup({ cacheTtlMs: 0 });
    await monitor.check();
    await monitor.check();
    await monitor.check();
    assert.equal(provider.calls, 3);
  });

  it('caches an error within cacheTtlMs too', async () => {
    const { monitor, provider, clock } = setup();
    provider.fail(new KeyhavenError('key_disabled', 'disabled'));
    await assert.rejects(monitor.check(), rejectsWith('key_disabled'));
    provider.answer('kid-1');
    clock.t += 1_000;
    await assert.rejects(monitor.check(), rejectsWith('key_disabled'));
    assert.equal(provider.calls, 1);
  });

  it('concurrent checks share one health check (success)', async () => {
    const { monitor, provider } = setup();
    const held = provider.hold();
    const checks = Array.from({ length: 10 }, () => monitor.check());
    assert.equal(provider.calls, 1);
    held.resolve('kid-9');
    const results = await Promise.all(checks);
    for (const r of results) assert.deepEqual(r, { keyId: 'kid-9', degraded: false });
    assert.equal(provider.calls, 1);
  });

  it('concurrent checks share one health check (failure)', async () => {
    const { monitor, provider } = setup();
    const held = provider.hold();
    const checks = Array.from({ length: 10 }, () => monitor.check());
    held.reject(new KeyhavenError('key_disabled', 'disabled'));
    const settled = await Promise.allSettled(checks);
    for (const s of settled) {
      assert.equal(s.status, 'rejected');
      if (s.status === 'rejected') rejectsWith('key_disabled')(s.reason);
    }
    assert.equal(provider.calls, 1);
  });

  it('a check after an in-flight one settles (cache expired) asks again', async () => {
    const { monitor, provider, clock } = setup({ cacheTtlMs: 5_000 });
    const held = provider.hold();
    const first = monitor.check();
    held.resolve('kid-1');
    await first;
    clock.t += 5_000;
    provider.answer('kid-2');
    assert.deepEqual(await monitor.check(), { keyId: 'kid-2', degraded: false });
    assert.equal(provider.calls, 2);
  });
});

describe('plugin/status-monitor with a provider double: failures', () => {
  for (const c of DEFINITIVE) {
    it(`a definitive error (${c}) rejects at once even with a last good key`, async () => {
      const { monitor, provider, clock } = setup({ cacheTtlMs: 5_000, graceMs: 60_000 });
      await monitor.check();
      provider.fail(new KeyhavenError(c, 'no'));
      clock.t += 5_000;
      await assert.rejects(monitor.check(), rejectsWith(c));
      assert.equal(monitor.lastKeyId(), undefined, 'the last good key is forgotten');
    });
  }

  it('after a definitive error a transient one is not answered from the old key', async () => {
    const { monitor, provider, clock } = setup({ cacheTtlMs: 5_000, graceMs: 60_000 });
    await monitor.check();
    provider.fail(new KeyhavenError('key_disabled', 'disabled'));
    clock.t += 5_000;
    await assert.rejects(monitor.check(), rejectsWith('key_disabled'));
    provider.fail(new KeyhavenError('unavailable', 'down'));
    clock.t += 5_000;
    await assert.rejects(monitor.check(), rejectsWith('unavailable'));
  });

  it('a transient error (unavailable) answers the last good key_id, degraded, within graceMs', async () => {
    const { monitor, provider, clock } = setup({ cacheTtlMs: 5_000, graceMs: 60_000 });
    const start = clock.t;
    await monitor.check();
    provider.fail(new KeyhavenError('unavailable', 'storage down'));
    clock.t = start + 5_000;
    assert.deepEqual(await monitor.check(), { keyId: 'kid-1', degraded: true });
    clock.t = start + 30_000;
    assert.deepEqual(await monitor.check(), { keyId: 'kid-1', degraded: true });
    clock.t = start + 60_000; // exactly graceMs after the last success
    assert.deepEqual(await monitor.check(), { keyId: 'kid-1', degraded: true });
    assert.equal(provider.calls, 4);
    assert.equal(monitor.lastKeyId(), 'kid-1');
  });

  it('a transient error rejects once graceMs has passed since the last success', async () => {
    const { monitor, provider, clock } = setup({ cacheTtlMs: 5_000, graceMs: 60_000 });
    const start = clock.t;
    await monitor.check();
    provider.fail(new KeyhavenError('unavailable', 'storage down'));
    clock.t = start + 10_000;
    assert.deepEqual(await monitor.check(), { keyId: 'kid-1', degraded: true });
    clock.t = start + 60_001;
    await assert.rejects(monitor.check(), rejectsWith('unavailable'));
  });

  it('the grace period is measured from the last success, not from the last degraded answer', async () => {
    const { monitor, provider, clock } = setup({ cacheTtlMs: 5_000, graceMs: 20_000 });
    const start = clock.t;
    await monitor.check();
    provider.fail(new KeyhavenError('unavailable', 'down'));
    for (let t = 5_000; t <= 20_000; t += 5_000) {
      clock.t = start + t;
      assert.deepEqual(await monitor.check(), { keyId: 'kid-1', degraded: true }, `at +${t} ms`);
    }
    clock.t = start + 25_000;
    await assert.rejects(monitor.check(), rejectsWith('unavailable'));
  });

  it('a degraded answer is cached within cacheTtlMs', async () => {
    const { monitor, provider, clock } = setup({ cacheTtlMs: 5_000, graceMs: 60_000 });
    await monitor.check();
    provider.fail(new KeyhavenError('unavailable', 'down'));
    clock.t += 5_000;
    await monitor.check();
    clock.t += 1_000;
    assert.deepEqual(await monitor.check(), { keyId: 'kid-1', degraded: true });
    assert.equal(provider.calls, 2);
  });

  for (const c of ['unavailable', 'internal', 'audit_failed'] as const) {
    it(`with no last good key a ${c} error rejects`, async () => {
      const { monitor, provider } = setup();
      provider.fail(new KeyhavenError(c, 'no'));
      await assert.rejects(monitor.check(), rejectsWith(c));
      assert.equal(monitor.lastKeyId(), undefined);
    });
  }

  it('a thrown non-Keyhaven error counts as unavailable (transient) and its message is not exposed', async () => {
    const { monitor, provider, clock } = setup({ cacheTtlMs: 5_000, graceMs: 60_000 });
    provider.fail(new Error('connect ECONNREFUSED token=s3cr3t'));
    await assert.rejects(monitor.check(), (e: unknown) => {
      rejectsWith('unavailable')(e);
      assert.ok(!(e as Error).message.includes('s3cr3t'));
      return true;
    });
    provider.answer('kid-1');
    clock.t += 5_000;
    await monitor.check();
    provider.fail(new Error('boom'));
    clock.t += 5_000;
    assert.deepEqual(await monitor.check(), { keyId: 'kid-1', degraded: true });
  });

  it('recovers after a degraded period, after a rejection and after a definitive error', async () => {
    const { monitor, provider, clock } = setup({ cacheTtlMs: 5_000, graceMs: 10_000 });
    await monitor.check();
    provider.fail(new KeyhavenError('unavailable', 'down'));
    clock.t += 5_000;
    assert.equal((await monitor.check()).degraded, true);
    provider.answer('kid-1');
    clock.t += 5_000;
    assert.deepEqual(await monitor.check(), { keyId: 'kid-1', degraded: false });

    provider.fail(new KeyhavenError('unavailable', 'down'));
    clock.t += 20_000;
    await assert.rejects(monitor.check(), rejectsWith('unavailable'));
    provider.answer('kid-1');
    clock.t += 5_000;
    assert.deepEqual(await monitor.check(), { keyId: 'kid-1', degraded: false });

    provider.fail(new KeyhavenError('key_disabled', 'off'));
    clock.t += 5_000;
    await assert.rejects(monitor.check(), rejectsWith('key_disabled'));
    provider.answer('kid-2');
    clock.t += 5_000;
    assert.deepEqual(await monitor.check(), { keyId: 'kid-2', degraded: false });
    assert.equal(monitor.lastKeyId(), 'kid-2');
  });
});

describe('plugin/status-monitor with a provider double: onChange', () => {
  it('is called on the first key_id and on each change, not on repeats', async () => {
    const { monitor, provider, clock, changes } = setup({ cacheTtlMs: 1_000 });
    await monitor.check();
    assert.deepEqual(changes, [{ keyId: 'kid-1', previousKeyId: undefined, degraded: false }]);
    clock.t += 1_000;
    await monitor.check();
    assert.equal(changes.length, 1, 'same key_id: no call');
    provider.answer('kid-2');
    clock.t += 1_000;
    await monitor.check();
    assert.equal(changes.length, 2);
    assert.deepEqual(changes[1], { keyId: 'kid-2', previousKeyId: 'kid-1', degraded: false });
  });

  it('reports errors and degraded answers, and the key_id again after a failure', async () => {
    const { monitor, provider, clock, changes } = setup({ cacheTtlMs: 1_000, graceMs: 60_000 });
    await monitor.check();
    const down = new KeyhavenError('unavailable', 'down');
    provider.fail(down);
    clock.t += 1_000;
    await monitor.check();
    assert.deepEqual(changes[1], { keyId: 'kid-1', error: down, degraded: true });
    const off = new KeyhavenError('key_disabled', 'off');
    provider.fail(off);
    clock.t += 1_000;
    await assert.rejects(monitor.check());
    assert.deepEqual(changes[2], { error: off, degraded: false });
    provider.answer('kid-1');
    clock.t += 1_000;
    await monitor.check();
    assert.deepEqual(changes[3], { keyId: 'kid-1', previousKeyId: undefined, degraded: false });
  });

  it('is not called for answers served from the cache', async () => {
    const { monitor, changes, clock } = setup({ cacheTtlMs: 5_000 });
    await monitor.check();
    clock.t += 10;
    await monitor.check();
    await monitor.check();
    assert.equal(changes.length, 1);
  });
});
