import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import pg from 'pg';
import { verifyRecords } from '../src/audit/chain.js';
import type { AuditRow } from '../src/storage/store.js';
import { removeDir, tempDir, waitFor } from './helpers.js';
import { freshPostgresDatabase, postgresAvailable, POSTGRES_REASON } from './pg.js';
import { requireDependency } from './require.js';
import { api, initServer, login, setupCast, startServerProcess, type ApiResult, type Cast, type ServerProcess } from './server-helpers.js';

// Key servers on PostgreSQL: one end to end, then two processes sharing one
// database (one root key file, one init).

const b64 = (s: string) => Buffer.from(s).toString('base64');

async function readAudit(url: string, token: string, query = ''): Promise<AuditRow[]> {
  const out: AuditRow[] = [];
  let after = 0;
  for (;;) {
    const r = await api(url, 'GET', `/v1/audit?after=${after}&limit=10000${query ? `&${query}` : ''}`, { token });
    assert.equal(r.status, 200, r.text);
    const rows = r.text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as AuditRow);
    out.push(...rows);
    if (rows.length < 10000) return out;
    after = rows[rows.length - 1]!.seq;
  }
}

async function verifyOk(url: string, token: string): Promise<number> {
  const v = await api(url, 'GET', '/v1/audit/verify', { token });
  assert.equal(v.status, 200, v.text);
  assert.equal(v.body.ok, true, JSON.stringify(v.body));
  return v.body.records as number;
}

const available = await postgresAvailable();

describe('key server on PostgreSQL', () => {
  let db: Awaited<ReturnType<typeof freshPostgresDatabase>>;
  let dir = '';
  let dir2 = '';
  let a: ServerProcess | undefined;
  let b: ServerProcess | undefined;
  let cast: Cast;
  let storage: Record<string, unknown> = {};
  let seal: Record<string, unknown> = {};

  before(async () => {
    if (!available) return;
    db = await freshPostgresDatabase();
    dir = tempDir('kh-pg-a-');
    dir2 = tempDir('kh-pg-b-');
    storage = { postgres: { url: db!.url, poolSize: 4 } };
    seal = { keyfile: { path: join(dir, 'root.key') } };
  });
  after(async () => {
    await Promise.all([a?.stop(), b?.stop()]);
    await db?.drop();
    if (dir) removeDir(dir);
    if (dir2) removeDir(dir2);
  });

  it('end to end on a fresh database: init, users and apps, encrypt/decrypt, rotate, audit verify', async (t) => {
    if (!requireDependency(t, available, POSTGRES_REASON)) return;
    a = await startServerProcess({ dir, config: { storage, seal } });
    cast = await setupCast(a.url);
    const enc = await api(a.url, 'POST', '/v1/keys/k1/encrypt', { token: cast.appKey, body: { plaintext: b64('on postgres') } });
    assert.equal(enc.status, 200, enc.text);
    const rot = await api(a.url, 'POST', '/v1/keys/k1/rotate', { token: cast.keyAdmin, body: {} });
    assert.equal(rot.status, 200, rot.text);
    assert.equal(rot.body.currentVersion, 2);
    const enc2 = await api(a.url, 'POST', '/v1/keys/k1/encrypt', { token: cast.appKey, body: { plaintext: b64('after rotate') } });
    assert.equal(enc2.body.version, 2);
    for (const [ct, pt] of [[enc.body.ciphertext, 'on postgres'], [enc2.body.ciphertext, 'after rotate']] as const) {
      const d: ApiResult = await api(a.url, 'POST', '/v1/keys/k1/decrypt', { token: cast.appKey, body: { ciphertext: ct } });
      assert.equal(d.status, 200, d.text);
      assert.equal(Buffer.from(d.body.plaintext, 'base64').toString(), pt);
    }
    // The data is in PostgreSQL: nothing was written beside the config but the root key.
    const c = new pg.Client({ connectionString: db!.url });
    await c.connect();
    try {
      const n = await c.query('select count(*)::int as n from key_versions');
      assert.equal(n.rows[0].n, 2);
    } finally {
      await c.end();
    }
    await verifyOk(a.url, cast.auditor);
    // Restart: auto-unseal from the same key file, data intact.
    await a.stop();
    a = await startServerProcess({ dir, config: { storage, seal } });
    const d = await api(a.url, 'POST', '/v1/keys/k1/decrypt', { token: cast.appKey, body: { ciphertext: enc.body.ciphertext } });
    assert.equal(d.status, 200, d.text);
    await verifyOk(a.url, cast.auditor);
  });

  it('two servers on one database both serve encrypts concurrently; the chain stays intact and contiguous', async (t) => {
    if (!requireDependency(t, available, POSTGRES_REASON)) return;
    assert.ok(a, 'the first server runs');
    b = await startServerProcess({ dir: dir2, config: { storage, seal } });
    const h = await api(b.url, 'GET', '/v1/sys/health');
    assert.equal(h.status, 200, 'the second server unsealed itself with the shared key file');
    const servers = [a!, b];
    const acked: { id: string; ct: string; pt: string; on: number }[] = [];
    const failures: string[] = [];
    const verifies: unknown[] = [];
    let stop = false;
    const loop = async (w: number) => {
      const srv = servers[w % 2]!;
      for (let i = 0; !stop && i < 60; i++) {
        const pt = `w${w}-${i}`;
        const r: ApiResult = await api(srv.url, 'POST', '/v1/keys/k1/encrypt', { token: cast.appKey, body: { plaintext: b64(pt) } });
        if (r.status === 200) acked.push({ id: r.headers.get('x-request-id')!, ct: r.body.ciphertext, pt, on: w % 2 });
        else failures.push(`${r.status} ${r.text}`);
      }
    };
    // Verification while both write must not report a break.
    const verifier = async () => {
      while (!stop) {
        const v = await api(servers[verifies.length % 2]!.url, 'GET', '/v1/audit/verify', { token: cast.auditor });
        verifies.push(v.body);
      }
    };
    const loops = Array.from({ length: 8 }, (_, w) => loop(w));
    const ver = verifier();
    await Promise.all(loops);
    stop = true;
    await ver;
    assert.deepEqual(failures, []);
    assert.equal(acked.length, 8 * 60);
    assert.ok(verifies.length > 0);
    const broken = verifies.filter((v) => (v as { ok: boolean }).ok !== true);
    assert.deepEqual(broken, [], `verify reported a break while two servers wrote (${broken.length} of ${verifies.length})`);

    // Each server decrypts what the other encrypted.
    for (const on of [0, 1]) {
      const mine = acked.filter((x) => x.on === on).slice(0, 100);
      const other = servers[1 - on]!;
      const d = await api(other.url, 'POST', '/v1/keys/k1/decrypt', { token: cast.appKey, body: { batch: mine.map((x) => ({ ciphertext: x.ct })) } });
      assert.equal(d.status, 200, d.text);
      d.body.batch.forEach((item: { plaintext: string }, i: number) => assert.equal(Buffer.from(item.plaintext, 'base64').toString(), mine[i]!.pt));
    }
    const rows = await readAudit(b.url, cast.auditor);
    assert.deepEqual(rows.map((r) => r.seq), rows.map((_, i) => i + 1), 'seq is contiguous from 1');
    assert.deepEqual(verifyRecords(rows), { ok: true, records: rows.length });
    const ids = new Set(rows.map((r) => r.request_id));
    assert.equal(acked.filter((x) => !ids.has(x.id)).length, 0, 'every acknowledged encrypt has its record');
    for (const srv of servers) await verifyOk(srv.url, cast.auditor);
  });

  it('a due rotation is done exactly once by the two schedulers', async (t) => {
    if (!requireDependency(t, available, POSTGRES_REASON)) return;
    assert.ok(a && b, 'both servers run');
    const p = await api(a!.url, 'PUT', '/v1/keys/k1/policy', { token: cast.keyAdmin, body: { rotationPeriod: '30d' } });
    assert.equal(p.status, 200, p.text);
    const before = p.body.currentVersion as number;
    const c = new pg.Client({ connectionString: db!.url });
    await c.connect();
    try {
      const res = await c.query("update keys set next_rotation_at = $1 where name = 'k1'", [new Date(Date.now() - 60_000).toISOString()]);
      assert.equal(res.rowCount, 1);
    } finally {
      await c.end();
    }
    for (const srv of [a!, b!]) {
      await waitFor(async () => {
        const k = await api(srv.url, 'GET', '/v1/keys/k1', { token: cast.keyAdmin });
        return k.body.currentVersion > before ? true : undefined;
      }, 'the scheduled rotation', 15_000);
    }
    // Give both schedulers several more ticks to (wrongly) rotate again.
    await new Promise((r) => setTimeout(r, 3000));
    for (const srv of [a!, b!]) {
      const k = await api(srv.url, 'GET', '/v1/keys/k1', { token: cast.keyAdmin });
      assert.equal(k.body.currentVersion, before + 1, 'rotated by exactly one version');
    }
    const rot = (await readAudit(a!.url, cast.auditor, 'operation=key.rotate&principal=system:scheduler')).filter((r) => r.key_name === 'k1');
    assert.equal(rot.length, 1, `one scheduled rotation record, found ${rot.length}`);
    assert.equal(JSON.parse(rot[0]!.details!).scheduled, true);
    assert.equal(rot[0]!.key_version, before + 1);
    // Encrypts on either server now use the new version.
    for (const srv of [a!, b!]) {
      const e = await api(srv.url, 'POST', '/v1/keys/k1/encrypt', { token: cast.appKey, body: { plaintext: b64('x') } });
      assert.equal(e.body.version, before + 1, e.text);
    }
    await verifyOk(b!.url, cast.auditor);
  });
});

describe('servers started together on an empty PostgreSQL database', () => {
  it('a server started before another one ran init picks up the init and unseals itself', async (t) => {
    if (!requireDependency(t, available, POSTGRES_REASON)) return;
    const db = (await freshPostgresDatabase())!;
    const [d1, d2] = [tempDir('kh-pg-c-'), tempDir('kh-pg-d-')];
    const config = { storage: { postgres: { url: db.url, poolSize: 2 } }, seal: { keyfile: { path: join(d1, 'root.key') } } };
    const servers: ServerProcess[] = [];
    try {
      servers.push(...(await Promise.all([startServerProcess({ dir: d1, config }), startServerProcess({ dir: d2, config })])));
      const [first, second] = servers as [ServerProcess, ServerProcess];
      assert.equal((await api(second.url, 'GET', '/v1/sys/seal-status')).body.initialized, false);
      const init = await initServer(first.url);
      // The first login confirms the init; from then on it happens once across servers.
      await login(first.url, init.admin.name, init.admin.password);
      const again = await api(second.url, 'POST', '/v1/sys/init', { body: {} });
      assert.equal(again.status, 409, 'init happens once across servers');
      await waitFor(async () => ((await api(second.url, 'GET', '/v1/sys/health')).status === 200 ? true : undefined), 'the second server to unseal', 15_000);
      const tok = await login(second.url, init.admin.name, init.admin.password);
      assert.equal((await api(second.url, 'GET', '/v1/auth/whoami', { token: tok })).status, 200);
    } finally {
      await Promise.all(servers.map((x) => x.stop()));
      await db.drop();
      removeDir(d1);
      removeDir(d2);
    }
  });
});
