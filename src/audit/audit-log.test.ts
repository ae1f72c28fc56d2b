import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { KeyhavenError } from '../errors.js';
import { openSqliteStore } from '../storage/sqlite.js';
import { GENESIS_HASH, type AuditDraft, type AuditRow, type Store } from '../storage/store.js';
import { createAuditLog, verifyStore, type AuditEvent } from './audit-log.js';
import { linkRecord, verifyRecords } from './chain.js';
import { ownedTempDir } from '../../test/reaper.js';

let root: string;
let n = 0;
const HEAD_KEY = Buffer.alloc(32, 7);
const openStores: Store[] = [];
const rawDbs: BetterSqlite3.Database[] = [];

before(() => {
  root = ownedTempDir('kh-audit-');
});

afterEach(async () => {
  for (const db of rawDbs.splice(0)) if (db.open) db.close();
  for (const s of openStores.splice(0)) await s.close().catch(() => {});
});

after(() => {
  rmSync(root, { recursive: true, force: true });
});

function newPath(): string {
  n += 1;
  return join(root, `case-${n}`, 'keyhaven.db');
}

async function open(path: string, create = true): Promise<Store> {
  const s = await openSqliteStore({ path, create });
  openStores.push(s);
  return s;
}

/** A raw connection to the same file, as a tamperer (or another process) would have. */
function raw(path: string): BetterSqlite3.Database {
  const db = new BetterSqlite3(path);
  rawDbs.push(db);
  return db;
}

/**
 * Wraps a store to record the size of every appendAudit batch, inside
 * transactions too. It offers no file to a writer thread, so batches go
 * through appendAudit on the store's own connection.
 */
function counting(store: Store): { store: Store; batches: number[] } {
  const batches: number[] = [];
  const wrap = (s: Store): Store => {
    const w = Object.create(s) as Store;
    Object.defineProperty(w, 'auditFile', { value: undefined });
    w.appendAudit = (drafts, link, opts) => {
      batches.push(drafts.length);
      return s.appendAudit(drafts, link, opts);
    };
    w.transaction = (fn) => s.transaction((tx) => fn(tx === s ? w : wrap(tx)));
    return w;
  };
  return { store: wrap(store), batches };
}

function event(i: number, extra: Partial<AuditEvent> = {}): AuditEvent {
  return {
    actor: `app:${i % 3}`,
    operation: i % 2 === 0 ? 'encrypt' : 'decrypt',
    keyName: 'kubernetes-secrets',
    keyVersion: 1 + (i % 4),
    result: 'ok',
    requestId: `req-${i}`,
    details: { uid: `uid-${i}`, bytes: 32, v2: true },
    ...extra,
  };
}

async function allRows(store: Store): Promise<AuditRow[]> {
  return store.readAudit(0, 1_000_000);
}

/** A store at a fresh path holding `count` records written through the audit log. */
async function seeded(count: number): Promise<{ path: string; store: Store }> {
  const path = newPath();
  const store = await open(path);
  const log = createAuditLog(store, { headKey: HEAD_KEY });
  await Promise.all(Array.from({ length: count }, (_, i) => log.record(event(i + 1))));
  const v = await verifyStore(store, HEAD_KEY);
  assert.deepEqual(v, { ok: true, records: count }, 'the seeded chain verifies before tampering');
  return { path, store };
}

function assertChain(rows: AuditRow[], count: number): void {
  assert.equal(rows.length, count);
  let prev = GENESIS_HASH;
  rows.forEach((r, i) => {
    assert.equal(r.seq, i + 1, 'consecutive seq');
    assert.equal(r.prev_hash, prev, `record ${r.seq} links to the previous one`);
    assert.equal(r.hash, linkRecord(prev, r.seq, r), `record ${r.seq} hash`);
    assert.match(r.hash, /^[0-9a-f]{64}$/);
    prev = r.hash;
  });
}

function auditFailed(e: unknown): true {
  assert.ok(e instanceof KeyhavenError, `expected a KeyhavenError, got ${String(e)}`);
  assert.equal(e.code, 'audit_failed', e.message);
  return true;
}

const COLUMNS = ['time', 'actor', 'operation', 'key_name', 'key_version', 'result', 'request_id', 'details', 'prev_hash', 'hash'] as const;

describe('audit/audit-log: writing (real SQLite file)', () => {
  it('stores the event fields, with null for absent ones and details as JSON', async () => {
    const store = await open(newPath());
    const log = createAuditLog(store, { headKey: HEAD_KEY });
    await log.record({ actor: 'alice', operation: 'key.create', keyName: 'k1', keyVersion: 1, result: 'ok', requestId: 'r1', details: { a: 1, b: 'x', c: false } });
    await log.record({ actor: 'bob', operation: 'login', result: 'permission_denied' });
    const [a, b] = await allRows(store);
    assert.ok(a && b);
    assert.equal(a.actor, 'alice');
    assert.equal(a.operation, 'key.create');
    assert.equal(a.key_name, 'k1');
    assert.equal(a.key_version, 1);
    assert.equal(a.result, 'ok');
    assert.equal(a.request_id, 'r1');
    assert.deepEqual(JSON.parse(a.details!), { a: 1, b: 'x', c: false });
    assert.ok(!Number.isNaN(Date.parse(a.time)));
    assert.equal(new Date(a.time).toISOString(), a.time);
    assert.equal(b.key_name, null);
    assert.equal(b.key_version, null);
    assert.equal(b.request_id, null);
    assert.equal(b.details, null);
    assert.equal(b.result, 'permission_denied');
    assertChain([a, b], 2);
  });

  it('concurrent record() calls all land in one group commit, with consecutive seq and an intact chain', async () => {
    const base = await open(newPath());
    const { store, batches } = counting(base);
    const log = createAuditLog(store, { headKey: HEAD_KEY });
    const count = 200;
    const results = await Promise.allSettled(Array.from({ length: count }, (_, i) => log.record(event(i))));
    assert.ok(results.every((r) => r.status === 'fulfilled'));
    assert.deepEqual(batches, [count], 'one transaction carried every record');
    const rows = await allRows(base);
    assertChain(rows, count);
    // Each request's record is there exactly once.
    assert.deepEqual(new Set(rows.map((r) => r.request_id)).size, count);
    assert.deepEqual(await verifyStore(base, HEAD_KEY), { ok: true, records: count });
  });

  it('splits a burst into batches of maxBatch, in order', async () => {
    const base = await open(newPath());
    const { store, batches } = counting(base);
    const log = createAuditLog(store, { headKey: HEAD_KEY, maxBatch: 10 });
    await Promise.all(Array.from({ length: 95 }, (_, i) => log.record(event(i))));
    assert.deepEqual(batches, [10, 10, 10, 10, 10, 10, 10, 10, 10, 5]);
    const rows = await allRows(base);
    assertChain(rows, 95);
    assert.deepEqual(
      rows.map((r) => r.request_id),
      Array.from({ length: 95 }, (_, i) => `req-${i}`),
      'records keep the order record() was called in',
    );
  });

  it('records arriving while a batch is being written join the next batch', async () => {
    const base = await open(newPath());
    const { store, batches } = counting(base);
    const log = createAuditLog(store, { headKey: HEAD_KEY });
    const first = Array.from({ length: 5 }, (_, i) => log.record(event(i)));
    // Let the first batch start, then add more while it is in flight.
    await new Promise((r) => setImmediate(r));
    const second = Array.from({ length: 7 }, (_, i) => log.record(event(100 + i)));
    await Promise.all([...first, ...second]);
    assert.equal(batches.reduce((a, b) => a + b, 0), 12);
    assert.equal(batches[0], 5);
    assertChain(await allRows(base), 12);
  });

  it('sequential records chain across transactions', async () => {
    const store = await open(newPath());
    const log = createAuditLog(store, { headKey: HEAD_KEY });
    for (let i = 0; i < 5; i++) await log.record(event(i));
    const rows = await allRows(store);
    assertChain(rows, 5);
    assert.equal(rows[0]!.prev_hash, GENESIS_HASH);
  });

  it('on a SQLite store, records are written by the writer thread: group commit, consecutive seq, signed head, durable before they resolve', async () => {
    const path = newPath();
    const store = await open(path);
    assert.ok(store.auditFile, 'a SQLite store offers its file to the writer thread');
    const log = createAuditLog(store, { headKey: HEAD_KEY, fsync: true });
    const stored: number[] = [];
    log.onStored((last) => stored.push(last.seq));
    const first = Array.from({ length: 30 }, (_, i) => log.record(event(i)));
    await Promise.all(first);
    // Resolved means committed: another connection sees every record at once.
    const peek = raw(path);
    assert.equal((peek.prepare('select count(*) as n from audit').get() as { n: number }).n, 30);
    // A change written meanwhile on the store's own connection moves the tail; the thread links after it.
    await store.transaction((tx) => log.recordIn(tx, event(100, { operation: 'key.rotate' })));
    await Promise.all(Array.from({ length: 20 }, (_, i) => log.record(event(200 + i))));
    await log.flush();
    assertChain(await allRows(store), 51);
    assert.deepEqual(await verifyStore(store, HEAD_KEY), { ok: true, records: 51 });
    assert.ok(stored.length > 0 && stored[stored.length - 1] === 51, 'listeners hear of the last record');
  });

  it('close() ends the writer thread: closing the store then merges the write-ahead log, as a clean stop always did', async () => {
    const path = newPath();
    const store = await open(path);
    const log = createAuditLog(store, { headKey: HEAD_KEY, fsync: true });
    await Promise.all(Array.from({ length: 50 }, (_, i) => log.record(event(i))));
    await log.close();
    await store.close();
    // A copy of the database file alone (no -wal beside it) holds every record.
    assert.equal(existsSync(`${path}-wal`), false, 'the -wal file was merged and removed');
    const copy = raw(path);
    assert.equal((copy.prepare('select count(*) as n from audit').get() as { n: number }).n, 50);
  });

  it('a batch handed to the writer before the head key is dropped commits by flush(), so a head deleted afterwards stays deleted', async () => {
    // As init run again does: drop the key, flush, then a transaction deletes the head signed with it.
    const store = await open(newPath());
    const log = createAuditLog(store, { headKey: HEAD_KEY, fsync: true });
    await store.transaction((tx) => log.recordIn(tx, event(1)));
    const inflight = log.record(event(2));
    await new Promise((r) => setImmediate(r)); // the batch is now with the writer thread, with HEAD_KEY
    log.setHeadKey(undefined);
    await log.flush();
    await store.transaction(async (tx) => {
      await tx.deleteMeta('audit_head');
      await log.recordIn(tx, event(3, { operation: 'sys.init' }));
    });
    await inflight;
    await log.flush();
    assert.equal(await store.getMeta('audit_head'), undefined, 'no head signed with the dropped key after the deletion');
    const other = Buffer.alloc(32, 9);
    assert.equal(await log.adoptHeadKey(other, false), true, 'a new key adopts the unsigned chain');
    await log.record(event(4));
    await log.flush();
    assert.deepEqual(await verifyStore(store, other), { ok: true, records: 4 });
  });

  it('on a closed SQLite store, record() rejects with audit_failed (the writer thread is not used)', async () => {
    const store = await open(newPath());
    const log = createAuditLog(store, { headKey: HEAD_KEY, fsync: true });
    await log.record(event(1));
    await store.close();
    await assert.rejects(log.record(event(2)), auditFailed);
  });

  it('flush() waits for every pending record', async () => {
    const store = await open(newPath());
    const log = createAuditLog(store, { headKey: HEAD_KEY });
    const pending = Array.from({ length: 20 }, (_, i) => log.record(event(i)));
    await log.flush();
    assert.equal((await allRows(store)).length, 20);
    await Promise.all(pending);
    await log.flush(); // nothing pending: resolves
  });

  it('rows persist after closing and reopening the file, and the chain continues', async () => {
    const path = newPath();
    const s1 = await openSqliteStore({ path, create: true });
    const log1 = createAuditLog(s1, { headKey: HEAD_KEY });
    await Promise.all(Array.from({ length: 30 }, (_, i) => log1.record(event(i))));
    const before = await allRows(s1);
    await s1.close();

    const s2 = await open(path, false);
    const after = await allRows(s2);
    assert.deepEqual(after, before);
    assert.deepEqual(await verifyStore(s2, HEAD_KEY), { ok: true, records: 30 });

    const log2 = createAuditLog(s2, { headKey: HEAD_KEY });
    await log2.record(event(999));
    const rows = await allRows(s2);
    assertChain(rows, 31);
    assert.equal(rows[30]!.prev_hash, before[29]!.hash);
  });

  it('the database file is created with mode 0600', async () => {
    const path = newPath();
    await open(path);
    assert.equal(statSync(path).mode & 0o777, 0o600);
  });

  it('opening a file that is not a SQLite database is config_invalid naming the file', async () => {
    const path = newPath();
    mkdirSync(join(path, '..'), { recursive: true });
    writeFileSync(path, 'not a database; '.repeat(512));
    for (const create of [false, true]) {
      await assert.rejects(openSqliteStore({ path, create }), (e: unknown) => {
        assert.ok(e instanceof KeyhavenError, `expected a KeyhavenError, got ${String(e)}`);
        assert.equal(e.code, 'config_invalid');
        assert.ok(e.message.includes(path), e.message);
        return true;
      });
    }
  });

  it('opening a missing file without create is config_invalid', async () => {
    const path = newPath();
    await assert.rejects(openSqliteStore({ path, create: false }), (e: unknown) => e instanceof KeyhavenError && e.code === 'config_invalid');
  });

  it('two stores on the same file (two processes) append to one chain', async () => {
    const path = newPath();
    const a = await open(path);
    const b = await open(path, false);
    const logA = createAuditLog(a, { headKey: HEAD_KEY });
    const logB = createAuditLog(b, { headKey: HEAD_KEY });
    for (let i = 0; i < 6; i++) await (i % 2 === 0 ? logA : logB).record(event(i));
    assertChain(await allRows(a), 6);
    assert.deepEqual(await verifyStore(b, HEAD_KEY), { ok: true, records: 6 });
  });
});

describe('audit/audit-log: failing closed', () => {
  it('record() on a closed store rejects with audit_failed', async () => {
    const path = newPath();
    const store = await openSqliteStore({ path, create: true });
    const log = createAuditLog(store, { headKey: HEAD_KEY });
    await log.record(event(1));
    await store.close();
    await assert.rejects(log.record(event(2)), auditFailed);
    await log.flush();
  });

  it('every record of a batch whose write fails rejects with audit_failed, and none of them is stored', async () => {
    const path = newPath();
    const store = await open(path);
    const log = createAuditLog(store, { headKey: HEAD_KEY });
    await log.record(event(1));
    // A write failure in the middle of a batch (a trigger stands in for a full disk).
    raw(path).exec(`create trigger audit_poison before insert on audit when new.actor = 'poison' begin select raise(abort, 'simulated write failure'); end`);
    const batch = [log.record(event(2)), log.record(event(3, { actor: 'poison' })), log.record(event(4))];
    const settled = await Promise.allSettled(batch);
    for (const s of settled) {
      assert.equal(s.status, 'rejected');
      if (s.status === 'rejected') {
        auditFailed(s.reason);
        assert.ok((s.reason as KeyhavenError).cause !== undefined, 'the storage error is kept as the cause');
        assert.ok(!(s.reason as KeyhavenError).message.includes('simulated'), 'the storage message is not exposed');
      }
    }
    assertChain(await allRows(store), 1);

    // The log keeps working once storage recovers.
    raw(path).exec('drop trigger audit_poison');
    await log.record(event(5));
    const rows = await allRows(store);
    assertChain(rows, 2);
    assert.equal(rows[1]!.request_id, 'req-5');
  });

  it('record() rejects with audit_failed when the audit table is gone', async () => {
    const path = newPath();
    const store = await open(path);
    const log = createAuditLog(store, { headKey: HEAD_KEY });
    raw(path).exec('drop table audit');
    await assert.rejects(log.record(event(1)), auditFailed);
  });
});

describe('audit/audit-log: verify detects tampering (real SQLite file)', () => {
  const COUNT = 10;

  it('an intact chain verifies, through verifyStore and AuditLog.verify', async () => {
    const { store } = await seeded(COUNT);
    assert.deepEqual(await verifyStore(store, HEAD_KEY), { ok: true, records: COUNT });
    assert.deepEqual(await createAuditLog(store, { headKey: HEAD_KEY }).verify(), { ok: true, records: COUNT });
  });

  it('an empty log verifies with zero records', async () => {
    const store = await open(newPath());
    assert.deepEqual(await verifyStore(store, HEAD_KEY), { ok: true, records: 0 });
  });

  const editable: Array<[string, string | number]> = [
    ['time', '2000-01-01T00:00:00.000Z'],
    ['actor', 'mallory'],
    ['operation', 'noop'],
    ['key_name', 'other-key'],
    ['key_version', 99],
    ['result', 'permission_denied'],
    ['request_id', 'forged'],
    ['details', '{"uid":"forged"}'],
  ];
  for (const [column, value] of editable) {
    it(`an edit of ${column} in record 4 is reported at seq 4`, async () => {
      const { path, store } = await seeded(COUNT);
      const changed = raw(path).prepare(`update audit set ${column} = ? where seq = 4`).run(value).changes;
      assert.equal(changed, 1);
      const v = await verifyStore(store, HEAD_KEY);
      assert.equal(v.ok, false);
      assert.equal(v.firstBroken?.seq, 4);
      assert.match(v.firstBroken!.reason, /edited/);
      assert.equal(v.records, 3, 'three records verified before the broken one');
    });
  }

  it('setting a nullable field to null is detected', async () => {
    const { path, store } = await seeded(COUNT);
    raw(path).prepare('update audit set details = null where seq = 7').run();
    const v = await verifyStore(store, HEAD_KEY);
    assert.equal(v.firstBroken?.seq, 7);
  });

  it('an edit of a stored hash is reported at that record', async () => {
    const { path, store } = await seeded(COUNT);
    raw(path).prepare(`update audit set hash = ? where seq = 6`).run('f'.repeat(64));
    const v = await verifyStore(store, HEAD_KEY);
    assert.equal(v.ok, false);
    assert.equal(v.firstBroken?.seq, 6);
  });

  it('an edit of a stored prev_hash is reported at that record', async () => {
    const { path, store } = await seeded(COUNT);
    raw(path).prepare(`update audit set prev_hash = ? where seq = 6`).run('e'.repeat(64));
    const v = await verifyStore(store, HEAD_KEY);
    assert.equal(v.firstBroken?.seq, 6);
    assert.match(v.firstBroken!.reason, /previous-hash link/);
  });

  it('an edit whose hash is recomputed is still caught at the next record', async () => {
    const { path, store } = await seeded(COUNT);
    const db = raw(path);
    const row = db.prepare('select * from audit where seq = 4').get() as AuditRow;
    const forged: AuditRow = { ...row, result: 'permission_denied' };
    db.prepare('update audit set result = ?, hash = ? where seq = 4').run(forged.result, linkRecord(row.prev_hash, 4, forged));
    const v = await verifyStore(store, HEAD_KEY);
    assert.equal(v.ok, false);
    assert.equal(v.firstBroken?.seq, 5);
    assert.match(v.firstBroken!.reason, /previous-hash link/);
  });

  it('a deletion in the middle is reported at the record after the gap', async () => {
    const { path, store } = await seeded(COUNT);
    assert.equal(raw(path).prepare('delete from audit where seq = 5').run().changes, 1);
    const v = await verifyStore(store, HEAD_KEY);
    assert.equal(v.ok, false);
    assert.equal(v.firstBroken?.seq, 6);
    assert.match(v.firstBroken!.reason, /expected record 5, found 6/);
    assert.equal(v.records, 4);
  });

  it('a deletion of the first record is reported at seq 2', async () => {
    const { path, store } = await seeded(COUNT);
    raw(path).prepare('delete from audit where seq = 1').run();
    const v = await verifyStore(store, HEAD_KEY);
    assert.equal(v.ok, false);
    assert.equal(v.firstBroken?.seq, 2);
    assert.equal(v.records, 0);
  });

  it('a deletion with renumbering (seq closed up) is reported at the record after the gap', async () => {
    const { path, store } = await seeded(COUNT);
    const db = raw(path);
    db.prepare('delete from audit where seq = 5').run();
    // Close the gap: 6..10 become 5..9 (negate first to dodge the primary key).
    db.exec('update audit set seq = -(seq - 1) where seq > 5; update audit set seq = -seq where seq < 0;');
    assert.deepEqual((db.prepare('select seq from audit order by seq').all() as Array<{ seq: number }>).map((r) => r.seq), [1, 2, 3, 4, 5, 6, 7, 8, 9]);
    const v = await verifyStore(store, HEAD_KEY);
    assert.equal(v.ok, false);
    assert.equal(v.firstBroken?.seq, 5);
  });

  it('a reordering (two rows swap their contents) is reported at the earlier one', async () => {
    const { path, store } = await seeded(COUNT);
    const db = raw(path);
    const get = db.prepare('select * from audit where seq = ?');
    const a = get.get(3) as AuditRow;
    const b = get.get(6) as AuditRow;
    const set = db.prepare(`update audit set ${COLUMNS.map((c) => `${c} = @${c}`).join(', ')} where seq = @seq`);
    db.transaction(() => {
      set.run({ ...b, seq: 3 });
      set.run({ ...a, seq: 6 });
    })();
    const v = await verifyStore(store, HEAD_KEY);
    assert.equal(v.ok, false);
    assert.equal(v.firstBroken?.seq, 3);
  });

  it('a reordering of two adjacent records is detected', async () => {
    const { path, store } = await seeded(COUNT);
    const db = raw(path);
    db.exec('update audit set seq = -1 where seq = 7; update audit set seq = 7 where seq = 8; update audit set seq = 8 where seq = -1;');
    const v = await verifyStore(store, HEAD_KEY);
    assert.equal(v.ok, false);
    assert.equal(v.firstBroken?.seq, 7);
  });

  it('an insertion with a correctly computed hash is caught at the record after it', async () => {
    const { path, store } = await seeded(COUNT);
    const db = raw(path);
    // Make room at seq 4, then insert a forged record linked to record 3.
    db.exec('update audit set seq = -(seq + 1) where seq >= 4; update audit set seq = -seq where seq < 0;');
    const prev = (db.prepare('select hash from audit where seq = 3').get() as { hash: string }).hash;
    const draft: AuditDraft = { time: new Date().toISOString(), actor: 'mallory', operation: 'decrypt', key_name: 'kubernetes-secrets', key_version: 1, result: 'ok', request_id: 'forged', details: null };
    const forged: AuditRow = { ...draft, seq: 4, prev_hash: prev, hash: linkRecord(prev, 4, draft) };
    db.prepare(`insert into audit (seq, ${COLUMNS.join(', ')}) values (@seq, ${COLUMNS.map((c) => `@${c}`).join(', ')})`).run(forged);
    const v = await verifyStore(store, HEAD_KEY);
    assert.equal(v.ok, false);
    assert.equal(v.firstBroken?.seq, 5, 'the forged record links, the one after it does not');
    assert.equal(v.records, 4);
  });

  it('an insertion with an arbitrary hash is caught at the inserted record', async () => {
    const { path, store } = await seeded(COUNT);
    const db = raw(path);
    db.exec('update audit set seq = -(seq + 1) where seq >= 4; update audit set seq = -seq where seq < 0;');
    db.prepare(`insert into audit (seq, ${COLUMNS.join(', ')}) values (4, 't', 'mallory', 'decrypt', null, null, 'ok', null, null, ?, ?)`).run('0'.repeat(64), '1'.repeat(64));
    const v = await verifyStore(store, HEAD_KEY);
    assert.equal(v.ok, false);
    assert.equal(v.firstBroken?.seq, 4);
  });

  it('an appended record with an arbitrary hash is caught', async () => {
    const { path, store } = await seeded(COUNT);
    raw(path)
      .prepare(`insert into audit (seq, ${COLUMNS.join(', ')}) values (?, 't', 'mallory', 'decrypt', null, null, 'ok', null, null, ?, ?)`)
      .run(COUNT + 1, '0'.repeat(64), '1'.repeat(64));
    const v = await verifyStore(store, HEAD_KEY);
    assert.equal(v.ok, false);
    assert.equal(v.firstBroken?.seq, COUNT + 1);
  });

  it('reports the first broken record when several are broken', async () => {
    const { path, store } = await seeded(COUNT);
    const db = raw(path);
    db.prepare(`update audit set actor = 'x' where seq in (3, 8)`).run();
    db.prepare('delete from audit where seq = 9').run();
    const v = await verifyStore(store, HEAD_KEY);
    assert.equal(v.firstBroken?.seq, 3);
  });

  it('verifies across pages of 1000 and finds breaks on either side of a page boundary', async () => {
    const { path, store } = await seeded(2500);
    const db = raw(path);
    db.prepare(`update audit set result = 'x' where seq = 1001`).run();
    assert.equal((await verifyStore(store, HEAD_KEY)).firstBroken?.seq, 1001);
    db.prepare('delete from audit where seq = 1001').run();
    assert.equal((await verifyStore(store, HEAD_KEY)).firstBroken?.seq, 1002);
    db.prepare(`update audit set result = 'x' where seq = 1000`).run();
    const v = await verifyStore(store, HEAD_KEY);
    assert.equal(v.firstBroken?.seq, 1000);
    assert.equal(v.records, 999);
  });

  it('an intact chain of several pages verifies with the full count', async () => {
    const { store } = await seeded(2500);
    assert.deepEqual(await verifyStore(store, HEAD_KEY), { ok: true, records: 2500 });
  });

  // DESIGN.md: "`keyhaven audit verify` finds any edit, deletion or reordering".
  // A chain with no anchor for its head cannot see records cut from the end.
  it('a deletion of the last record is detected', async () => {
    const { path, store } = await seeded(COUNT);
    assert.equal(raw(path).prepare('delete from audit where seq = ?').run(COUNT).changes, 1);
    const v = await verifyStore(store, HEAD_KEY);
    assert.equal(v.ok, false, `verify reported ${JSON.stringify(v)} after the last record was deleted`);
  });
});

describe('audit/chain: verifyRecords and linkRecord', () => {
  const draft: AuditDraft = { time: '2024-01-01T00:00:00.000Z', actor: 'a', operation: 'op', key_name: 'k', key_version: 1, result: 'ok', request_id: 'r', details: '{"x":1}' };

  function chainOf(drafts: AuditDraft[]): AuditRow[] {
    let prev = GENESIS_HASH;
    return drafts.map((d, i) => {
      const row: AuditRow = { ...d, seq: i + 1, prev_hash: prev, hash: linkRecord(prev, i + 1, d) };
      prev = row.hash;
      return row;
    });
  }

  it('linkRecord is deterministic and depends on the previous hash, the seq and every field', () => {
    const h = linkRecord(GENESIS_HASH, 1, draft);
    assert.equal(h, linkRecord(GENESIS_HASH, 1, { ...draft }));
    assert.notEqual(h, linkRecord('1'.repeat(64), 1, draft));
    assert.notEqual(h, linkRecord(GENESIS_HASH, 2, draft));
    const changes: Array<Partial<AuditDraft>> = [
      { time: '2024-01-01T00:00:00.001Z' },
      { actor: 'b' },
      { operation: 'op2' },
      { key_name: null },
      { key_version: 2 },
      { key_version: null },
      { result: 'denied' },
      { request_id: null },
      { details: null },
      { details: '{"x":2}' },
    ];
    for (const c of changes) assert.notEqual(linkRecord(GENESIS_HASH, 1, { ...draft, ...c }), h, JSON.stringify(c));
  });

  it('fields cannot be shifted into each other to keep the hash', () => {
    const a = linkRecord(GENESIS_HASH, 1, { ...draft, actor: 'ab', operation: 'c' });
    const b = linkRecord(GENESIS_HASH, 1, { ...draft, actor: 'a', operation: 'bc' });
    assert.notEqual(a, b);
  });

  it('verifies a well-formed chain and reports the first break', () => {
    const rows = chainOf([draft, { ...draft, actor: 'b' }, { ...draft, actor: 'c' }]);
    assert.deepEqual(verifyRecords(rows), { ok: true, records: 3 });
    assert.deepEqual(verifyRecords([]), { ok: true, records: 0 });
    const edited = rows.map((r) => (r.seq === 2 ? { ...r, actor: 'z' } : r));
    assert.equal(verifyRecords(edited).firstBroken?.seq, 2);
    assert.equal(verifyRecords([rows[0]!, rows[2]!]).firstBroken?.seq, 3);
    assert.equal(verifyRecords([rows[1]!, rows[0]!, rows[2]!]).firstBroken?.seq, 2);
  });

  it('checks continuity with the given previous hash and starting seq', () => {
    const rows = chainOf([draft, { ...draft, actor: 'b' }, { ...draft, actor: 'c' }]);
    assert.deepEqual(verifyRecords(rows.slice(1), rows[0]!.hash, 2), { ok: true, records: 2 });
    assert.equal(verifyRecords(rows.slice(1), GENESIS_HASH, 2).ok, false);
    assert.equal(verifyRecords(rows.slice(1), rows[0]!.hash, 1).ok, false);
  });
});
