import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { KeyhavenError } from '../errors.js';
import { openSqliteStore } from '../storage/sqlite.js';
import type { Store } from '../storage/store.js';
import { createAuditLog, verifyStore } from './audit-log.js';
import { checkCheckpoints, checkpointHash, parseCheckpoint, signCheckpoint, ZERO_PREV, type Checkpoint } from './checkpoint.js';
import { verifyWithWitness } from './checkpoint-verify.js';
import { checkpointFile, startCheckpointer, type CheckpointWitness } from './checkpointer.js';
import { ownedTempDir } from '../../test/reaper.js';

const KEY = Buffer.alloc(32, 9);
const HEAD_KEY = Buffer.alloc(32, 7);
let root: string;
let n = 0;
const stores: Store[] = [];

before(() => {
  root = ownedTempDir('kh-cp-');
});
afterEach(async () => {
  for (const s of stores.splice(0)) await s.close().catch(() => {});
});
after(() => rmSync(root, { recursive: true, force: true }));

async function newStore(): Promise<{ store: Store; path: string }> {
  n += 1;
  const path = join(root, `case-${n}`, 'keyhaven.db');
  const store = await openSqliteStore({ path, create: true });
  stores.push(store);
  await store.setMeta('store_id', 'abcd1234');
  return { store, path };
}

function memoryWitness(): CheckpointWitness & { got: Checkpoint[] } {
  const got: Checkpoint[] = [];
  return { got, write: async (c) => void got.push(c), close: async () => {} };
}

const cp = (seq: number, prev = ZERO_PREV, key = KEY) => signCheckpoint(key, { store: 'abcd1234', seq, hash: 'a'.repeat(64), time: '2026-01-01T00:00:00.000Z', prev });
const entries = (cs: Checkpoint[], file = 'w') => cs.map((value, i) => ({ at: `${file}:${i + 1}`, value }));

describe('checkpoints', () => {
  it('the MAC covers every field; the hash chains them', () => {
    const c = cp(5);
    assert.deepEqual(Object.keys(c), ['v', 'store', 'seq', 'hash', 'time', 'prev', 'mac']);
    for (const edit of [{ seq: 6 }, { hash: 'b'.repeat(64) }, { store: 'abcd1235' }, { time: '2026-01-01T00:00:01.000Z' }, { prev: '1'.repeat(64) }]) {
      const { anchors, failures } = checkCheckpoints(KEY, 'abcd1234', entries([{ ...c, ...edit }]), () => 'w');
      assert.deepEqual(anchors, []);
      assert.equal(failures[0]?.problem, 'signature', JSON.stringify(edit));
    }
    const other = checkCheckpoints(Buffer.alloc(32, 1), 'abcd1234', entries([c]), () => 'w');
    assert.equal(other.failures[0]?.problem, 'signature', 'another root key');
    assert.notEqual(checkpointHash(c), checkpointHash(cp(5, '1'.repeat(64))));
  });

  it('links: each names the one before, or zeros; a missing one is reported except at the start of a source', () => {
    const a = cp(1);
    const b = cp(2, checkpointHash(a));
    const c = cp(3, checkpointHash(b));
    assert.deepEqual(checkCheckpoints(KEY, 'abcd1234', entries([a, b, c]), () => 'w').failures, []);
    const gap = checkCheckpoints(KEY, 'abcd1234', entries([a, c]), () => 'w').failures;
    assert.equal(gap.length, 1);
    assert.equal(gap[0]!.problem, 'link');
    assert.equal(gap[0]!.seq, 3);
    // A rotated file starting mid-chain.
    assert.deepEqual(checkCheckpoints(KEY, 'abcd1234', entries([b, c]), () => 'w').failures, []);
    // Another store's checkpoint.
    assert.equal(checkCheckpoints(KEY, 'ffff', entries([a]), () => 'w').failures[0]!.problem, 'store');
  });

  it('parseCheckpoint refuses what is not one', () => {
    const good = cp(1);
    assert.deepEqual(parseCheckpoint(JSON.parse(JSON.stringify(good))), good);
    for (const [bad, msg] of [
      [null, /object/],
      [{ ...good, v: 2 }, /version/],
      [{ ...good, seq: 0 }, /seq/],
      [{ ...good, seq: '1' }, /seq/],
      [{ ...good, hash: 'A'.repeat(64) }, /hash/],
      [{ ...good, time: 'yesterday' }, /time/],
      [{ ...good, mac: '' }, /mac/],
      [{ ...good, extra: 1 }, /unknown field/],
    ] as const) {
      const r = parseCheckpoint(bad);
      assert.equal(typeof r, 'string');
      assert.match(r as string, msg);
    }
  });
});

describe('verify against anchors and a witness', () => {
  async function filled(count: number) {
    const s = await newStore();
    const log = createAuditLog(s.store, { headKey: HEAD_KEY });
    for (let i = 0; i < count; i++) await log.record({ actor: 'user:a', operation: 'key.read', result: 'ok' });
    await log.flush();
    return { ...s, log };
  }

  it('the chain must reach and match every anchor: truncated, diverged, wiped', async () => {
    const { store, path } = await filled(20);
    const rows = await store.readAudit(0, 100);
    const at = (seq: number, hash = rows[seq - 1]!.hash) => ({ at: `w:${seq}`, seq, hash, what: 'checkpoint' as const });
    assert.equal((await verifyStore(store, HEAD_KEY, { anchors: [at(5), at(20)] })).ok, true);
    const diverged = await verifyStore(store, HEAD_KEY, { anchors: [at(5, 'e'.repeat(64))] });
    assert.equal(diverged.ok, false);
    assert.equal(diverged.anchorFailures?.[0]?.problem, 'diverged');
    assert.equal(diverged.firstBroken?.seq, 5);
    const cut = await verifyStore(store, HEAD_KEY, { anchors: [at(20), { ...at(20), seq: 25 }] });
    assert.equal(cut.anchorFailures?.[0]?.problem, 'truncated');
    assert.match(cut.firstBroken!.reason, /ends at record 20.*names record 25/);
    const db = new BetterSqlite3(path);
    db.exec("delete from audit; delete from meta where name = 'audit_head'");
    db.close();
    const wiped = await verifyStore(store, HEAD_KEY, { anchors: [at(20)] });
    assert.equal(wiped.anchorFailures?.[0]?.problem, 'wiped');
  });

  it('verifyWithWitness: signed checkpoints from the checkpointer verify; the same witness over a rolled-back copy does not', async () => {
    const { store, path, log } = await filled(10);
    const w = memoryWitness();
    const cper = startCheckpointer({ store, witnesses: [w], every: 5, intervalMs: 60_000, onError: (e) => assert.fail(String(e)) });
    cper.unsealed(Buffer.from(KEY), 'abcd1234');
    await cper.emitNow();
    for (let i = 0; i < 5; i++) await log.record({ actor: 'user:a', operation: 'key.read', result: 'ok' });
    await log.flush();
    await cper.stop();
    assert.deepEqual(w.got.map((c) => c.seq), [10, 15]);
    assert.equal(w.got[1]!.prev, checkpointHash(w.got[0]!));
    const verify = () => verifyWithWitness((anchors) => verifyStore(store, HEAD_KEY, { anchors }), 'abcd1234', KEY, { checkpoints: entries(w.got) });
    assert.equal((await verify()).ok, true);
    const db = new BetterSqlite3(path);
    db.prepare('delete from audit where seq > 10').run();
    db.close();
    const r = await verify();
    assert.equal(r.ok, false);
    assert.deepEqual(r.witness.failures.map((f) => [f.problem, f.seq]), [['truncated', 15]]);
  });
});

describe('checkpointer', () => {
  it('every N records, soon after a change, none without the key, a last one on seal and stop', async () => {
    const { store } = await newStore();
    const log = createAuditLog(store, { headKey: HEAD_KEY });
    const w = memoryWitness();
    const cper = startCheckpointer({ store, witnesses: [w], every: 3, intervalMs: 60_000, changeDelayMs: 10, onError: (e) => assert.fail(String(e)) });
    log.onStored(cper.stored);
    await log.record({ actor: 'user:a', operation: 'x', result: 'ok' });
    await cper.emitNow();
    assert.equal(w.got.length, 0, 'no key, no checkpoint');
    cper.unsealed(Buffer.from(KEY), 'abcd1234');
    for (let i = 0; i < 3; i++) await log.record({ actor: 'user:a', operation: 'x', result: 'ok' });
    const waitFor = async (seq: number) => {
      for (let i = 0; !w.got.some((c) => c.seq >= seq); i++) {
        if (i > 3000) assert.fail(`no checkpoint at record ${seq}`);
        await new Promise((r) => setTimeout(r, 5));
      }
    };
    await waitFor(3);
    // A key change (recordIn) is anchored without waiting for N records or the interval.
    await store.transaction((tx) => log.recordIn(tx, { actor: 'user:a', operation: 'key.create', result: 'ok' }));
    await waitFor(5);
    await log.record({ actor: 'user:a', operation: 'x', result: 'ok' });
    await log.flush();
    await cper.sealing();
    assert.equal(w.got.at(-1)!.seq, 6, 'sealing writes a last checkpoint');
    await log.record({ actor: 'user:a', operation: 'x', result: 'ok' });
    await log.flush();
    await cper.emitNow();
    assert.equal(w.got.at(-1)!.seq, 6, 'sealed: none');
    cper.unsealed(Buffer.from(KEY), 'abcd1234');
    await cper.stop();
    assert.equal(w.got.at(-1)!.seq, 7, 'stop writes a last checkpoint');
    for (let i = 1; i < w.got.length; i++) assert.equal(w.got[i]!.prev, checkpointHash(w.got[i - 1]!));
  });

  it('a witness that fails gets the checkpoint on the next attempt; every witness still links up', async () => {
    const { store } = await newStore();
    const log = createAuditLog(store, { headKey: HEAD_KEY });
    await log.record({ actor: 'user:a', operation: 'x', result: 'ok' });
    await log.flush();
    const good = memoryWitness();
    let fail = true;
    const flaky = memoryWitness();
    const errors: unknown[] = [];
    const cper = startCheckpointer({
      store,
      witnesses: [good, { ...flaky, write: async (c) => (fail ? Promise.reject(new Error('disk full')) : flaky.write(c)) }],
      every: 100,
      intervalMs: 60_000,
      onError: (e) => errors.push(e),
    });
    cper.unsealed(Buffer.from(KEY), 'abcd1234');
    await cper.emitNow();
    assert.equal(errors.length, 1);
    fail = false;
    await cper.emitNow();
    await log.record({ actor: 'user:a', operation: 'x', result: 'ok' });
    await log.flush();
    await cper.stop();
    assert.deepEqual(flaky.got.map((c) => c.seq), [1, 2]);
    assert.deepEqual(good.got.map((c) => c.seq), [1, 1, 2]);
    for (const w of [good, flaky]) assert.deepEqual(checkCheckpoints(KEY, 'abcd1234', entries(w.got), () => 'w').failures, []);
  });

  it('checkpoint file: 0600, fsynced lines, continues the chain after a restart, refuses a file others can read', async () => {
    const { store } = await newStore();
    const log = createAuditLog(store, { headKey: HEAD_KEY });
    await log.record({ actor: 'user:a', operation: 'x', result: 'ok' });
    await log.flush();
    const path = join(root, 'cp.jsonl');
    const f1 = checkpointFile(path);
    assert.equal(f1.last, undefined);
    const c1 = startCheckpointer({ store, witnesses: [f1.witness], every: 100, intervalMs: 60_000, onError: (e) => assert.fail(String(e)) });
    c1.unsealed(Buffer.from(KEY), 'abcd1234');
    await c1.stop();
    assert.equal(statSync(path).mode & 0o777, 0o600);
    await log.record({ actor: 'user:a', operation: 'x', result: 'ok' });
    await log.flush();
    const f2 = checkpointFile(path);
    assert.equal(f2.last?.seq, 1);
    const c2 = startCheckpointer({ store, witnesses: [f2.witness], every: 100, intervalMs: 60_000, last: f2.last, onError: (e) => assert.fail(String(e)) });
    c2.unsealed(Buffer.from(KEY), 'abcd1234');
    await c2.stop();
    const lines = readFileSync(path, 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as { checkpoint: Checkpoint }).checkpoint);
    assert.deepEqual(lines.map((c) => c.seq), [1, 2]);
    assert.equal(lines[1]!.prev, checkpointHash(lines[0]!));
    const loose = join(root, 'loose.jsonl');
    writeFileSync(loose, '');
    chmodSync(loose, 0o644);
    assert.throws(() => checkpointFile(loose), (e: unknown) => e instanceof KeyhavenError && e.code === 'config_invalid' && /chmod 600/.test(e.message));
  });
});

describe('without a witness', () => {
  it('an initialised store with no head, fewer records than its head, or no records fails; a deleted head is not re-signed', async () => {
    const { store, path } = await newStore();
    await store.barrierPut('sys/canary', Buffer.from('x'));
    assert.equal((await verifyStore(store)).ok, false, 'initialised, no records');
    const log = createAuditLog(store, { headKey: HEAD_KEY });
    for (let i = 0; i < 5; i++) await log.record({ actor: 'user:a', operation: 'x', result: 'ok' });
    await log.flush();
    assert.equal((await verifyStore(store)).ok, true);
    const db = new BetterSqlite3(path);
    db.prepare('delete from audit where seq > 3').run();
    let r = await verifyStore(store);
    assert.equal(r.ok, false);
    assert.match(r.firstBroken!.reason, /records 4 to 5 were deleted/);
    db.exec("delete from meta where name = 'audit_head'");
    db.close();
    for (const key of [undefined, HEAD_KEY]) {
      r = await verifyStore(store, key);
      assert.equal(r.ok, false);
      assert.match(r.firstBroken!.reason, /signed chain head is missing/);
    }
    const again = createAuditLog(store, {});
    assert.equal(await again.adoptHeadKey(HEAD_KEY, true), false, 'a store signed before: a missing head is a deleted one');
    await again.record({ actor: 'user:a', operation: 'x', result: 'ok' });
    await again.flush();
    assert.equal((await verifyStore(store, HEAD_KEY)).ok, false, 'still reported after more records');
    assert.equal(await createAuditLog(store, {}).adoptHeadKey(HEAD_KEY, false), true, 'a first unseal (init) signs');
  });
});
