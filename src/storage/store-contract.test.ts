import { describe, it, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { linkRecord, verifyRecords } from '../audit/chain.js';
import { freshPostgresDatabase, POSTGRES_REASON, postgresAvailable } from '../../test/pg.js';
import { requireDependency } from '../../test/require.js';
import { openStore, type StoreConfig } from './open-store.js';
import type { ApprovalRow, AuditDraft, AuditRow, CredentialRow, KeyRow, LoginThrottleRow, PluginReportRow, PrincipalRow, RecoveryRow, ScanReportRow, Store } from './store.js';
import { ownedTempDir } from '../../test/reaper.js';

// One suite, run against every backend: whatever passes here on SQLite must
// pass on PostgreSQL too. Concurrency cases run their second and third store
// in worker threads (own event loop, own connections), as separate processes
// would: better-sqlite3 waits for another connection's lock synchronously, so
// two SQLite stores on one event loop could never overlap a transaction.

interface Opened {
  store: Store;
  /** How a peer (another store on the same database) opens it. */
  config: StoreConfig;
  cleanup(): Promise<void>;
}

type PeerTask =
  | { kind: 'audit'; actor: string; records: number; batch: number; parallel: number }
  | { kind: 'rmw'; keyId: string; rounds: number; parallel: number }
  | { kind: 'hold'; holdMs: number }
  | { kind: 'throttle'; name: string; source: string; attempts: number; limit: number; parallel: number };

const WORKER_FLAG = 'keyhaven-store-contract-peer';

const now = () => new Date().toISOString();
const hex = (n: number) => randomBytes(n).toString('hex');

function keyRow(name: string, over: Partial<KeyRow> = {}): KeyRow {
  const t = now();
  return {
    id: hex(8),
    name,
    state: 'enabled',
    current_version: 1,
    created_at: t,
    updated_at: t,
    rotation_period_s: null,
    next_rotation_at: null,
    min_decryption_version: 1,
    destroy_at: null,
    min_encryption_version: 0,
    deletion_allowed: 0,
    ...over,
  };
}

function principalRow(name: string, over: Partial<PrincipalRow> = {}): PrincipalRow {
  const t = now();
  return {
    id: hex(8),
    name,
    kind: 'user',
    roles: '["auditor"]',
    state: 'active',
    failed_logins: 0,
    locked_until: null,
    cert_fingerprint: null,
    break_glass: 0,
    created_by: null,
    key_issued_by: null,
    description: null,
    created_at: t,
    updated_at: t,
    ...over,
  };
}

function draft(i: number, over: Partial<AuditDraft> = {}): AuditDraft {
  return {
    time: new Date(Date.UTC(2025, 0, 1, 0, 0, i)).toISOString(),
    actor: 'app:a',
    operation: 'encrypt',
    key_name: 'k1',
    key_version: 1,
    result: 'ok',
    request_id: `r${i}`,
    details: null,
    ...over,
  };
}

const head = (last: AuditRow) => `head:${last.seq}:${last.hash}`;

// ---- peer side (worker thread) ----

async function runPeer(): Promise<void> {
  const { config, task } = workerData as { config: StoreConfig; task: PeerTask };
  const port = parentPort!;
  const store = await openStore(config);
  try {
    port.postMessage({ type: 'ready' });
    await new Promise<void>((r) => port.once('message', () => r()));
    let result: unknown;
    if (task.kind === 'audit') {
      const batches: AuditDraft[][] = [];
      for (let i = 0; i < task.records; i += task.batch) {
        const b: AuditDraft[] = [];
        for (let j = i; j < Math.min(i + task.batch, task.records); j++) b.push(draft(j, { actor: task.actor, details: JSON.stringify({ i: j }) }));
        batches.push(b);
      }
      const seqs: number[] = [];
      const lane = async () => {
        for (let b = batches.shift(); b; b = batches.shift()) {
          const rows = await store.appendAudit(b, linkRecord, { head });
          seqs.push(...rows.map((r) => r.seq));
          // A gap between requests, as a server has: SQLite's lock is not fair,
          // and a writer that never pauses would starve the other until done.
          await sleep(1);
        }
      };
      await Promise.all(Array.from({ length: task.parallel }, lane));
      result = seqs;
    } else if (task.kind === 'rmw') {
      let left = task.rounds;
      const lane = async () => {
        while (left > 0) {
          left -= 1;
          await store.transaction(async (tx) => {
            const k = await tx.findKeyById(task.keyId);
            const next = k!.current_version + 1;
            await tx.insertKeyVersion({ key_id: task.keyId, version: next, tag: hex(4), state: 'active', created_at: now(), destroyed_at: null });
            await tx.updateKey(task.keyId, { current_version: next, updated_at: now() });
          });
        }
      };
      await Promise.all(Array.from({ length: task.parallel }, lane));
      result = task.rounds;
    } else if (task.kind === 'throttle') {
      // Sign-in reservations: count an attempt unless the pair already reached the limit.
      let left = task.attempts;
      let admitted = 0;
      const lane = async () => {
        while (left > 0) {
          left -= 1;
          const ok = await store.transaction(async (tx) => {
            const r = await tx.getLoginThrottle(task.name, task.source);
            if (r && r.failures >= task.limit) return false;
            const t = now();
            await tx.putLoginThrottle({ name: task.name, source: task.source, failures: (r?.failures ?? 0) + 1, locked_until: null, expires_at: '2999-01-01T00:00:00.000Z', updated_at: t });
            return true;
          });
          if (ok) admitted += 1;
        }
      };
      await Promise.all(Array.from({ length: task.parallel }, lane));
      result = admitted;
    } else {
      result = await store.transaction(async (tx) => {
        const [row] = await tx.appendAudit([draft(0, { actor: 'holder' })], linkRecord, { head });
        port.postMessage({ type: 'holding' });
        await sleep(task.holdMs);
        return { seq: row!.seq, committedAt: Date.now() };
      });
    }
    port.postMessage({ type: 'done', result });
  } finally {
    await store.close();
  }
}

interface Peer {
  ready: Promise<void>;
  events: { type: string; result?: unknown }[];
  next(type: string): Promise<{ type: string; result?: unknown }>;
  go(): void;
  done: Promise<unknown>;
}

function startPeer(config: StoreConfig, task: PeerTask): Peer {
  const w = new Worker(new URL(import.meta.url), { workerData: { [WORKER_FLAG]: true, config, task } });
  const events: { type: string; result?: unknown }[] = [];
  const waiters: { type: string; resolve: (m: { type: string; result?: unknown }) => void }[] = [];
  let fail: (e: unknown) => void = () => {};
  const failed = new Promise<never>((_, reject) => (fail = reject));
  failed.catch(() => {});
  w.on('message', (m: { type: string; result?: unknown }) => {
    events.push(m);
    for (const x of waiters.filter((x) => x.type === m.type)) x.resolve(m);
  });
  w.on('error', (e) => fail(e));
  w.on('exit', (code) => fail(new Error(`peer exited with ${code} before finishing`)));
  const next = (type: string) =>
    Promise.race([
      failed,
      new Promise<{ type: string; result?: unknown }>((resolve) => {
        const seen = events.find((m) => m.type === type);
        if (seen) resolve(seen);
        else waiters.push({ type, resolve });
      }),
    ]);
  return {
    ready: next('ready').then(() => {}),
    events,
    next,
    go: () => w.postMessage('go'),
    done: next('done').then((m) => m.result),
  };
}

// ---- the contract ----

interface ContractOptions {
  readonly available: () => Promise<boolean>;
  /** Named when a dependency is missing. */
  readonly reason: string;
  /** Waiting writers get the lock in turn (so concurrent writers interleave). */
  readonly fairLock: boolean;
}

function contract(name: string, opts: ContractOptions, open: () => Promise<Opened>): void {
  const { available, reason } = opts;
  describe(`store contract: ${name}`, () => {
    async function withStore(t: TestContext, fn: (o: Opened) => Promise<void>): Promise<void> {
      if (!requireDependency(t, await available(), reason)) return;
      const o = await open();
      try {
        await fn(o);
      } finally {
        await o.cleanup();
      }
    }

    it('meta: get, set, overwrite, setMetaIfAbsent', (t) =>
      withStore(t, async ({ store }) => {
        assert.equal(await store.getMeta('a'), undefined);
        await store.setMeta('a', '1');
        assert.equal(await store.getMeta('a'), '1');
        await store.setMeta('a', '2');
        assert.equal(await store.getMeta('a'), '2');
        assert.equal(await store.setMetaIfAbsent('a', '3'), '2');
        assert.equal(await store.setMetaIfAbsent('b', 'x'), 'x');
        assert.equal(await store.getMeta('b'), 'x');
        await store.deleteMeta('a');
        await store.deleteMeta('never-set');
        assert.equal(await store.getMeta('a'), undefined);
        assert.equal(await store.getMeta('b'), 'x');
      }));

    it('meta: setMetaIfAbsent racing across two stores stores one value, returned to all', (t) =>
      withStore(t, async ({ store, config }) => {
        const other = await openStore(config);
        try {
          const calls = Array.from({ length: 20 }, (_, i) => (i % 2 ? store : other).setMetaIfAbsent('race', `v${i}`));
          const got = await Promise.all(calls);
          const stored = await store.getMeta('race');
          assert.ok(stored?.startsWith('v'));
          assert.deepEqual(new Set(got), new Set([stored]));
        } finally {
          await other.close();
        }
      }));

    it('barrier: binary values round trip, overwrite, delete', (t) =>
      withStore(t, async ({ store }) => {
        const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
        const twice = Buffer.concat([all, Buffer.from(all).reverse()]);
        await store.barrierPut('keys/a', twice);
        const got = await store.barrierGet('keys/a');
        assert.ok(Buffer.isBuffer(got));
        assert.ok(got.equals(twice));
        const big = randomBytes(1 << 20);
        await store.barrierPut('keys/a', big);
        assert.ok((await store.barrierGet('keys/a'))!.equals(big));
        await store.barrierPut('zero', Buffer.alloc(1));
        assert.ok((await store.barrierGet('zero'))!.equals(Buffer.alloc(1)));
        assert.equal(await store.barrierGet('missing'), undefined);
        await store.barrierDelete('keys/a');
        assert.equal(await store.barrierGet('keys/a'), undefined);
        await store.barrierDelete('keys/a'); // deleting nothing is fine
        assert.ok((await store.barrierGet('zero'))!.equals(Buffer.alloc(1)));
      }));

    it('keys and key versions: CRUD and policy columns', (t) =>
      withStore(t, async ({ store }) => {
        const b = keyRow('beta', { rotation_period_s: 86_400, next_rotation_at: '2025-02-01T00:00:00.000Z' });
        const a = keyRow('alpha');
        await store.insertKey(b);
        await store.insertKey(a);
        assert.deepEqual(await store.findKeyById(b.id), b);
        assert.deepEqual(await store.findKeyByName('alpha'), a);
        assert.equal(await store.findKeyByName('nope'), undefined);
        assert.equal(await store.findKeyById('0000000000000000'), undefined);
        assert.deepEqual(
          (await store.listKeys()).map((k) => k.name),
          ['alpha', 'beta'],
        );
        await assert.rejects(store.insertKey(keyRow('alpha')), 'key names are unique');

        await store.updateKey(b.id, { rotation_period_s: null, next_rotation_at: null, min_decryption_version: 3, state: 'pending_destruction', destroy_at: '2025-03-01T00:00:00.000Z' });
        const b2 = await store.findKeyById(b.id);
        assert.deepEqual(b2, { ...b, rotation_period_s: null, next_rotation_at: null, min_decryption_version: 3, state: 'pending_destruction', destroy_at: '2025-03-01T00:00:00.000Z' });
        assert.equal(typeof b2!.current_version, 'number');
        assert.deepEqual(await store.findKeyById(a.id), a, 'other keys untouched');

        const v = (version: number) => ({ key_id: a.id, version, tag: hex(4), state: 'active' as const, created_at: now(), destroyed_at: null });
        const v2 = v(2);
        const v1 = v(1);
        await store.insertKeyVersion(v2);
        await store.insertKeyVersion(v1);
        await store.insertKeyVersion({ ...v(1), key_id: b.id });
        assert.deepEqual(await store.listKeyVersions(a.id), [v1, v2]);
        await assert.rejects(store.insertKeyVersion(v(2)), 'version numbers are unique per key');
        await store.updateKeyVersion(a.id, 1, { state: 'destroyed', destroyed_at: '2025-04-01T00:00:00.000Z' });
        assert.deepEqual(await store.listKeyVersions(a.id), [{ ...v1, state: 'destroyed', destroyed_at: '2025-04-01T00:00:00.000Z' }, v2]);
        assert.equal((await store.listKeyVersions(b.id))[0]!.state, 'active');
        assert.deepEqual(await store.listKeyVersions('ffffffffffffffff'), []);
      }));

    it('keys: Vault settings columns default to 0 and round-trip as numbers', (t) =>
      withStore(t, async ({ store }) => {
        const k = keyRow('vaulted');
        await store.insertKey(k);
        const stored = await store.findKeyById(k.id);
        assert.equal(stored!.min_encryption_version, 0);
        assert.equal(stored!.deletion_allowed, 0);
        await store.updateKey(k.id, { min_encryption_version: 4_000_000, deletion_allowed: 1 });
        const updated = await store.findKeyByName('vaulted');
        assert.deepEqual(updated, { ...k, min_encryption_version: 4_000_000, deletion_allowed: 1 });
        assert.equal(typeof updated!.min_encryption_version, 'number');
        assert.equal(typeof updated!.deletion_allowed, 'number');
      }));

    it('deleteKey: removes the key, its versions and grants, nothing else; atomic inside a failing transaction', (t) =>
      withStore(t, async ({ store }) => {
        const gone = keyRow('gone');
        const kept = keyRow('kept');
        for (const k of [gone, kept]) await store.insertKey(k);
        const app = principalRow('deleter-app', { kind: 'app', roles: '[]' });
        await store.insertPrincipal(app);
        for (const k of [gone, kept]) {
          for (const version of [1, 2]) await store.insertKeyVersion({ key_id: k.id, version, tag: hex(4), state: 'active', created_at: now(), destroyed_at: null });
          await store.putGrant({ principal_id: app.id, key_id: k.id, operations: '["encrypt"]', created_at: now(), created_by: 'user:x' });
        }
        await store.barrierPut(`keys/${gone.id}/versions/1`, Buffer.from('sealed'));

        // A failed transaction leaves everything in place.
        await assert.rejects(
          store.transaction(async (tx) => {
            assert.equal(await tx.deleteKey(gone.id), true);
            assert.equal(await tx.findKeyById(gone.id), undefined, 'gone inside the transaction');
            throw new Error('boom');
          }),
          /boom/,
        );
        assert.deepEqual(await store.findKeyById(gone.id), gone);
        assert.equal((await store.listKeyVersions(gone.id)).length, 2);
        assert.equal((await store.listGrants({ keyId: gone.id })).length, 1);

        assert.equal(await store.deleteKey(gone.id), true);
        assert.equal(await store.findKeyById(gone.id), undefined);
        assert.equal(await store.findKeyByName('gone'), undefined);
        assert.deepEqual(await store.listKeyVersions(gone.id), []);
        assert.deepEqual(await store.listGrants({ keyId: gone.id }), []);
        // Barrier rows are the caller's: deleteKey leaves them.
        assert.ok(await store.barrierGet(`keys/${gone.id}/versions/1`));
        assert.deepEqual(await store.findKeyById(kept.id), kept);
        assert.equal((await store.listKeyVersions(kept.id)).length, 2);
        assert.equal((await store.listGrants({ keyId: kept.id })).length, 1);
        assert.equal(await store.deleteKey(gone.id), false, 'deleting twice finds nothing');
        // The name is free again.
        await store.insertKey(keyRow('gone'));
        assert.equal((await store.listKeys()).map((k) => k.name).join(','), 'gone,kept');
      }));

    it('deletePrincipal: removes the principal, its credentials and grants, nothing else; the name is free again', (t) =>
      withStore(t, async ({ store }) => {
        const k = keyRow('pk');
        await store.insertKey(k);
        const gone = principalRow('gone-app', { kind: 'app', roles: '[]' });
        const kept = principalRow('kept-app', { kind: 'app', roles: '[]' });
        for (const p of [gone, kept]) {
          await store.insertPrincipal(p);
          await store.insertCredential({ id: hex(8), principal_id: p.id, kind: 'api_key', hash: hex(32), created_at: now(), expires_at: null, revoked_at: null });
          await store.putGrant({ principal_id: p.id, key_id: k.id, operations: '["encrypt"]', created_at: now(), created_by: 'user:x' });
        }
        await assert.rejects(
          store.transaction(async (tx) => {
            assert.equal(await tx.deletePrincipal(gone.id), true);
            throw new Error('boom');
          }),
          /boom/,
        );
        assert.deepEqual(await store.findPrincipalById(gone.id), gone);
        assert.equal((await store.listCredentials(gone.id)).length, 1);
        assert.equal(await store.deletePrincipal(gone.id), true);
        assert.equal(await store.findPrincipalById(gone.id), undefined);
        assert.deepEqual(await store.listCredentials(gone.id), []);
        assert.deepEqual(await store.listGrants({ principalId: gone.id }), []);
        assert.equal((await store.listCredentials(kept.id)).length, 1);
        assert.equal((await store.listGrants({ principalId: kept.id })).length, 1);
        assert.equal(await store.deletePrincipal(gone.id), false, 'deleting twice finds nothing');
        await store.insertPrincipal(principalRow('gone-app', { kind: 'app', roles: '[]' }));
      }));

    it('principals: unique names across kinds, lookup by certificate', (t) =>
      withStore(t, async ({ store }) => {
        const u = principalRow('carol');
        const app = principalRow('billing', { kind: 'app', roles: '[]', cert_fingerprint: 'ab'.repeat(32), description: 'billing service' });
        await store.insertPrincipal(u);
        await store.insertPrincipal(app);
        assert.deepEqual(await store.findPrincipalById(u.id), u);
        assert.deepEqual(await store.findPrincipalByName('billing'), app);
        assert.deepEqual(await store.findPrincipalByCert('ab'.repeat(32)), app);
        assert.equal(await store.findPrincipalByCert('cd'.repeat(32)), undefined);
        assert.equal(await store.findPrincipalByName('nobody'), undefined);
        assert.deepEqual(
          (await store.listPrincipals()).map((p) => p.name),
          ['billing', 'carol'],
        );
        assert.deepEqual(await store.listPrincipals('user'), [u]);
        assert.deepEqual(await store.listPrincipals('app'), [app]);
        await assert.rejects(store.insertPrincipal(principalRow('carol', { kind: 'app' })), 'names are unique across users and apps');
        await assert.rejects(store.insertPrincipal(principalRow('other', { kind: 'app', cert_fingerprint: 'ab'.repeat(32) })), 'certificates are unique');
        await store.updatePrincipal(u.id, { failed_logins: 3, locked_until: '2025-01-01T00:05:00.000Z', state: 'disabled' });
        assert.deepEqual(await store.findPrincipalById(u.id), { ...u, failed_logins: 3, locked_until: '2025-01-01T00:05:00.000Z', state: 'disabled' });
      }));

    it('deleteAllPrincipals: every principal with its credentials and grants, keys and meta untouched; atomic inside a failing transaction', (t) =>
      withStore(t, async ({ store }) => {
        const u = principalRow('frank');
        const app = principalRow('svc', { kind: 'app', roles: '[]' });
        await store.insertPrincipal(u);
        await store.insertPrincipal(app);
        await store.insertCredential({ id: 'c1', principal_id: u.id, kind: 'session', hash: hex(32), created_at: '2025-01-01T00:00:00.000Z', expires_at: null, revoked_at: null });
        const k = keyRow('kk');
        await store.insertKey(k);
        await store.putGrant({ principal_id: app.id, key_id: k.id, operations: '["encrypt"]', created_at: '2025-01-01T00:00:00.000Z', created_by: 'user:x' });
        await store.setMeta('m', 'v');
        await assert.rejects(
          store.transaction(async (tx) => {
            await tx.deleteAllPrincipals();
            throw new Error('boom');
          }),
        );
        assert.equal((await store.listPrincipals()).length, 2, 'rolled back');
        assert.deepEqual((await store.deleteAllPrincipals()).sort(), [u.id, app.id].sort());
        assert.deepEqual(await store.listPrincipals(), []);
        assert.equal(await store.findCredential('c1'), undefined);
        assert.deepEqual(await store.listGrants({ keyId: k.id }), []);
        assert.ok(await store.findKeyById(k.id));
        assert.equal(await store.getMeta('m'), 'v');
        assert.deepEqual(await store.deleteAllPrincipals(), []);
      }));

    it('credentials: CRUD and deleteExpiredSessions', (t) =>
      withStore(t, async ({ store }) => {
        const p = principalRow('dave');
        const q = principalRow('erin');
        await store.insertPrincipal(p);
        await store.insertPrincipal(q);
        const cred = (id: string, over: Partial<CredentialRow>): CredentialRow => ({
          id,
          principal_id: p.id,
          kind: 'session',
          hash: hex(32),
          created_at: '2025-01-01T00:00:00.000Z',
          expires_at: null,
          revoked_at: null,
          ...over,
        });
        const key = cred('k1', { kind: 'api_key', expires_at: '2024-01-01T00:00:00.000Z' });
        const old = cred('s-old', { expires_at: '2025-01-01T00:59:59.999Z', created_at: '2025-01-01T00:00:01.000Z' });
        const fresh = cred('s-new', { expires_at: '2025-01-01T02:00:00.000Z', created_at: '2025-01-01T00:00:02.000Z' });
        const edge = cred('s-edge', { expires_at: '2025-01-01T01:00:00.000Z', created_at: '2025-01-01T00:00:03.000Z' });
        const other = cred('s-q', { principal_id: q.id, expires_at: '2024-06-01T00:00:00.000Z' });
        for (const c of [edge, fresh, key, old, other]) await store.insertCredential(c);
        await assert.rejects(store.insertCredential(cred('k1', {})), 'ids are unique');
        assert.deepEqual(await store.findCredential('k1'), key);
        assert.equal(await store.findCredential('zz'), undefined);
        assert.deepEqual(await store.listCredentials(p.id), [key, old, fresh, edge]);
        await store.updateCredential('s-new', { revoked_at: '2025-01-01T00:30:00.000Z' });
        assert.equal((await store.findCredential('s-new'))!.revoked_at, '2025-01-01T00:30:00.000Z');

        // Strictly before; sessions only (an expired API key stays for the record).
        assert.equal(await store.deleteExpiredSessions('2025-01-01T01:00:00.000Z'), 2);
        assert.deepEqual(
          (await store.listCredentials(p.id)).map((c) => c.id),
          ['k1', 's-new', 's-edge'],
        );
        assert.deepEqual(await store.listCredentials(q.id), []);
        assert.equal(await store.deleteExpiredSessions('2025-01-01T01:00:00.000Z'), 0);
      }));

    it('login throttle: upsert per (name, source), locks listed, delete by name or pair, sweep by expiry', (t) =>
      withStore(t, async ({ store }) => {
        const row = (name: string, source: string, over: Partial<LoginThrottleRow> = {}): LoginThrottleRow => ({
          name,
          source,
          failures: 1,
          locked_until: null,
          expires_at: '2025-01-01T01:00:00.000Z',
          updated_at: '2025-01-01T00:00:00.000Z',
          ...over,
        });
        assert.equal(await store.getLoginThrottle('alice', '127.0.0.1'), undefined);
        const a1 = row('alice', '127.0.0.1');
        await store.putLoginThrottle(a1);
        assert.deepEqual(await store.getLoginThrottle('alice', '127.0.0.1'), a1);
        const a1b = row('alice', '127.0.0.1', { failures: 5, locked_until: '2025-01-01T00:10:00.000Z', expires_at: '2025-01-01T00:25:00.000Z', updated_at: '2025-01-01T00:01:00.000Z' });
        await store.putLoginThrottle(a1b);
        assert.deepEqual(await store.getLoginThrottle('alice', '127.0.0.1'), a1b, 'replaced, not duplicated');
        const a2 = row('alice', '::1', { locked_until: '2025-01-01T00:20:00.000Z', expires_at: '2025-01-01T00:35:00.000Z' });
        const b1 = row('bob', '127.0.0.1', { locked_until: '2025-01-01T00:05:00.000Z' });
        // Names that exist nowhere are counted too; any text is a key.
        const odd = row('No Such User', '10.0.0.1', { expires_at: '2024-12-31T00:00:00.000Z' });
        for (const r of [a2, b1, odd]) await store.putLoginThrottle(r);
        assert.deepEqual(await store.getLoginThrottle('alice', '::1'), a2);
        assert.equal(await store.getLoginThrottle('alice', '10.0.0.1'), undefined);

        assert.deepEqual(await store.listLoginLocks('2025-01-01T00:00:00.000Z'), [a1b, a2, b1], 'locked rows by name, source');
        assert.deepEqual(await store.listLoginLocks('2025-01-01T00:06:00.000Z'), [a1b, a2], 'only locks ending later');
        assert.deepEqual(await store.listLoginLocks('2025-01-01T00:00:00.000Z', 'bob'), [b1]);

        assert.equal(await store.deleteExpiredLoginThrottles('2025-01-01T00:00:00.000Z'), 1, 'the expired row');
        assert.equal(await store.getLoginThrottle('No Such User', '10.0.0.1'), undefined);
        assert.equal(await store.deleteLoginThrottles('alice', '::1'), 1);
        assert.deepEqual(await store.getLoginThrottle('alice', '127.0.0.1'), a1b, 'the other source stands');
        await store.putLoginThrottle(a2);
        assert.equal(await store.deleteLoginThrottles('alice'), 2, 'every source of the name');
        assert.equal(await store.deleteLoginThrottles('alice'), 0);
        assert.deepEqual(await store.getLoginThrottle('bob', '127.0.0.1'), b1, 'other names untouched');
        // Strictly before.
        assert.equal(await store.deleteExpiredLoginThrottles('2025-01-01T01:00:00.000Z'), 0);
        assert.equal(await store.deleteExpiredLoginThrottles('2025-01-01T01:00:00.001Z'), 1);
      }));

    it('grants: putGrant inserts or replaces, deleteGrant reports', (t) =>
      withStore(t, async ({ store }) => {
        const p = principalRow('app1', { kind: 'app' });
        const q = principalRow('app2', { kind: 'app' });
        const k = keyRow('k1');
        const l = keyRow('k2');
        for (const x of [p, q]) await store.insertPrincipal(x);
        for (const x of [k, l]) await store.insertKey(x);
        const g = (principal_id: string, key_id: string, operations: string) => ({ principal_id, key_id, operations, created_at: now(), created_by: 'user:admin' });
        const pk = g(p.id, k.id, '["encrypt"]');
        await store.putGrant(pk);
        await store.putGrant(g(p.id, l.id, '["decrypt"]'));
        await store.putGrant(g(q.id, k.id, '["datakey"]'));
        const pk2 = { ...pk, operations: '["encrypt","decrypt"]', created_by: 'user:other' };
        await store.putGrant(pk2);
        assert.equal((await store.listGrants({})).length, 3);
        assert.deepEqual(await store.listGrants({ principalId: p.id, keyId: k.id }), [pk2]);
        assert.deepEqual(
          (await store.listGrants({ principalId: p.id })).map((x) => x.key_id).sort(),
          [k.id, l.id].sort(),
        );
        assert.deepEqual(
          (await store.listGrants({ keyId: k.id })).map((x) => x.principal_id).sort(),
          [p.id, q.id].sort(),
        );
        assert.equal(await store.deleteGrant(p.id, k.id), true);
        assert.equal(await store.deleteGrant(p.id, k.id), false);
        assert.deepEqual(await store.listGrants({ principalId: p.id, keyId: k.id }), []);
        assert.equal((await store.listGrants({})).length, 2);
      }));

    it('approvals: insert, find, list by state, update', (t) =>
      withStore(t, async ({ store }) => {
        const a = (id: string, created_at: string, state: ApprovalRow['state'] = 'pending'): ApprovalRow => ({
          id,
          operation: 'key.destroy',
          params: '{"key":"k1"}',
          requester_id: 'p1',
          requester_name: 'alice',
          required: 2,
          approvals: '[]',
          state,
          created_at,
          expires_at: '2025-01-02T00:00:00.000Z',
          decided_at: null,
          result: null,
        });
        const a1 = a('ap1', '2025-01-01T00:00:02.000Z');
        const a2 = a('ap2', '2025-01-01T00:00:01.000Z', 'denied');
        await store.insertApproval(a1);
        await store.insertApproval(a2);
        await assert.rejects(store.insertApproval(a1));
        assert.deepEqual(await store.findApproval('ap1'), a1);
        assert.equal(await store.findApproval('ap3'), undefined);
        assert.deepEqual(await store.listApprovals(), [a2, a1]);
        assert.deepEqual(await store.listApprovals('pending'), [a1]);
        const patch = { approvals: '[{"id":"p2","name":"bob","at":"x"}]', state: 'executed' as const, decided_at: '2025-01-01T01:00:00.000Z', result: '{"ok":true}' };
        await store.updateApproval('ap1', patch);
        assert.deepEqual(await store.findApproval('ap1'), { ...a1, ...patch });
        assert.deepEqual(await store.listApprovals('pending'), []);
      }));

    it('plugin reports: upsert keeps first_seen and updates the rest; filters by app and key; ordered', (t) =>
      withStore(t, async ({ store }) => {
        const a = principalRow('app-a', { kind: 'app', roles: '[]' });
        const b = principalRow('app-b', { kind: 'app', roles: '[]' });
        for (const x of [a, b]) await store.insertPrincipal(x);
        const report = (app: PrincipalRow, cluster: string, node: string, over: Partial<PluginReportRow> = {}): PluginReportRow => ({
          app_id: app.id,
          cluster,
          node,
          key_name: 'k1',
          key_id: `kh1:${hex(8)}:${hex(8)}:1:${hex(8)}`,
          key_version: 1,
          plugin_version: '0.1.0',
          last_success: null,
          last_seen: '2025-01-01T00:00:00.000Z',
          first_seen: '2025-01-01T00:00:00.000Z',
          source: '10.0.0.1',
          version_since: '2025-01-01T00:00:00.000Z',
          ...over,
        });
        const first = report(a, 'prod', 'cp-2');
        await store.upsertPluginReport(first);
        assert.deepEqual(await store.listPluginReports({}), [first]);
        // Every column but first_seen follows the newest report.
        const second = report(a, 'prod', 'cp-2', {
          key_name: 'k2',
          key_id: 'other-provider-key-id',
          key_version: 4_294_967_295,
          plugin_version: '0.2.0',
          last_success: '2025-01-01T00:59:00.000Z',
          last_seen: '2025-01-01T01:00:00.000Z',
          first_seen: '2025-01-01T01:00:00.000Z',
          source: '10.0.0.2',
          version_since: null,
        });
        await store.upsertPluginReport(second);
        const [stored] = await store.listPluginReports({});
        assert.deepEqual(stored, { ...second, first_seen: first.first_seen });
        assert.equal(typeof stored!.key_version, 'number');
        // The last success may go back to unknown.
        await store.upsertPluginReport({ ...second, last_success: null, last_seen: '2025-01-01T02:00:00.000Z' });
        assert.equal((await store.listPluginReports({}))[0]!.last_success, null);

        const others = [report(b, 'edge', 'n1', { key_name: 'k1' }), report(a, 'prod', 'cp-1', { key_name: 'k1' }), report(a, 'dev', 'cp-1', { key_name: 'k2' })];
        for (const r of others) await store.upsertPluginReport(r);
        const keys = (rows: PluginReportRow[]) => rows.map((r) => `${r.app_id === a.id ? 'a' : 'b'}/${r.cluster}/${r.node}`);
        const aFirst = a.id < b.id;
        const aRows = ['a/dev/cp-1', 'a/prod/cp-1', 'a/prod/cp-2'];
        assert.deepEqual(keys(await store.listPluginReports({})), aFirst ? [...aRows, 'b/edge/n1'] : ['b/edge/n1', ...aRows]);
        assert.deepEqual(keys(await store.listPluginReports({ appId: a.id })), aRows);
        assert.deepEqual(keys(await store.listPluginReports({ keyName: 'k1' })), aFirst ? ['a/prod/cp-1', 'b/edge/n1'] : ['b/edge/n1', 'a/prod/cp-1']);
        assert.deepEqual(keys(await store.listPluginReports({ appId: a.id, keyName: 'k2' })), ['a/dev/cp-1', 'a/prod/cp-2']);
        assert.deepEqual(await store.listPluginReports({ appId: b.id, keyName: 'k2' }), []);
        assert.deepEqual(await store.listPluginReports({ appId: 'ffffffffffffffff' }), []);
        await assert.rejects(store.upsertPluginReport(report(principalRow('ghost'), 'prod', 'cp-1')), 'a report names an existing principal');

        // Inside a transaction that fails, nothing is written.
        await assert.rejects(
          store.transaction(async (tx) => {
            await tx.upsertPluginReport(report(b, 'lost', 'n1'));
            throw new Error('boom');
          }),
          /boom/,
        );
        assert.deepEqual(keys(await store.listPluginReports({ appId: b.id })), ['b/edge/n1']);
      }));

    it('scan reports: one per cluster, the latest replaces the previous; ordered by cluster', (t) =>
      withStore(t, async ({ store }) => {
        const report = (cluster: string, over: Partial<ScanReportRow> = {}): ScanReportRow => ({
          cluster,
          scanned_at: '2026-01-01T00:00:00.000Z',
          source: 'etcd https://10.0.0.1:2379',
          objects: 10,
          plaintext: 1,
          by_key_id: JSON.stringify([{ keyId: 'kh1:x', count: 9 }]),
          by_form: JSON.stringify([{ form: 'kms-v2', provider: 'keyhaven', count: 9 }]),
          reporter: 'user:ka',
          received_at: '2026-01-01T00:00:01.000Z',
          ...over,
        });
        assert.deepEqual(await store.listScanReports(), []);
        const b = report('b');
        await store.putScanReport(b);
        await store.putScanReport(report('a'));
        const newer = report('b', { scanned_at: '2026-01-02T00:00:00.000Z', objects: 4_294_967_296, plaintext: 0, by_key_id: '[]', reporter: 'app:scanner' });
        await store.putScanReport(newer);
        const rows = await store.listScanReports();
        assert.deepEqual(rows.map((r) => r.cluster), ['a', 'b']);
        assert.deepEqual(rows[1], newer);
        assert.equal(typeof rows[1]!.objects, 'number');
        await assert.rejects(
          store.transaction(async (tx) => {
            await tx.putScanReport(report('lost'));
            throw new Error('boom');
          }),
          /boom/,
        );
        assert.equal((await store.listScanReports()).length, 2);
      }));

    it('recoveries: insert, find, update, list newest first with filters; kept after the app is deleted', (t) =>
      withStore(t, async ({ store }) => {
        const app = principalRow('bg', { kind: 'app', roles: '[]', break_glass: 1 });
        await store.insertPrincipal(app);
        assert.equal((await store.findPrincipalById(app.id))!.break_glass, 1);
        const rec = (id: string, created: string, over: Partial<RecoveryRow> = {}): RecoveryRow => ({
          id,
          app_id: app.id,
          app_name: app.name,
          reason: 'restore after etcd loss',
          cluster: null,
          state: 'pending',
          approval_id: null,
          created_at: created,
          opened_at: null,
          expires_at: null,
          closed_at: null,
          closed_by: null,
          objects: null,
          failed: null,
          ...over,
        });
        const r1 = rec('00000000000000a1', '2026-01-01T00:00:00.000Z', { cluster: 'prod', approval_id: '00000000000000ff' });
        const r2 = rec('00000000000000a2', '2026-01-02T00:00:00.000Z', { app_id: 'ffffffffffffffff', app_name: 'other' });
        await store.insertRecovery(r1);
        await store.insertRecovery(r2);
        assert.deepEqual(await store.findRecovery(r1.id), r1);
        assert.equal(await store.findRecovery('0000000000000000'), undefined);
        await assert.rejects(store.insertRecovery(r1), 'ids are unique');
        const opened = { state: 'open' as const, opened_at: '2026-01-03T00:00:00.000Z', expires_at: '2026-01-03T01:00:00.000Z' };
        await store.updateRecovery(r1.id, opened);
        const closed = { state: 'closed' as const, closed_at: '2026-01-03T00:30:00.000Z', closed_by: 'app:bg', objects: 4_294_967_296, failed: 0 };
        await store.updateRecovery(r1.id, closed);
        const got = await store.findRecovery(r1.id);
        assert.deepEqual(got, { ...r1, ...opened, ...closed });
        assert.equal(typeof got!.objects, 'number');
        assert.deepEqual((await store.listRecoveries({})).map((r) => r.id), [r2.id, r1.id]);
        assert.deepEqual((await store.listRecoveries({ appId: app.id })).map((r) => r.id), [r1.id]);
        assert.deepEqual((await store.listRecoveries({ state: 'pending' })).map((r) => r.id), [r2.id]);
        assert.deepEqual(await store.listRecoveries({ appId: app.id, state: 'open' }), []);
        assert.ok(await store.deletePrincipal(app.id));
        assert.deepEqual((await store.findRecovery(r1.id))?.app_name, 'bg');
      }));

    it('appendAudit: links records, continues the chain, writes the head', (t) =>
      withStore(t, async ({ store }) => {
        assert.deepEqual(await store.appendAudit([], linkRecord), []);
        const first = await store.appendAudit([draft(1), draft(2, { key_name: null, key_version: null, request_id: null, details: '{"n":1}' }), draft(3)], linkRecord);
        assert.deepEqual(
          first.map((r) => r.seq),
          [1, 2, 3],
        );
        assert.equal(first[0]!.prev_hash, '0'.repeat(64));
        assert.equal(first[1]!.prev_hash, first[0]!.hash);
        assert.equal(await store.getMeta('audit_head'), undefined, 'no head unless asked');
        // More rows than one insert statement carries.
        const big = await store.appendAudit(
          Array.from({ length: 200 }, (_, i) => draft(10 + i, { actor: `user:u${i % 3}` })),
          linkRecord,
          { head, fsync: false },
        );
        assert.equal(big[0]!.seq, 4);
        assert.equal(big[0]!.prev_hash, first[2]!.hash);
        assert.equal(big.at(-1)!.seq, 203);
        assert.equal(await store.getMeta('audit_head'), head(big.at(-1)!));
        const last = await store.appendAudit([draft(999)], linkRecord, { head, fsync: true });
        assert.equal(last[0]!.seq, 204);
        assert.equal(await store.getMeta('audit_head'), head(last[0]!));

        const all = await store.readAudit(0, 1000);
        assert.equal(all.length, 204);
        assert.ok(all.every((r) => typeof r.seq === 'number' && typeof r.key_version !== 'string'));
        assert.deepEqual(all[1], first[1], 'stored exactly as returned, nulls included');
        assert.deepEqual(verifyRecords(all), { ok: true, records: 204 });
      }));

    it('appendAudit: a linker that throws writes nothing', (t) =>
      withStore(t, async ({ store }) => {
        await store.appendAudit([draft(1)], linkRecord);
        let n = 0;
        const bad = (p: string, s: number, d: AuditDraft) => {
          if (++n === 2) throw new Error('linker failed');
          return linkRecord(p, s, d);
        };
        await assert.rejects(store.appendAudit([draft(2), draft(3)], bad, { head }), /linker failed/);
        assert.equal((await store.readAudit(0, 10)).length, 1);
        assert.equal(await store.getMeta('audit_head'), undefined);
        assert.equal((await store.appendAudit([draft(4)], linkRecord))[0]!.seq, 2);
      }));

    it('readAudit pages in seq order', (t) =>
      withStore(t, async ({ store }) => {
        await store.appendAudit(Array.from({ length: 25 }, (_, i) => draft(i)), linkRecord);
        const pages: number[][] = [];
        for (let after = 0; ; ) {
          const page = await store.readAudit(after, 10);
          if (page.length === 0) break;
          pages.push(page.map((r) => r.seq));
          after = page.at(-1)!.seq;
        }
        assert.deepEqual(
          pages.map((p) => p.length),
          [10, 10, 5],
        );
        assert.deepEqual(pages.flat(), Array.from({ length: 25 }, (_, i) => i + 1));
        assert.deepEqual(await store.readAudit(25, 10), []);
        assert.deepEqual(
          (await store.readAudit(3, 2)).map((r) => r.seq),
          [4, 5],
        );
      }));

    it('queryAudit: each filter, combined with AND', (t) =>
      withStore(t, async ({ store }) => {
        // 12 records one second apart; actors, keys and operations rotate.
        const actors = ['app:a', 'app:b', 'user:c'];
        const keys = ['k1', 'k2', null];
        const ops = ['encrypt', 'decrypt'];
        await store.appendAudit(
          Array.from({ length: 12 }, (_, i) => draft(i, { actor: actors[i % 3]!, key_name: keys[i % 3]!, operation: ops[i % 2]! })),
          linkRecord,
        );
        const seqs = async (q: Parameters<Store['queryAudit']>[0]) => (await store.queryAudit(q)).map((r) => r.seq);
        const t0 = (i: number) => draft(i).time;
        assert.deepEqual(await seqs({ limit: 100 }), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert.deepEqual(await seqs({ limit: 3 }), [1, 2, 3]);
        assert.deepEqual(await seqs({ afterSeq: 9, limit: 100 }), [10, 11, 12]);
        assert.deepEqual(await seqs({ since: t0(9), limit: 100 }), [10, 11, 12], 'since is inclusive');
        assert.deepEqual(await seqs({ until: t0(2), limit: 100 }), [1, 2, 3], 'until is inclusive');
        assert.deepEqual(await seqs({ since: t0(3), until: t0(5), limit: 100 }), [4, 5, 6]);
        assert.deepEqual(await seqs({ actor: 'app:b', limit: 100 }), [2, 5, 8, 11]);
        assert.deepEqual(await seqs({ keyName: 'k1', limit: 100 }), [1, 4, 7, 10]);
        assert.deepEqual(await seqs({ operation: 'decrypt', limit: 100 }), [2, 4, 6, 8, 10, 12]);
        assert.deepEqual(await seqs({ actor: 'app:a', operation: 'decrypt', limit: 100 }), [4, 10]);
        assert.deepEqual(await seqs({ actor: 'app:a', operation: 'decrypt', afterSeq: 4, limit: 100 }), [10]);
        assert.deepEqual(await seqs({ keyName: 'k2', since: t0(4), until: t0(10), limit: 1 }), [5]);
        assert.deepEqual(await seqs({ actor: 'nobody', limit: 100 }), []);
        assert.deepEqual(await seqs({ actor: undefined, keyName: undefined, limit: 2 }), [1, 2], 'undefined filters are ignored');
      }));

    it('transaction: commits and returns; a throw persists nothing, audit rows included', (t) =>
      withStore(t, async ({ store }) => {
        const k = keyRow('keep');
        const out = await store.transaction(async (tx) => {
          await tx.insertKey(k);
          await tx.appendAudit([draft(1)], linkRecord, { head });
          return 42;
        });
        assert.equal(out, 42);
        assert.deepEqual(await store.findKeyByName('keep'), k);

        const boom = new Error('boom');
        await assert.rejects(
          store.transaction(async (tx) => {
            await tx.insertKey(keyRow('lost'));
            await tx.updateKey(k.id, { state: 'disabled' });
            await tx.setMeta('m', 'x');
            await tx.barrierPut('p', Buffer.from('v'));
            await tx.appendAudit([draft(2), draft(3)], linkRecord, { head });
            assert.equal((await tx.readAudit(0, 10)).length, 3, 'visible inside');
            throw boom;
          }),
          (e) => e === boom,
        );
        assert.equal(await store.findKeyByName('lost'), undefined);
        assert.equal((await store.findKeyById(k.id))!.state, 'enabled');
        assert.equal(await store.getMeta('m'), undefined);
        assert.equal(await store.barrierGet('p'), undefined);
        const rows = await store.readAudit(0, 10);
        assert.equal(rows.length, 1);
        assert.equal(await store.getMeta('audit_head'), head(rows[0]!));
        // The chain goes on from the last committed record.
        await store.appendAudit([draft(4)], linkRecord);
        assert.deepEqual(verifyRecords(await store.readAudit(0, 10)), { ok: true, records: 2 });
      }));

    it('transaction: a failed statement rolls the whole transaction back', (t) =>
      withStore(t, async ({ store }) => {
        await store.insertKey(keyRow('dup'));
        await assert.rejects(
          store.transaction(async (tx) => {
            await tx.setMeta('m', 'x');
            await tx.insertKey(keyRow('dup'));
          }),
        );
        assert.equal(await store.getMeta('m'), undefined);
        // The store is usable afterwards (the connection was not left mid-transaction).
        await store.transaction((tx) => tx.setMeta('m', 'y'));
        assert.equal(await store.getMeta('m'), 'y');
      }));

    it('transaction: a nested transaction joins the outer one', (t) =>
      withStore(t, async ({ store }) => {
        await assert.rejects(
          store.transaction(async (tx) => {
            await tx.setMeta('outer', '1');
            const v = await tx.transaction(async (inner) => {
              await inner.setMeta('inner', '1');
              await inner.appendAudit([draft(1)], linkRecord);
              assert.equal(await inner.getMeta('outer'), '1', 'sees the outer writes');
              return 'v';
            });
            assert.equal(v, 'v');
            assert.equal(await tx.getMeta('inner'), '1');
            throw new Error('outer fails');
          }),
          /outer fails/,
        );
        assert.equal(await store.getMeta('outer'), undefined);
        assert.equal(await store.getMeta('inner'), undefined, 'the inner writes went with the outer rollback');
        assert.deepEqual(await store.readAudit(0, 10), []);

        await store.transaction(async (tx) => {
          await tx.transaction((inner) => inner.setMeta('inner', '2'));
          await tx.setMeta('outer', '2');
        });
        assert.equal(await store.getMeta('inner'), '2');
        assert.equal(await store.getMeta('outer'), '2');
      }));

    it('concurrency: two stores appending 200 records each keep one contiguous chain', (t) =>
      withStore(t, async ({ store, config }) => {
        const peers = ['app:one', 'app:two'].map((actor) => startPeer(config, { kind: 'audit', actor, records: 200, batch: 5, parallel: 4 }));
        await Promise.all(peers.map((p) => p.ready));
        for (const p of peers) p.go();
        const seqs = (await Promise.all(peers.map((p) => p.done))) as number[][];
        for (const s of seqs) assert.equal(s.length, 200);
        assert.deepEqual(
          seqs.flat().sort((a, b) => a - b),
          Array.from({ length: 400 }, (_, i) => i + 1),
        );
        const rows = await store.readAudit(0, 1000);
        assert.deepEqual(
          rows.map((r) => r.seq),
          Array.from({ length: 400 }, (_, i) => i + 1),
        );
        for (let i = 1; i < rows.length; i++) assert.equal(rows[i]!.prev_hash, rows[i - 1]!.hash, `record ${i + 1} links to record ${i}`);
        assert.deepEqual(verifyRecords(rows), { ok: true, records: 400 });
        assert.equal(await store.getMeta('audit_head'), head(rows.at(-1)!), 'the head names the newest record');
        // Both writers really interleaved (not one after the other).
        const firstTwo = rows.findIndex((r) => r.actor === 'app:two');
        const firstOne = rows.findIndex((r) => r.actor === 'app:one');
        const lastOne = rows.map((r) => r.actor).lastIndexOf('app:one');
        const lastTwo = rows.map((r) => r.actor).lastIndexOf('app:two');
        const overlapped = firstTwo < lastOne && firstOne < lastTwo;
        t.diagnostic(`writers overlapped: ${overlapped}`);
        // SQLite's busy handler polls with growing sleeps, so one writer may
        // well finish before the other gets in; PostgreSQL queues lock waiters.
        if (opts.fairLock) assert.ok(overlapped, 'the two writers overlapped');
      }));

    it('concurrency: read-modify-write in transactions loses no update', (t) =>
      withStore(t, async ({ store, config }) => {
        const k = keyRow('counter');
        await store.insertKey(k);
        await store.insertKeyVersion({ key_id: k.id, version: 1, tag: hex(4), state: 'active', created_at: now(), destroyed_at: null });
        const rounds = 40;
        const peers = [0, 1].map(() => startPeer(config, { kind: 'rmw', keyId: k.id, rounds, parallel: 3 }));
        await Promise.all(peers.map((p) => p.ready));
        for (const p of peers) p.go();
        await Promise.all(peers.map((p) => p.done));
        assert.equal((await store.findKeyById(k.id))!.current_version, 1 + 2 * rounds);
        assert.deepEqual(
          (await store.listKeyVersions(k.id)).map((v) => v.version),
          Array.from({ length: 1 + 2 * rounds }, (_, i) => i + 1),
        );
      }));

    it('concurrency: sign-in reservations in transactions admit exactly the limit across stores', (t) =>
      withStore(t, async ({ store, config }) => {
        const limit = 5;
        const peers = [0, 1].map(() => startPeer(config, { kind: 'throttle', name: 'admin', source: '203.0.113.7', attempts: 20, limit, parallel: 4 }));
        await Promise.all(peers.map((p) => p.ready));
        for (const p of peers) p.go();
        const admitted = (await Promise.all(peers.map((p) => p.done))) as number[];
        assert.equal(admitted[0]! + admitted[1]!, limit, `admitted ${admitted.join(' + ')}`);
        assert.equal((await store.getLoginThrottle('admin', '203.0.113.7'))!.failures, limit);
      }));

    it('concurrency: appendAudit outside a transaction waits for another writer', (t) =>
      withStore(t, async ({ store, config }) => {
        const holder = startPeer(config, { kind: 'hold', holdMs: 400 });
        await holder.ready;
        holder.go();
        await holder.next('holding');
        // The holder's record is not committed yet: appending now must wait
        // for it rather than reuse seq 1 or link to the genesis hash.
        // Plain writes wait too (on SQLite the connection's busy timeout does this).
        const metaWritten = store.setMeta('late', '1').then(() => Date.now());
        const [row] = await store.appendAudit([draft(1, { actor: 'late' })], linkRecord, { head });
        const appendedAt = Date.now();
        const held = (await holder.done) as { seq: number; committedAt: number };
        assert.equal(held.seq, 1);
        assert.equal(row!.seq, 2);
        assert.ok(appendedAt >= held.committedAt, 'the append finished after the holder committed');
        assert.ok((await metaWritten) >= held.committedAt, 'the meta write finished after the holder committed');
        const rows = await store.readAudit(0, 10);
        assert.deepEqual(
          rows.map((r) => r.actor),
          ['holder', 'late'],
        );
        assert.deepEqual(verifyRecords(rows), { ok: true, records: 2 });
        assert.equal(await store.getMeta('audit_head'), head(rows[1]!));
      }));
  });
}

if (!isMainThread && (workerData as Record<string, unknown> | null)?.[WORKER_FLAG]) {
  await runPeer();
} else {
  contract(
    'sqlite',
    { available: async () => true, reason: 'SQLite', fairLock: false },
    async () => {
      const dir = ownedTempDir('kh-contract-');
      const path = join(dir, 'keyhaven.db');
      const config: StoreConfig = { sqlite: { path, create: true } };
      const store = await openStore(config);
      return {
        store,
        config: { sqlite: { path, create: false } },
        async cleanup() {
          await store.close();
          rmSync(dir, { recursive: true, force: true });
        },
      };
    },
  );

  contract('postgres', { available: postgresAvailable, reason: POSTGRES_REASON, fairLock: true }, async () => {
    const db = await freshPostgresDatabase();
    if (!db) throw new Error('PostgreSQL went away');
    const config: StoreConfig = { postgres: { url: db.url, poolSize: 4 } };
    const store = await openStore(config);
    return {
      store,
      config,
      async cleanup() {
        await store.close();
        await db.drop();
      },
    };
  });
}
