import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { inspect } from 'node:util';
import pg from 'pg';
import { sql, type Kysely } from 'kysely';
import { linkRecord, verifyRecords } from '../audit/chain.js';
import { KeyhavenError } from '../errors.js';
import { freshPostgresDatabase, POSTGRES_REASON, postgresAvailable, withPostgresDatabase } from '../../test/pg.js';
import { requireDependency } from '../../test/require.js';
import { KyselyStore } from './kysely-store.js';
import { openStore } from './open-store.js';
import { describeTarget, openPostgresStore, WRITE_LOCK_ID } from './postgres.js';
import type { AuditDraft, Store } from './store.js';

// PostgreSQL-only behaviour; everything a Store promises is in store-contract.test.ts.

const PASSWORD = 'hunter2-Sup3rS3cret';

const withDatabase = withPostgresDatabase;

async function query<T extends pg.QueryResultRow>(url: string, text: string, values: unknown[] = []): Promise<T[]> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query<T>(text, values)).rows;
  } finally {
    await c.end();
  }
}

/** The store's Kysely instance, for looking at its connection's settings. */
const kyselyOf = (s: Store) => (s as unknown as { db: Kysely<unknown> }).db;

const draft = (i: number): AuditDraft => ({
  time: new Date(Date.UTC(2025, 0, 1, 0, 0, i)).toISOString(),
  actor: 'app:a',
  operation: 'encrypt',
  key_name: 'k',
  key_version: 1,
  result: 'ok',
  request_id: null,
  details: null,
});

async function closedPort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as { port: number }).port;
  await new Promise((r) => srv.close(r));
  return port;
}

function withPassword(url: string): string {
  const u = new URL(url);
  u.password = PASSWORD;
  return u.toString();
}

function assertNoPassword(e: unknown): void {
  assert.ok(!inspect(e, { depth: 10 }).includes(PASSWORD), 'the error never carries the password');
  assert.ok(!String((e as Error).message).includes(PASSWORD));
}

describe('postgres store', () => {
  it('describeTarget names host, port and database only', () => {
    assert.equal(describeTarget(`postgres://u:${PASSWORD}@db.example:6543/keys?sslmode=require`), 'db.example:6543/keys');
    assert.equal(describeTarget(`postgresql://u:${PASSWORD}@db.example/keys`), 'db.example:5432/keys');
    assert.equal(describeTarget('postgres:///keys?host=/run/postgresql'), '/run/postgresql:5432/keys');
    assert.equal(describeTarget(`postgres://u:${PASSWORD}@[bad/x`), '(an unparsable URL)');
  });

  it('an unreachable server is config_invalid, naming the target but not the password', async () => {
    const port = await closedPort();
    const url = `postgres://keyhaven:${PASSWORD}@127.0.0.1:${port}/keys`;
    await assert.rejects(openPostgresStore({ url }), (e: unknown) => {
      assert.ok(e instanceof KeyhavenError);
      assert.equal(e.code, 'config_invalid');
      assert.match(e.message, new RegExp(`^cannot connect to PostgreSQL at 127\\.0\\.0\\.1:${port}/keys: .*ECONNREFUSED`));
      assertNoPassword(e);
      return true;
    });
    // An encoded password is redacted too.
    await assert.rejects(openStore({ postgres: { url: `postgres://keyhaven:${encodeURIComponent('p@ss/w:rd')}@127.0.0.1:${port}/keys` } }), (e: unknown) => {
      assert.ok(e instanceof KeyhavenError && e.code === 'config_invalid');
      assert.ok(!inspect(e).includes('p@ss/w:rd') && !inspect(e).includes('p%40ss'));
      return true;
    });
  });

  it('a malformed URL is config_invalid without echoing it', async () => {
    await assert.rejects(openPostgresStore({ url: `postgres://u:${PASSWORD}@[bad/keys` }), (e: unknown) => {
      assert.ok(e instanceof KeyhavenError && e.code === 'config_invalid');
      assert.match(e.message, /^cannot connect to PostgreSQL at \(an unparsable URL\): /);
      assertNoPassword(e);
      return true;
    });
  });

  it('a missing database is config_invalid, without the password', async (t) => {
    if (!requireDependency(t, await postgresAvailable(), POSTGRES_REASON)) return;
    const db = await freshPostgresDatabase();
    assert.ok(db);
    await db.drop();
    await assert.rejects(openPostgresStore({ url: withPassword(db.url) }), (e: unknown) => {
      assert.ok(e instanceof KeyhavenError && e.code === 'config_invalid');
      assert.match(e.message, new RegExp(`at 127\\.0\\.0\\.1:5432/${db.name}: database "${db.name}" does not exist`));
      assertNoPassword(e);
      return true;
    });
  });

  it('servers starting together migrate once', (t) =>
    withDatabase(t, async (url) => {
      const stores = await Promise.all(Array.from({ length: 5 }, () => openPostgresStore({ url, poolSize: 2 })));
      try {
        const done = await query<{ name: string }>(url, 'select name from kysely_migration order by name');
        assert.deepEqual(
          done.map((r) => r.name),
          ['0001_initial', '0002_server', '0003_plugin_clusters', '0004_vault_compat', '0005_login_throttle', '0006_recovery', '0007_app_key_issuers'],
        );
        await stores[0]!.setMeta('x', '1');
        for (const s of stores) assert.equal(await s.getMeta('x'), '1');
      } finally {
        await Promise.all(stores.map((s) => s.close()));
      }
      // A later start finds nothing to do.
      const again = await openPostgresStore({ url });
      await again.close();
    }));

  it('int8 columns come back as numbers, on this pool only', (t) =>
    withDatabase(t, async (url) => {
      const store = await openPostgresStore({ url });
      try {
        await store.appendAudit([draft(1), draft(2)], linkRecord);
        const rows = await store.queryAudit({ limit: 10 });
        assert.deepEqual(
          rows.map((r) => r.seq),
          [1, 2],
        );
        assert.deepEqual(verifyRecords(rows), { ok: true, records: 2 });
        const counted = await sql<{ n: unknown }>`select count(*) as n from audit`.execute(kyselyOf(store));
        assert.equal(counted.rows[0]!.n, 2);
        // The process-wide pg defaults are untouched.
        assert.equal(pg.types.getTypeParser(pg.types.builtins.INT8, 'text')('7'), '7');
        const raw = await query<{ seq: unknown }>(url, 'select seq from audit order by seq limit 1');
        assert.equal(raw[0]!.seq, '1');
      } finally {
        await store.close();
      }
    }));

  it('a transaction holds the write advisory lock until it ends', (t) =>
    withDatabase(t, async (url) => {
      const store = await openPostgresStore({ url });
      const held = () =>
        query<{ n: number }>(
          url,
          `select count(*)::int as n from pg_locks l join pg_database d on d.oid = l.database
            where l.locktype = 'advisory' and d.datname = current_database() and l.granted
              and l.classid = $1 and l.objid = $2 and l.objsubid = 1`,
          [Number(WRITE_LOCK_ID >> 32n), Number(WRITE_LOCK_ID & 0xffffffffn)],
        ).then((r) => r[0]!.n);
      try {
        assert.equal(await held(), 0);
        await store.transaction(async () => {
          assert.equal(await held(), 1);
        });
        assert.equal(await held(), 0);
        await assert.rejects(
          store.transaction(async () => {
            throw new Error('x');
          }),
        );
        assert.equal(await held(), 0, 'released on rollback too');
      } finally {
        await store.close();
      }
    }));

  it('writes outside a transaction wait for the write lock; reads do not', (t) =>
    withDatabase(t, async (url) => {
      // More connections than queued writes (one each), so the reads below find one free.
      const store = await openPostgresStore({ url, poolSize: 30 });
      const holder = new pg.Client({ connectionString: url });
      await holder.connect();
      try {
        const t0 = new Date().toISOString();
        const principal = { id: 'p1', name: 'app1', kind: 'app' as const, roles: '[]', state: 'active' as const, failed_logins: 0, locked_until: null, cert_fingerprint: null, description: null, break_glass: 0, created_by: null, key_issued_by: null, created_at: t0, updated_at: t0 };
        const key = { id: 'k1', name: 'k1', state: 'enabled' as const, current_version: 1, created_at: t0, updated_at: t0, rotation_period_s: null, next_rotation_at: null, min_decryption_version: 1, destroy_at: null, min_encryption_version: 0, deletion_allowed: 0 };
        await store.insertPrincipal(principal);
        await store.insertKey(key);
        await store.insertKeyVersion({ key_id: 'k1', version: 1, tag: 't', state: 'active', created_at: t0, destroyed_at: null });
        await store.insertCredential({ id: 'c1', principal_id: 'p1', kind: 'session', hash: 'h', created_at: t0, expires_at: t0, revoked_at: null });
        await store.putGrant({ principal_id: 'p1', key_id: 'k1', operations: '[]', created_at: t0, created_by: 'x' });
        const approval = { id: 'a1', operation: 'o', params: '{}', requester_id: 'p1', requester_name: 'app1', required: 1, approvals: '[]', state: 'pending' as const, created_at: t0, expires_at: t0, decided_at: null, result: null };
        // Inserted up front: the queued writes run in no set order once the lock is released.
        await store.insertApproval(approval);

        await holder.query('begin');
        await holder.query('select pg_advisory_xact_lock($1)', [WRITE_LOCK_ID.toString()]);
        const finished: string[] = [];
        const writes: Record<string, () => Promise<unknown>> = {
          setMeta: () => store.setMeta('m', '1'),
          setMetaIfAbsent: () => store.setMetaIfAbsent('n', '1'),
          barrierPut: () => store.barrierPut('b', Buffer.from('x')),
          barrierDelete: () => store.barrierDelete('none'),
          insertKey: () => store.insertKey({ ...key, id: 'k2', name: 'k2' }),
          updateKey: () => store.updateKey('k1', { state: 'disabled' }),
          insertKeyVersion: () => store.insertKeyVersion({ key_id: 'k1', version: 2, tag: 'u', state: 'active', created_at: t0, destroyed_at: null }),
          updateKeyVersion: () => store.updateKeyVersion('k1', 1, { tag: 'v' }),
          insertPrincipal: () => store.insertPrincipal({ ...principal, id: 'p2', name: 'app2' }),
          updatePrincipal: () => store.updatePrincipal('p1', { failed_logins: 1 }),
          // A principal that does not exist: the lock is what is under test.
          deletePrincipal: () => store.deletePrincipal('none'),
          deleteMeta: () => store.deleteMeta('none'),
          putLoginThrottle: () => store.putLoginThrottle({ name: 'u', source: '127.0.0.1', failures: 1, locked_until: null, expires_at: t0, updated_at: t0 }),
          deleteLoginThrottles: () => store.deleteLoginThrottles('none'),
          deleteExpiredLoginThrottles: () => store.deleteExpiredLoginThrottles('0000'),
          insertCredential: () => store.insertCredential({ id: 'c2', principal_id: 'p1', kind: 'api_key', hash: 'h', created_at: t0, expires_at: null, revoked_at: null }),
          updateCredential: () => store.updateCredential('c1', { revoked_at: t0 }),
          deleteExpiredSessions: () => store.deleteExpiredSessions('9999'),
          putGrant: () => store.putGrant({ principal_id: 'p1', key_id: 'k1', operations: '["encrypt"]', created_at: t0, created_by: 'y' }),
          deleteGrant: () => store.deleteGrant('p1', 'none'),
          insertApproval: () => store.insertApproval({ ...approval, id: 'a2' }),
          updateApproval: () => store.updateApproval('a1', { state: 'denied' }),
          appendAudit: () => store.appendAudit([draft(1)], linkRecord),
          // A key that does not exist: the lock is what is under test.
          deleteKey: () => store.deleteKey('none'),
          upsertPluginReport: () => store.upsertPluginReport({ app_id: 'p1', cluster: 'c', node: 'n', key_name: 'k1', key_id: 'x', key_version: 1, plugin_version: 'v', last_success: null, last_seen: t0, first_seen: t0, source: '127.0.0.1', version_since: t0 }),
          putScanReport: () => store.putScanReport({ cluster: 'c', scanned_at: t0, source: 'etcd', objects: 1, plaintext: 0, by_key_id: '[]', by_form: '[]', reporter: 'user:x', received_at: t0 }),
          insertRecovery: () => store.insertRecovery({ id: 'r1', app_id: 'p1', app_name: 'app1', reason: 'r', cluster: null, state: 'open', approval_id: null, created_at: t0, opened_at: t0, expires_at: t0, closed_at: null, closed_by: null, objects: null, failed: null }),
          updateRecovery: () => store.updateRecovery('none', { state: 'closed' }),
        };
        // Every writing method of the store is in the list above.
        const readers = /^(constructor|get|find|list|read|query|lastAuditSeq$|barrierGet$|transaction$|close$|appendAuditInTransaction$)/;
        // deleteAllPrincipals is checked on its own below: run among the others it would remove rows they refer to.
        assert.deepEqual(Object.getOwnPropertyNames(KyselyStore.prototype).filter((n) => !readers.test(n)).sort(), [...Object.keys(writes), 'deleteAllPrincipals'].sort());
        const pending = Object.entries(writes).map(([name, w]) => w().then(() => finished.push(name)));
        // Reads go ahead meanwhile.
        assert.equal((await store.findKeyById('k1'))!.state, 'enabled');
        assert.equal((await store.listGrants({})).length, 1);
        await new Promise((r) => setTimeout(r, 300));
        assert.deepEqual(finished, [], 'no write got past the held lock');
        await holder.query('commit');
        await Promise.all(pending);
        assert.equal(finished.length, Object.keys(writes).length);
        assert.equal((await store.findKeyById('k1'))!.state, 'disabled');
        assert.equal((await store.findApproval('a1'))!.state, 'denied');

        await holder.query('begin');
        await holder.query('select pg_advisory_xact_lock($1)', [WRITE_LOCK_ID.toString()]);
        let wiped = false;
        const wipe = store.deleteAllPrincipals().then(() => (wiped = true));
        await new Promise((r) => setTimeout(r, 300));
        assert.equal(wiped, false, 'deleteAllPrincipals waits for the held lock');
        await holder.query('commit');
        await wipe;
        assert.deepEqual(await store.listPrincipals(), []);
      } finally {
        await holder.end();
        await store.close();
      }
    }));

  it('an audit batch links to whatever another server or a change of its own appended since its last batch', (t) =>
    withDatabase(t, async (url) => {
      const a = await openPostgresStore({ url });
      const b = await openPostgresStore({ url });
      const head = (last: { seq: number; hash: string }) => `${last.seq}:${last.hash}`;
      try {
        assert.deepEqual((await a.appendAudit([draft(1), draft(2)], linkRecord, { head })).map((r) => r.seq), [1, 2]);
        // Another server writes: A's next batch must not reuse seq 3 or link to record 2.
        const [fromB] = await b.appendAudit([draft(3)], linkRecord, { head });
        const [next] = await a.appendAudit([draft(4)], linkRecord, { head });
        assert.equal(next!.seq, 4);
        assert.equal(next!.prev_hash, fromB!.hash);
        // A record written with a change, inside a transaction, moves the head too.
        await a.transaction((tx) => tx.appendAudit([draft(5)], linkRecord, { head }));
        const [after] = await a.appendAudit([draft(6)], linkRecord, { head });
        assert.equal(after!.seq, 6);
        const rows = await b.readAudit(0, 100);
        assert.deepEqual(rows.map((r) => r.seq), [1, 2, 3, 4, 5, 6]);
        assert.deepEqual(verifyRecords(rows), { ok: true, records: 6 });
        assert.equal(after!.prev_hash, rows[4]!.hash);
        assert.equal(await b.getMeta('audit_head'), head(rows[5]!));
      } finally {
        await a.close();
        await b.close();
      }
    }));

  it('a failed audit batch stores none of its records and the next batch links to the stored chain', (t) =>
    withDatabase(t, async (url) => {
      const store = await openPostgresStore({ url });
      try {
        await store.appendAudit([draft(1)], linkRecord);
        // actor is NOT NULL: the second record of this batch fails the whole batch.
        const bad = { ...draft(3), actor: null as unknown as string };
        await assert.rejects(store.appendAudit([draft(2), bad], linkRecord), /actor/);
        assert.deepEqual((await store.readAudit(0, 10)).map((r) => r.seq), [1]);
        assert.equal((await store.appendAudit([draft(4)], linkRecord))[0]!.seq, 2);
        assert.deepEqual(verifyRecords(await store.readAudit(0, 10)), { ok: true, records: 2 });
      } finally {
        await store.close();
      }
    }));

  it('fsync: false relaxes synchronous_commit for that transaction only', (t) =>
    withDatabase(t, async (url) => {
      // One connection, so every statement below runs on the same session.
      const store = await openPostgresStore({ url, poolSize: 1 });
      const setting = async () => (await sql<{ synchronous_commit: string }>`show synchronous_commit`.execute(kyselyOf(store))).rows[0]!.synchronous_commit;
      try {
        await store.appendAudit([draft(1)], linkRecord, { fsync: false });
        assert.equal(await setting(), 'on');
        await store.appendAudit([draft(2)], linkRecord, { fsync: true });
        await store.appendAudit([draft(3)], linkRecord);
        assert.equal(await setting(), 'on');
        assert.equal((await store.readAudit(0, 10)).length, 3);
      } finally {
        await store.close();
      }
    }));

  it('a dropped idle connection neither crashes the process nor breaks the store', (t) =>
    withDatabase(t, async (url) => {
      const seen: Error[] = [];
      const store = await openPostgresStore({ url, onIdleError: (e) => seen.push(e) });
      const quiet = await openStore({ postgres: { url } }); // no listener of its own
      try {
        await Promise.all([store.setMeta('a', '1'), store.getMeta('a'), quiet.getMeta('a')]);
        const killed = await query<{ pid: number }>(url, 'select pg_terminate_backend(pid) as ok, pid from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()');
        assert.ok(killed.length >= 2);
        for (let i = 0; i < 100 && seen.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
        assert.ok(seen.length > 0, 'the idle error was reported');
        // Each pooled connection learns of its end from its own socket: wait until the reports stop
        // (no new one for 200 ms), so no query is handed a connection whose error is still in flight.
        for (let i = 0, n = -1; i < 20 && n !== seen.length; i++) {
          n = seen.length;
          await new Promise((r) => setTimeout(r, 200));
        }
        assert.doesNotMatch(seen.map(String).join('\n'), new RegExp(PASSWORD));
        assert.equal(await store.getMeta('a'), '1');
        assert.equal(await quiet.getMeta('a'), '1');
      } finally {
        await store.close();
        await quiet.close();
      }
    }));

  it('an answered write is committed: a killed process loses nothing it acknowledged', (t) =>
    withDatabase(t, async (url) => {
      const storeModule = new URL('./postgres.js', import.meta.url).href;
      const chainModule = new URL('../audit/chain.js', import.meta.url).href;
      const program = `
        const { openPostgresStore } = await import(${JSON.stringify(storeModule)});
        const { linkRecord } = await import(${JSON.stringify(chainModule)});
        const store = await openPostgresStore({ url: process.env.KH_URL });
        const d = (i) => ({ time: new Date(Date.UTC(2025, 0, 1, 0, 0, i)).toISOString(), actor: 'app:child', operation: 'encrypt', key_name: 'k', key_version: 1, result: 'ok', request_id: null, details: null });
        await store.transaction(async (tx) => {
          await tx.setMeta('written', 'yes');
          await tx.barrierPut('keys/k', Buffer.from([0, 1, 2, 255]));
          await tx.appendAudit([d(1)], linkRecord);
        });
        await store.appendAudit([d(2), d(3)], linkRecord, { fsync: false });
        await store.appendAudit([d(4)], linkRecord, { fsync: true });
        process.stdout.write('answered\\n');
        setInterval(() => {}, 1000); // stay up until killed
      `;
      const env: NodeJS.ProcessEnv = { ...process.env, KH_URL: url };
      delete env.NODE_TEST_CONTEXT;
      const child = spawn(process.execPath, ['--input-type=module', '-e', program], { env, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      child.stdout.on('data', (b: Buffer) => (out += b.toString()));
      child.stderr.on('data', (b: Buffer) => (out += b.toString()));
      const exited = new Promise<NodeJS.Signals | number | null>((r) => child.once('exit', (code, sig) => r(sig ?? code)));
      for (let i = 0; i < 1000 && !out.includes('answered') && child.exitCode === null; i++) await new Promise((r) => setTimeout(r, 10));
      assert.ok(out.includes('answered'), `child did not answer:\n${out}`);
      child.kill('SIGKILL');
      assert.equal(await exited, 'SIGKILL');

      const store = await openPostgresStore({ url });
      try {
        assert.equal(await store.getMeta('written'), 'yes');
        assert.deepEqual([...(await store.barrierGet('keys/k'))!], [0, 1, 2, 255]);
        const rows = await store.readAudit(0, 10);
        assert.deepEqual(
          rows.map((r) => r.seq),
          [1, 2, 3, 4],
        );
        assert.deepEqual(verifyRecords(rows), { ok: true, records: 4 });
      } finally {
        await store.close();
      }
    }));
});
