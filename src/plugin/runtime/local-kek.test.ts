import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { KeyhavenError } from '../../errors.js';
import { LocalKekLifecycle, type WrappedKek } from './local-kek.js';

function manualClock(start = 1_000_000) {
  const c = { t: start, now: () => c.t, advance: (ms: number) => void (c.t += ms) };
  return c;
}

type Entry = { kek: Buffer; version: number };

function lifecycle(policy: Partial<{ maxUses: number; maxAgeMs: number; cacheSize: number }> = {}) {
  const clock = manualClock();
  const events = { lookups: [] as string[], sizes: [] as number[], rotated: [] as { keyId: string; reason: string }[] };
  const k = new LocalKekLifecycle<Entry, { version: number }>(
    { maxUses: 3, maxAgeMs: 60_000, cacheSize: 4, ...policy },
    { onKekLookup: (r) => events.lookups.push(r), onKekCacheSize: (n) => events.sizes.push(n), onKekRotated: (e) => events.rotated.push(e) },
    clock.now,
  );
  return { k, clock, events };
}

/** A stand-in KMS wrap: the wrapped form is the KEK reversed (enough to tell KEKs apart), tagged with the version. */
const wrap = (version: number) => async (kek: Buffer): Promise<WrappedKek<Entry, { version: number }>> => {
  const wrapped = Buffer.concat([Buffer.from(`v${version}:`), Buffer.from(kek).reverse()]);
  return { wrapped, keyId: `key@v${version}`, cacheKey: wrapped.toString('base64'), entry: { version }, extra: { version } };
};

const missing = () => new KeyhavenError('unavailable', 'no KEK');

describe('runtime: local KEK lifecycle', () => {
  it('a first KEK, then a new one after maxUses, after maxAge, and when the provider says the key changed', async () => {
    const { k, clock, events } = lifecycle();
    assert.equal(k.due(), 'first');
    const first = await k.rotate('first', wrap(1));
    assert.equal(k.current, first);
    assert.equal(k.due(), undefined);
    for (let i = 0; i < 3; i++) assert.equal(k.use(missing), first);
    assert.equal(k.due(), 'maxUses reached');
    await k.rotate('maxUses reached', wrap(1));
    clock.advance(60_000);
    assert.equal(k.due(), 'maxAge reached');
    await k.rotate('maxAge reached', wrap(1));
    assert.equal(k.due((c) => (c.version < 2 ? 'key rotated' : undefined)), 'key rotated');
    const v2 = await k.rotate('key rotated', wrap(2));
    assert.equal(v2.version, 2);
    assert.equal(v2.keyId, 'key@v2');
    assert.deepEqual(events.rotated.map((e) => e.reason), ['first', 'maxUses reached', 'maxAge reached', 'key rotated']);
  });

  it('the replaced KEK is zeroed; its cached copy still opens what it sealed', async () => {
    const { k } = lifecycle();
    const first = await k.rotate('first', wrap(1));
    const copy = Buffer.from(first.kek);
    await k.rotate('again', wrap(1));
    assert.ok(first.kek.equals(Buffer.alloc(32)));
    const cached = await k.lookup(first.wrapped.toString('base64'), 'j', async () => assert.fail('cached: no KMS call'));
    assert.ok(cached.kek.equals(copy));
  });

  it('a failed wrap keeps the current KEK and caches nothing', async () => {
    const { k } = lifecycle();
    const first = await k.rotate('first', wrap(1));
    let given: Buffer | undefined;
    await assert.rejects(
      k.rotate('again', async (kek) => {
        given = kek;
        throw new KeyhavenError('unavailable', 'KMS down');
      }),
      /KMS down/,
    );
    assert.equal(k.current, first);
    assert.ok(given!.equals(Buffer.alloc(32)), 'the unused KEK is zeroed');
    assert.equal(k.cachedCount, 1);
  });

  it('forget() while a new KEK is being wrapped: that KEK never becomes current, is zeroed and cached nowhere', async () => {
    const { k } = lifecycle();
    await k.rotate('first', wrap(1));
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let given: Buffer | undefined;
    const rotating = k.rotate('again', async (kek) => {
      given = kek;
      await gate;
      return wrap(2)(kek);
    });
    k.forget();
    release();
    await assert.rejects(rotating, /access to the key was withdrawn/);
    assert.equal(k.current, undefined);
    assert.equal(k.cachedCount, 0);
    assert.ok(given!.equals(Buffer.alloc(32)), 'the unused KEK is zeroed');
    assert.equal(k.due(), 'first');
  });

  it('use() refuses without a KEK, with the provider\'s error', () => {
    const { k } = lifecycle();
    assert.throws(() => k.use(missing), /no KEK/);
  });

  it('concurrent lookups of one unknown KEK share one unwrap; later ones hit the cache', async () => {
    const { k, events } = lifecycle();
    let calls = 0;
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const unwrap = async (): Promise<Entry> => {
      calls += 1;
      await gate;
      return { kek: Buffer.alloc(32, 7), version: 1 };
    };
    const all = Array.from({ length: 50 }, () => k.lookup('w1', 'w1', unwrap));
    release();
    const got = await Promise.all(all);
    assert.equal(calls, 1);
    assert.ok(got.every((e) => e === got[0]));
    assert.deepEqual(events.lookups.slice(0, 2), ['miss', 'joined']);
    assert.equal(events.lookups.filter((r) => r === 'joined').length, 49);
    await k.lookup('w1', 'w1', unwrap);
    assert.equal(calls, 1);
    assert.equal(events.lookups.at(-1), 'hit');
  });

  it('a failed unwrap is not cached: the next lookup asks again', async () => {
    const { k } = lifecycle();
    let calls = 0;
    const failing = async (): Promise<Entry> => {
      calls += 1;
      throw new KeyhavenError('unavailable', 'KMS down');
    };
    await assert.rejects(k.lookup('w', 'w', failing), /KMS down/);
    await assert.rejects(k.lookup('w', 'w', failing), /KMS down/);
    assert.equal(calls, 2);
  });

  it('forget() drops and zeroes every KEK; an unwrap in flight answers its callers but keeps nothing', async () => {
    const { k, events } = lifecycle();
    const first = await k.rotate('first', wrap(1));
    const cached = await k.lookup(first.wrapped.toString('base64'), 'x', async () => assert.fail('cached'));
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const inflight = k.lookup('w2', 'w2', async () => {
      await gate;
      return { kek: Buffer.alloc(32, 9), version: 1 };
    });
    k.forget();
    assert.equal(k.current, undefined);
    assert.ok(first.kek.equals(Buffer.alloc(32)));
    assert.ok(cached.kek.equals(Buffer.alloc(32)));
    release();
    assert.equal((await inflight).kek[0], 9);
    assert.equal(k.cachedCount, 0);
    assert.equal(events.sizes.at(-1), 0);
    assert.throws(() => k.use(missing), /no KEK/);
    assert.equal(k.due(), 'first');
  });

  it('dropWhere() drops the KEKs of retired versions only', async () => {
    const { k } = lifecycle();
    await k.rotate('first', wrap(1));
    const v2 = await k.rotate('key rotated', wrap(2));
    k.dropWhere((e) => e.version < 2);
    assert.equal(k.cachedCount, 1);
    await k.lookup(v2.wrapped.toString('base64'), 'x', async () => assert.fail('v2 is still cached'));
  });

  it('the cache keeps at most cacheSize KEKs', async () => {
    const { k } = lifecycle({ cacheSize: 2, maxUses: 1_000 });
    for (let i = 0; i < 5; i++) await k.rotate('again', wrap(1));
    assert.equal(k.cachedCount, 2);
  });
});
