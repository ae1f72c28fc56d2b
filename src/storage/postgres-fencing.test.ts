import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import pg from 'pg';
import { linkRecord, verifyRecords } from '../audit/chain.js';
import { KeyhavenError } from '../errors.js';
import { withPostgresDatabase } from '../../test/pg.js';
import { openPostgresStore } from './postgres.js';
import type { AuditDraft } from './store.js';

// The write lock of servers sharing PostgreSQL is held across round trips; a
// holder that stops answering must lose it within lockHold, and must not be
// able to write under it once it runs again (docs/server.md, "Write lock").

const withDatabase = withPostgresDatabase;

const draft = (actor: string, i: number): AuditDraft => ({
  time: new Date(Date.UTC(2025, 0, 1, 0, 0, i % 60)).toISOString(),
  actor,
  operation: 'encrypt',
  key_name: 'k',
  key_version: 1,
  result: 'ok',
  request_id: String(i),
  details: null,
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('postgres write lock fencing', () => {
  it('a holder idle inside its transaction loses the lock to another server; its work is rolled back and done again', (t) =>
    withDatabase(t, async (url) => {
      const a = await openPostgresStore({ url, lockHoldMs: 300, lockWaitMs: 2000 });
      const b = await openPostgresStore({ url, lockHoldMs: 300, lockWaitMs: 2000 });
      try {
        const events: string[] = [];
        let release!: () => void;
        const stalled = new Promise<void>((r) => (release = r));
        let runs = 0;
        // A holds the lock, then idles (as a stopped process would) until released.
        const held = a.transaction(async (tx) => {
          runs += 1;
          await tx.setMeta('from-a', `run ${runs}`);
          events.push(`a holds the lock (run ${runs})`);
          await stalled;
          await tx.setMeta('a-seen-b', (await tx.getMeta('from-b')) ?? 'no');
        });
        while (!events.includes('a holds the lock (run 1)')) await sleep(5);
        // B's write gets the lock although A never ends its transaction itself
        // (B would give up after lockWait, 2 s, if A kept it).
        await b.setMeta('from-b', 'yes');
        events.push('b wrote');
        // Fenced: nothing A wrote under the lost lock is there.
        assert.equal(await b.getMeta('from-a'), undefined);
        release();
        await held;
        assert.deepEqual(events, ['a holds the lock (run 1)', 'b wrote', 'a holds the lock (run 2)']);
        // The second run started over after B's write: it saw it, and only it committed.
        assert.equal(await b.getMeta('from-a'), 'run 2');
        assert.equal(await b.getMeta('a-seen-b'), 'yes');
      } finally {
        await a.close();
        await b.close();
      }
    }));

  it('a holder that stays idle run after run gets a clear error, and the store carries on', (t) =>
    withDatabase(t, async (url) => {
      const a = await openPostgresStore({ url, lockHoldMs: 200, lockWaitMs: 10_000 });
      try {
        let runs = 0;
        const outcome = await a
          .transaction(async (tx) => {
            runs += 1;
            await tx.setMeta('stuck', String(runs));
            await sleep(800);
            await tx.setMeta('stuck-after', 'x');
          })
          .then(
            () => 'committed',
            (e: unknown) => e,
          );
        assert.ok(outcome instanceof KeyhavenError, `expected an error, got ${String(outcome)}`);
        assert.equal(outcome.code, 'unavailable');
        assert.match(outcome.message, /idle for over 200 ms inside a write transaction.*nothing of it was written/);
        assert.equal(runs, 3, 'run once and again twice');
        assert.equal(await a.getMeta('stuck'), undefined);
        await a.setMeta('later', 'ok');
        assert.equal(await a.getMeta('later'), 'ok');
      } finally {
        await a.close();
      }
    }));

  it('a change whose call is older than lockWait is not run again: its caller has likely retried elsewhere', (t) =>
    withDatabase(t, async (url) => {
      const a = await openPostgresStore({ url, lockHoldMs: 200, lockWaitMs: 500 });
      try {
        let runs = 0;
        const outcome = await a
          .transaction(async (tx) => {
            runs += 1;
            await tx.setMeta('late', String(runs));
            await sleep(1000); // a stopped server: longer than lockWait
            await tx.setMeta('late-after', 'x');
          })
          .then(
            () => 'committed',
            (e: unknown) => e,
          );
        assert.ok(outcome instanceof KeyhavenError, `expected an error, got ${String(outcome)}`);
        assert.equal(outcome.code, 'unavailable');
        assert.equal(runs, 1);
        assert.equal(await a.getMeta('late'), undefined);
      } finally {
        await a.close();
      }
    }));

  it('a write awaited inside another transaction of the same process fails after lockWait instead of waiting forever', (t) =>
    withDatabase(t, async (url) => {
      const a = await openPostgresStore({ url, lockHoldMs: 2000, lockWaitMs: 500 });
      try {
        const outcome = await a
          .transaction(async (tx) => {
            await tx.setMeta('inner', 'kept');
            // A mistake: the outer store, not tx. It queues behind this very transaction.
            await a.setMeta('outer', 'never');
          })
          .then(
            () => 'committed',
            (e: unknown) => e,
          );
        assert.ok(outcome instanceof KeyhavenError, `expected an error, got ${String(outcome)}`);
        assert.equal(outcome.code, 'unavailable');
        assert.match(outcome.message, /write lock not obtained within 0.5 s/);
        assert.equal(await a.getMeta('inner'), undefined, 'the transaction rolled back');
        assert.equal(await a.getMeta('outer'), undefined, 'the write that gave up never ran');
        await a.setMeta('after', 'ok');
        assert.equal(await a.getMeta('after'), 'ok');
      } finally {
        await a.close();
      }
    }));

  it('a write whose connection stops answering (half-open after a partition) is cut and done again on a new one; no write waits forever', (t) =>
    withDatabase(t, async (url) => {
      // A TCP proxy to PostgreSQL that can silently drop every byte of the connections open so far.
      const target = new URL(url);
      const dead = new Set<Socket>();
      const open = new Set<Socket>();
      const proxy = createServer((client) => {
        const upstream = connect(Number(target.port || 5432), target.hostname);
        for (const s of [client, upstream]) {
          open.add(s);
          s.on('error', () => {});
          s.on('close', () => open.delete(s));
        }
        client.on('data', (d: Buffer) => void (dead.has(client) || upstream.write(d)));
        upstream.on('data', (d: Buffer) => void (dead.has(client) || client.write(d)));
        client.on('close', () => upstream.destroy());
        upstream.on('close', () => client.destroy());
      });
      await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
      const proxied = new URL(url);
      proxied.hostname = '127.0.0.1';
      proxied.port = String((proxy.address() as AddressInfo).port);
      const partition = () => {
        for (const s of open) dead.add(s);
      };
      const store = await openPostgresStore({ url: proxied.toString(), lockHoldMs: 300, lockWaitMs: 1000 });
      const direct = await openPostgresStore({ url });
      // Fails the test instead of hanging it if a write never settles.
      const settled = <T>(p: Promise<T>) =>
        Promise.race([p.then((v) => ({ v }), (e: unknown) => ({ e })), sleep(30_000).then(() => ({ hung: true as const }))]);
      try {
        await store.appendAudit([draft('app:a', 1)], linkRecord);
        partition();
        // Audit records: cut after the deadline, then written on a new connection.
        const appended = await settled(store.appendAudit([draft('app:a', 2)], linkRecord));
        assert.ok(!('hung' in appended), 'the audit append never settled');
        assert.ok('v' in appended, `the audit append failed: ${String((appended as { e?: unknown }).e)}`);
        partition();
        // A change: cut, and refused (its call is older than lockWait by then) with a clear error.
        const changed = await settled(store.setMeta('k', 'v'));
        assert.ok(!('hung' in changed), 'the change never settled');
        assert.ok('e' in changed && changed.e instanceof KeyhavenError, `expected a refusal, got ${JSON.stringify(changed)}`);
        assert.equal(changed.e.code, 'unavailable');
        assert.match(changed.e.message, /did not answer a write transaction within 2.6 s/);
        // New connections work: the store carries on.
        await store.setMeta('k', 'later');
        const rows = await direct.readAudit(0, 10);
        assert.deepEqual(rows.map((r) => r.seq), [1, 2]);
        assert.deepEqual(verifyRecords(rows), { ok: true, records: 2 });
        assert.equal(await direct.getMeta('k'), 'later');
      } finally {
        await Promise.race([store.close(), sleep(2000)]);
        await direct.close();
        for (const s of open) s.destroy();
        await new Promise((r) => proxy.close(r));
      }
    }));

  it('a server stopped (SIGSTOP) at random moments under load never stalls another beyond lockHold, and loses no write of its own', (t) =>
    withDatabase(t, async (url) => {
      const storeModule = new URL('./postgres.js', import.meta.url).href;
      const chainModule = new URL('../audit/chain.js', import.meta.url).href;
      // The child appends audit records (one transaction each, as a server's
      // audit writer does) as fast as it can, and counts what succeeded.
      const program = `
        const { openPostgresStore } = await import(${JSON.stringify(storeModule)});
        const { linkRecord } = await import(${JSON.stringify(chainModule)});
        const store = await openPostgresStore({ url: process.env.KH_URL, lockHoldMs: 300, lockWaitMs: 2000 });
        let ok = 0, failed = 0, i = 0, stop = false;
        process.on('SIGTERM', () => { stop = true; });
        process.stdout.write('ready\\n');
        while (!stop) {
          i += 1;
          try {
            await store.appendAudit([{ time: new Date().toISOString(), actor: 'app:child', operation: 'encrypt', key_name: 'k', key_version: 1, result: 'ok', request_id: String(i), details: null }], linkRecord);
            ok += 1;
          } catch (e) {
            failed += 1;
            process.stderr.write('child write failed: ' + e.message + '\\n');
          }
        }
        await store.close();
        process.stdout.write('done ' + ok + ' ' + failed + '\\n');
      `;
      const childUrl = new URL(url);
      childUrl.searchParams.set('application_name', 'fencing-child');
      const env: NodeJS.ProcessEnv = { ...process.env, KH_URL: childUrl.toString() };
      delete env.NODE_TEST_CONTEXT;
      const child = spawn(process.execPath, ['--input-type=module', '-e', program], { env, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      // Whether the stopped child had a transaction open (holding or awaiting the lock), seen from PostgreSQL.
      const watcher = new pg.Client({ connectionString: url });
      watcher.on('error', () => {}); // the database is dropped under it at the end
      await watcher.connect();
      const childInTransaction = async (): Promise<boolean> => {
        const { rows } = await watcher.query<{ n: number }>(
          `select count(*)::int as n from pg_stat_activity where application_name = 'fencing-child' and xact_start is not null`,
        );
        return rows[0]!.n > 0;
      };
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      child.stderr.on('data', (d: Buffer) => (err += d.toString()));
      const exited = new Promise<number | string | null>((r) => child.once('exit', (code, sig) => r(sig ?? code)));
      t.after(() => {
        if (child.exitCode === null && child.signalCode === null) {
          child.kill('SIGCONT');
          child.kill('SIGKILL');
        }
      });
      const store = await openPostgresStore({ url, lockHoldMs: 300, lockWaitMs: 2000 });
      try {
        for (let i = 0; i < 1000 && !out.includes('ready') && child.exitCode === null; i++) await sleep(10);
        assert.ok(out.includes('ready'), `child did not start:\n${err}`);

        // This process writes all along; a stop of the child that held the
        // lock for longer than lockWait (2 s) would fail these writes.
        let running = true;
        let mine = 0;
        const failures: string[] = [];
        const writer = (async () => {
          for (let i = 0; running; i++) {
            try {
              await store.appendAudit([draft('app:parent', i)], linkRecord);
              mine += 1;
            } catch (e) {
              failures.push((e as Error).message);
            }
          }
        })();
        const stops = 5;
        let midTransaction = 0;
        for (let s = 0; s < stops; s++) {
          // Random moments: most land inside one of the child's transactions.
          await sleep(150 + Math.floor(Math.random() * 400));
          child.kill('SIGSTOP');
          if (await childInTransaction()) midTransaction += 1;
          await sleep(3000);
          child.kill('SIGCONT');
        }
        await sleep(500);
        running = false;
        await writer;
        child.kill('SIGTERM');
        assert.equal(await exited, 0, `child ended badly:\n${err}`);
        const [, okText, failedText] = /done (\d+) (\d+)/.exec(out) ?? [];
        const childOk = Number(okText);
        t.diagnostic(`parent writes ${mine}, failed ${failures.length}; child writes ${childOk}, failed ${failedText}; ${stops} stops of 3 s, ${midTransaction} of them inside a child transaction`);
        assert.deepEqual(failures, [], 'no write of the server that kept running failed');
        // The resumed child loses its transaction but runs it again: nothing it was asked to write is lost.
        assert.equal(Number(failedText), 0, `child writes failed:\n${err}`);
        assert.ok(mine > stops && childOk > 0);

        // One chain, every acknowledged record in it once, and it verifies.
        const rows = [];
        for (let after = 0; ; ) {
          const page = await store.readAudit(after, 1000);
          if (page.length === 0) break;
          rows.push(...page);
          after = page[page.length - 1]!.seq;
        }
        assert.deepEqual(verifyRecords(rows), { ok: true, records: rows.length });
        assert.equal(rows.filter((r) => r.actor === 'app:parent').length, mine);
        assert.equal(rows.filter((r) => r.actor === 'app:child').length, childOk);
      } finally {
        await watcher.end().catch(() => {});
        await store.close();
      }
    }));
});
