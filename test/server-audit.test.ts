import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createSocket, type Socket } from 'node:dgram';
import { copyFileSync, existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { linkRecord, verifyRecords } from '../src/audit/chain.js';
import type { AuditRow } from '../src/storage/store.js';
import { cli, removeDir, tempDir, waitFor } from './helpers.js';
import { api, initServer, login, setupCast, startServerProcess, type ApiResult, type Cast, type ServerProcess } from './server-helpers.js';

// The key server's audit log over HTTP: what each record carries, what it
// never carries, tamper detection offline and online, export, filters, sinks.

const b64 = (s: string) => Buffer.from(s).toString('base64');

/** Every record (or a filtered set), paging until a short page. */
async function readAudit(url: string, token: string, query = ''): Promise<AuditRow[]> {
  const out: AuditRow[] = [];
  let after = 0;
  for (;;) {
    const r = await api(url, 'GET', `/v1/audit?after=${after}&limit=1000${query ? `&${query}` : ''}`, { token });
    assert.equal(r.status, 200, r.text);
    const rows = r.text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as AuditRow);
    out.push(...rows);
    if (rows.length < 1000) return out;
    after = rows[rows.length - 1]!.seq;
  }
}

function details(r: AuditRow): Record<string, unknown> {
  return r.details ? (JSON.parse(r.details) as Record<string, unknown>) : {};
}

function byRequestId(rows: AuditRow[], id: string | null): AuditRow {
  assert.ok(id, 'the answer carries x-request-id');
  const hits = rows.filter((r) => r.request_id === id);
  assert.equal(hits.length, 1, `exactly one record for request ${id}`);
  return hits[0]!;
}

const rid = (r: ApiResult) => r.headers.get('x-request-id');

describe('audit records of HTTP requests', () => {
  let s: ServerProcess;
  let cast: Cast;

  before(async () => {
    s = await startServerProcess();
    cast = await setupCast(s.url);
  });
  after(async () => {
    await s?.stop();
    if (s) removeDir(s.dir);
  });

  it('an encrypt from a plugin: time, actor, role, source, operation, key, version, result, request id, cluster and uid', async () => {
    const before = Date.now();
    const r = await api(s.url, 'POST', '/v1/keys/k1/encrypt', {
      token: cast.appKey,
      body: { plaintext: b64('hello') },
      headers: { 'x-keyhaven-cluster': 'prod-eu-1', 'x-keyhaven-uid': 'a1b2c3d4-uid' },
    });
    assert.equal(r.status, 200, r.text);
    const rec = byRequestId(await readAudit(s.url, cast.auditor), rid(r));
    const t = Date.parse(rec.time);
    assert.ok(t >= before - 1000 && t <= Date.now() + 1000, `time ${rec.time} is now`);
    assert.equal(rec.actor, 'app:app1');
    assert.equal(rec.operation, 'crypto.encrypt');
    assert.equal(rec.key_name, 'k1');
    assert.equal(rec.key_version, 1);
    assert.equal(rec.result, 'ok');
    const d = details(rec);
    assert.equal(d.role, 'app');
    assert.equal(d.source, '127.0.0.1');
    assert.equal(d.status, 200);
    assert.equal(d.cluster, 'prod-eu-1');
    assert.equal(d.uid, 'a1b2c3d4-uid');
  });

  it('a key-admin rotation names the user, the role and the new version', async () => {
    const r = await api(s.url, 'POST', '/v1/keys/k1/rotate', { token: cast.keyAdmin, body: {} });
    assert.equal(r.status, 200, r.text);
    const rows = await readAudit(s.url, cast.auditor);
    const rec = byRequestId(rows, rid(r));
    assert.equal(rec.actor, 'user:keyadmin');
    assert.equal(rec.operation, 'key.rotate');
    assert.equal(rec.key_name, 'k1');
    assert.equal(rec.key_version, 2);
    assert.equal(rec.result, 'ok');
    assert.equal(details(rec).role, 'key-admin');
    assert.equal(details(rec).source, '127.0.0.1');
  });

  it('denied requests, bad tokens, failed logins and unknown routes are recorded with their outcome', async () => {
    const calls: [ApiResult, Partial<AuditRow> & { role?: string }][] = [
      [await api(s.url, 'POST', '/v1/keys/k1/encrypt', { token: cast.strangerKey, body: { plaintext: b64('x') } }), { actor: 'app:stranger', operation: 'crypto.encrypt', result: 'permission_denied', key_name: 'k1', role: 'app' }],
      [await api(s.url, 'POST', '/v1/keys/k1/encrypt', { token: cast.keyAdmin, body: { plaintext: b64('x') } }), { actor: 'user:keyadmin', operation: 'crypto.encrypt', result: 'permission_denied', role: 'key-admin' }],
      [await api(s.url, 'POST', '/v1/keys', { token: cast.auditor, body: { name: 'nope' } }), { actor: 'user:auditor', operation: 'key.create', result: 'permission_denied', role: 'auditor' }],
      [await api(s.url, 'GET', '/v1/keys'), { actor: 'anonymous', operation: 'key.list', result: 'unauthenticated' }],
      [await api(s.url, 'GET', '/v1/keys', { token: 'khs_notarealtoken' }), { actor: 'anonymous', operation: 'key.list', result: 'unauthenticated' }],
      [await api(s.url, 'POST', '/v1/auth/login', { body: { name: 'auditor', password: 'wrong-password-1' } }), { actor: 'anonymous', operation: 'auth.login', result: 'unauthenticated' }],
      [await api(s.url, 'GET', '/v1/no/such/route', { token: cast.auditor }), { operation: 'http.unknown', result: 'not_found' }],
    ];
    const rows = await readAudit(s.url, cast.auditor);
    for (const [res, want] of calls) {
      assert.ok(res.status >= 400, `${want.operation} was refused (${res.status})`);
      const rec = byRequestId(rows, rid(res));
      const { role, ...fields } = want;
      for (const [k, v] of Object.entries(fields)) assert.equal(rec[k as keyof AuditRow], v, `${want.operation} ${want.result}: ${k}`);
      const d = details(rec);
      assert.equal(d.status, res.status);
      assert.equal(d.source, '127.0.0.1');
      if (role) assert.equal(d.role, role);
    }
    const failedLogin = byRequestId(rows, rid(calls[5]![0]));
    assert.equal(details(failedLogin).user, 'auditor', 'the attempted user name is recorded');
  });

  it('every answer\'s x-request-id has exactly one record', async () => {
    const ids: string[] = [];
    const reqs: Promise<ApiResult>[] = [];
    for (let i = 0; i < 20; i++) {
      reqs.push(api(s.url, 'POST', '/v1/keys/k1/encrypt', { token: cast.appKey, body: { plaintext: b64(`m${i}`) } }));
      reqs.push(api(s.url, 'GET', '/v1/sys/health'));
      reqs.push(api(s.url, 'GET', '/v1/keys/k1', { token: cast.strangerKey }));
    }
    for (const r of await Promise.all(reqs)) ids.push(rid(r)!);
    assert.equal(new Set(ids).size, ids.length, 'request ids are unique');
    const rows = await readAudit(s.url, cast.auditor);
    for (const id of ids) byRequestId(rows, id);
  });

  it('records never hold plaintext, ciphertext, context, passwords, session tokens or API keys', async () => {
    const plaintext = 'PLAINTEXT-MARKER-5e1d7c';
    const context = 'CONTEXT-MARKER-9a2b44';
    const password = 'PASSWORD-MARKER-77c0de';
    const wrong = 'WRONGPW-MARKER-31f0aa';
    const secrets: string[] = [plaintext, b64(plaintext), context, b64(context), password, wrong, cast.appKey, cast.strangerKey, cast.admin, cast.keyAdmin, cast.auditor];
    const enc = await api(s.url, 'POST', '/v1/keys/k1/encrypt', { token: cast.appKey, body: { plaintext: b64(plaintext), context: b64(context) } });
    assert.equal(enc.status, 200, enc.text);
    const ct: string = enc.body.ciphertext;
    secrets.push(ct, ct.slice(ct.lastIndexOf(':') + 1));
    const dec = await api(s.url, 'POST', '/v1/keys/k1/decrypt', { token: cast.appKey, body: { ciphertext: ct, context: b64(context) } });
    assert.equal(Buffer.from(dec.body.plaintext, 'base64').toString(), plaintext);
    const dk = await api(s.url, 'POST', '/v1/keys/k1/datakey', { token: cast.appKey, body: {} });
    assert.equal(dk.status, 200, dk.text);
    secrets.push(dk.body.plaintext, dk.body.ciphertext);
    const batch = await api(s.url, 'POST', '/v1/keys/k1/encrypt', { token: cast.appKey, body: { batch: [{ plaintext: b64(plaintext) }, { plaintext: b64(`${plaintext}-2`) }] } });
    assert.equal(batch.status, 200, batch.text);
    const made = await api(s.url, 'POST', '/v1/users', { token: cast.admin, body: { name: 'marker-user', password, roles: ['auditor'] } });
    assert.equal(made.status, 200, made.text);
    const tok = await login(s.url, 'marker-user', password);
    secrets.push(tok);
    const bad = await api(s.url, 'POST', '/v1/auth/login', { body: { name: 'marker-user', password: wrong } });
    assert.equal(bad.status, 401);
    const app = await api(s.url, 'POST', '/v1/apps', { token: cast.admin, body: { name: 'marker-app' } });
    assert.equal(app.status, 200, app.text);
    secrets.push(app.body.apiKey);
    const rotated = await api(s.url, 'POST', '/v1/apps/marker-app/rotate-key', { token: cast.admin, body: {} });
    assert.equal(rotated.status, 200, rotated.text);
    secrets.push(rotated.body.apiKey);
    // A refused decrypt of a tampered ciphertext with a secret-looking context.
    await api(s.url, 'POST', '/v1/keys/k1/decrypt', { token: cast.appKey, body: { ciphertext: ct.slice(0, -4) + 'AAAA', context: b64(context) } });

    const rows = await readAudit(s.url, tok);
    const text = rows.map((r) => JSON.stringify(r)).join('\n');
    assert.ok(rows.some((r) => r.request_id === rid(enc)) && rows.some((r) => r.request_id === rid(bad)), 'the requests are there');
    for (const sec of secrets) {
      assert.ok(typeof sec === 'string' && sec.length >= 8, 'marker is a real string');
      assert.ok(!text.includes(sec), `audit records hold a secret: ${sec.slice(0, 12)}...`);
    }
  });

  it('an export of JSON lines verifies with verifyRecords; an edited line is found', async () => {
    const r = await api(s.url, 'GET', '/v1/audit?limit=10000', { token: cast.auditor });
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-type') ?? '', /ndjson/);
    const file = join(s.dir, 'export.jsonl');
    writeFileSync(file, r.text);
    const lines = readFileSync(file, 'utf8').split('\n').filter(Boolean);
    assert.ok(lines.length > 30);
    const rows = lines.map((l) => JSON.parse(l) as AuditRow);
    assert.deepEqual(verifyRecords(rows), { ok: true, records: rows.length });

    const k = 17;
    const edited = lines.map((l) => JSON.parse(l) as AuditRow).map((row) => (row.seq === k ? { ...row, actor: 'user:mallory' } : row));
    const res = verifyRecords(edited);
    assert.equal(res.ok, false);
    assert.equal(res.firstBroken?.seq, k);
    const dropped = rows.filter((row) => row.seq !== k);
    assert.equal(verifyRecords(dropped).firstBroken?.seq, k + 1);
  });

  it('filters since, until, principal, key and operation each narrow the export to exactly the matching records', async () => {
    await api(s.url, 'POST', '/v1/keys', { token: cast.keyAdmin, body: { name: 'k2' } });
    await new Promise((r) => setTimeout(r, 20));
    for (let i = 0; i < 3; i++) await api(s.url, 'POST', '/v1/keys/k1/encrypt', { token: cast.appKey, body: { plaintext: b64('f') } });
    const all = await readAudit(s.url, cast.auditor);
    const maxSeq = all[all.length - 1]!.seq;
    const mid = all[Math.floor(all.length / 2)]!.time;
    const early = all[Math.floor(all.length / 4)]!.time;
    const cases: [string, (r: AuditRow) => boolean][] = [
      [`since=${encodeURIComponent(mid)}`, (r) => r.time >= mid],
      [`until=${encodeURIComponent(mid)}`, (r) => r.time <= mid],
      [`since=${encodeURIComponent(early)}&until=${encodeURIComponent(mid)}`, (r) => r.time >= early && r.time <= mid],
      ['principal=app:app1', (r) => r.actor === 'app:app1'],
      ['principal=user:keyadmin', (r) => r.actor === 'user:keyadmin'],
      ['key=k2', (r) => r.key_name === 'k2'],
      ['operation=crypto.encrypt', (r) => r.operation === 'crypto.encrypt'],
      ['operation=key.create&key=k1', (r) => r.operation === 'key.create' && r.key_name === 'k1'],
    ];
    for (const [q, pred] of cases) {
      const got = await readAudit(s.url, cast.auditor, q);
      const expected = all.filter(pred).map((r) => r.seq);
      assert.ok(expected.length > 0 && expected.length < all.length, `${q} is a real narrowing (${expected.length} of ${all.length})`);
      for (const r of got) assert.ok(pred(r), `${q} returned record ${r.seq} that does not match`);
      assert.deepEqual(got.filter((r) => r.seq <= maxSeq).map((r) => r.seq), expected, q);
    }
  });

  it('answers given while sealed are recorded too, and the chain still verifies after unsealing', async () => {
    const sealed = await api(s.url, 'POST', '/v1/sys/seal', { token: cast.admin, body: {} });
    assert.equal(sealed.status, 200, sealed.text);
    const refused = [
      await api(s.url, 'POST', '/v1/keys/k1/encrypt', { token: cast.appKey, body: { plaintext: b64('x') } }),
      await api(s.url, 'GET', '/v1/keys', { token: cast.keyAdmin }),
      await api(s.url, 'POST', '/v1/auth/login', { body: { name: 'auditor', password: cast.passwords.auditor } }),
    ];
    for (const r of refused) {
      assert.equal(r.status, 503, r.text);
      assert.equal(r.body.error.code, 'sealed');
    }
    const health = await api(s.url, 'GET', '/v1/sys/health');
    assert.equal(health.status, 503);
    const un = await api(s.url, 'POST', '/v1/sys/unseal', { token: cast.admin, body: {} });
    assert.equal(un.status, 200, un.text);
    assert.equal(un.body.sealed, false);
    const rows = await readAudit(s.url, cast.auditor);
    for (const r of refused) {
      const rec = byRequestId(rows, rid(r));
      assert.equal(rec.result, 'sealed');
      assert.equal(details(rec).status, 503);
    }
    assert.equal(byRequestId(rows, rid(health)).operation, 'sys.health');
    assert.equal(byRequestId(rows, rid(sealed)).actor, 'user:admin');
    const v = await api(s.url, 'GET', '/v1/audit/verify', { token: cast.auditor });
    assert.equal(v.status, 200);
    assert.equal(v.body.ok, true, JSON.stringify(v.body));
  });
});

describe('tampering with a stopped server\'s audit log', { concurrency: true }, () => {
  let dir = '';
  let lastSeq = 0;

  before(async () => {
    const s = await startServerProcess();
    dir = s.dir;
    const cast = await setupCast(s.url);
    for (let i = 0; i < 10; i++) await api(s.url, 'POST', '/v1/keys/k1/encrypt', { token: cast.appKey, body: { plaintext: b64(`t${i}`) } });
    const all = await readAudit(s.url, cast.auditor);
    assert.equal(await s.stop(), 0);
    lastSeq = all[all.length - 1]!.seq + 1; // the export's own record
    const db = new Database(join(dir, 'keyhaven.db'), { readonly: true });
    assert.equal((db.prepare('select max(seq) as m from audit').get() as { m: number }).m, lastSeq);
    db.close();
  });
  after(() => {
    if (dir) removeDir(dir);
  });

  /** A copy of the stopped server's folder (database, root key, config). */
  function copy(): string {
    const to = tempDir('kh-tamper-');
    for (const f of ['keyhaven.db', 'keyhaven.db-wal', 'keyhaven.db-shm', 'root.key']) {
      if (existsSync(join(dir, f))) copyFileSync(join(dir, f), join(to, f));
    }
    return to;
  }

  function verifyOffline(d: string): { code: number; ok: boolean; firstBroken?: { seq: number; reason: string }; out: string } {
    const r = cli(['audit', 'verify', '--db', join(d, 'keyhaven.db'), '--root-key-file', join(d, 'root.key'), '-o', 'json']);
    let parsed: { ok?: boolean; firstBroken?: { seq: number; reason: string } } = {};
    try {
      parsed = JSON.parse(r.stdout) as typeof parsed;
    } catch {
      // reported below
    }
    assert.equal(typeof parsed.ok, 'boolean', `audit verify printed no JSON result (exit ${r.code}):\n${r.stdout}\n${r.stderr}`);
    return { code: r.code, ok: parsed.ok!, firstBroken: parsed.firstBroken, out: r.stdout + r.stderr };
  }

  /** Starts a server on the copy and asks it to verify, as the auditor. */
  async function verifyOnline(d: string): Promise<{ ok: boolean; firstBroken?: { seq: number }; headBroken: boolean }> {
    const s = await startServerProcess({ dir: d });
    try {
      const tok = await login(s.url, 'auditor', 'auditor-password-123');
      const v = await api(s.url, 'GET', '/v1/audit/verify', { token: tok });
      assert.equal(v.status, 200, v.text);
      // What the server noted on unsealing over this log.
      const unseals = await readAudit(s.url, tok, 'operation=sys.unseal');
      return { ...v.body, headBroken: details(unseals[unseals.length - 1]!).auditHeadBroken === true };
    } finally {
      await s.stop();
    }
  }

  function withDb(d: string, fn: (db: Database.Database) => void): void {
    const db = new Database(join(d, 'keyhaven.db'));
    try {
      db.transaction(() => fn(db))();
    } finally {
      db.close();
    }
  }

  const row = (db: Database.Database, seq: number) => db.prepare('select * from audit where seq = ?').get(seq) as AuditRow;

  // `online`: where a restarted server may place the break, when records it wrote since make the exact seq unknowable.
  // `headBroken`: the record the signed head names is gone or changed, which the restarted server notes.
  const cases: { name: string; tamper: (db: Database.Database) => void; broken: () => number; online?: () => [number, number]; headBroken?: true }[] = [
    {
      name: 'an edited field',
      tamper: (db) => db.prepare("update audit set result = 'ok', actor = 'user:mallory' where seq = ?").run(12),
      broken: () => 12,
    },
    {
      name: 'a deleted middle record',
      tamper: (db) => db.prepare('delete from audit where seq = ?').run(15),
      broken: () => 16,
    },
    {
      name: 'an inserted record (correctly linked to its predecessor, later records renumbered)',
      tamper: (db) => {
        db.prepare('update audit set seq = -seq - 1 where seq > ?').run(20);
        db.prepare('update audit set seq = -seq where seq < 0').run();
        const prev = row(db, 20).hash;
        const draft = { time: row(db, 20).time, actor: 'user:mallory', operation: 'key.read', key_name: 'k1', key_version: null, result: 'ok', request_id: 'forged', details: null };
        db.prepare('insert into audit (seq, time, actor, operation, key_name, key_version, result, request_id, details, prev_hash, hash) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)').run(
          21, draft.time, draft.actor, draft.operation, draft.key_name, draft.key_version, draft.result, draft.request_id, draft.details, prev, linkRecord(prev, 21, draft),
        );
      },
      broken: () => 22,
      headBroken: true,
    },
    {
      name: 'two records\' contents swapped',
      tamper: (db) => {
        const a = row(db, 25);
        const b = row(db, 30);
        const put = db.prepare('update audit set time = ?, actor = ?, operation = ?, key_name = ?, key_version = ?, result = ?, request_id = ?, details = ?, prev_hash = ?, hash = ? where seq = ?');
        put.run(b.time, b.actor, b.operation, b.key_name, b.key_version, b.result, b.request_id, b.details, b.prev_hash, b.hash, 25);
        put.run(a.time, a.actor, a.operation, a.key_name, a.key_version, a.result, a.request_id, a.details, a.prev_hash, a.hash, 30);
      },
      broken: () => 25,
    },
    {
      name: 'the tail truncated',
      tamper: (db) => db.prepare('delete from audit where seq > ?').run(lastSeq - 3),
      broken: () => lastSeq - 2,
      // The restart appends records where the deleted ones were; the signed head still names the old last one.
      online: () => [lastSeq - 2, lastSeq],
      headBroken: true,
    },
  ];

  it('the untouched copy verifies offline (chain and signed head) and online', async () => {
    const d = copy();
    try {
      const off = verifyOffline(d);
      assert.equal(off.code, 0, off.out);
      assert.equal(off.ok, true);
      const on = await verifyOnline(d);
      assert.equal(on.ok, true, JSON.stringify(on));
      assert.equal(on.headBroken, false);
    } finally {
      removeDir(d);
    }
  });

  for (const c of cases) {
    it(`${c.name} is found by keyhaven audit verify --db (exit 1, first broken record named) and by GET /v1/audit/verify after a restart`, async () => {
      const d = copy();
      try {
        withDb(d, c.tamper);
        const off = verifyOffline(d);
        assert.equal(off.code, 1, off.out);
        assert.equal(off.ok, false);
        assert.equal(off.firstBroken?.seq, c.broken(), off.out);
        const on = await verifyOnline(d);
        assert.equal(on.ok, false, `the restarted server reports the tampered log as intact: ${JSON.stringify(on)}`);
        const [lo, hi] = c.online?.() ?? [c.broken(), c.broken()];
        const seq = on.firstBroken?.seq ?? -1;
        assert.ok(seq >= lo && seq <= hi, `online verify names record ${seq}, expected ${lo === hi ? lo : `${lo} to ${hi}`}: ${JSON.stringify(on)}`);
        assert.equal(on.headBroken, c.headBroken === true, 'auditHeadBroken on the unseal record');
      } finally {
        removeDir(d);
      }
    });
  }
});

describe('audit sinks', () => {
  it('file sink: records appear in the file (mode 0600) within seconds, identical to the stored ones', async () => {
    const dir = tempDir('kh-sink-');
    const path = join(dir, 'audit.jsonl');
    const s = await startServerProcess({ dir, config: { audit: { fsync: true, sink: { file: { path } } } } });
    try {
      const init = await initServer(s.url);
      const tok = await login(s.url, init.admin.name, init.admin.password);
      const h = await api(s.url, 'GET', '/v1/sys/health');
      const id = rid(h)!;
      const lines = await waitFor(() => {
        if (!existsSync(path)) return undefined;
        // Checkpoint lines ({"checkpoint":{...}}) share the file; records are the rest.
        const ls = readFileSync(path, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as AuditRow).filter((r) => !('checkpoint' in r));
        return ls.some((r) => r.request_id === id) ? ls : undefined;
      }, 'the health request in the sink file', 10_000);
      assert.equal(statSync(path).mode & 0o777, 0o600);
      const made = await api(s.url, 'POST', '/v1/users', { token: tok, body: { name: 'aud', password: 'aud-password-123', roles: ['auditor'] } });
      assert.equal(made.status, 200, made.text);
      const stored = await readAudit(s.url, await login(s.url, 'aud', 'aud-password-123'));
      const rec = lines.find((r) => r.request_id === id)!;
      assert.deepEqual(rec, stored.find((r) => r.seq === rec.seq));
      // Sink lines are consecutive records of the chain.
      const seqs = lines.map((r) => r.seq);
      assert.deepEqual(seqs, seqs.map((_, i) => seqs[0]! + i));
    } finally {
      await s.stop();
      removeDir(dir);
    }
  });

  it('syslog sink: a UDP collector receives RFC 5424 lines carrying each record as JSON', async () => {
    const got: string[] = [];
    const sock: Socket = createSocket('udp4');
    sock.on('message', (m) => got.push(m.toString('utf8')));
    await new Promise<void>((r) => sock.bind(0, '127.0.0.1', () => r()));
    const port = sock.address().port;
    const dir = tempDir('kh-syslog-');
    const s = await startServerProcess({ dir, config: { audit: { fsync: true, sink: { syslog: { address: `127.0.0.1:${port}`, facility: 13, tag: 'khtest' } }, checkpoint: { interval: '1s' } } } });
    try {
      await initServer(s.url);
      const h = await api(s.url, 'GET', '/v1/sys/health', { headers: { 'x-keyhaven-cluster': 'c-syslog' } });
      const id = rid(h)!;
      const line = await waitFor(() => got.find((l) => l.includes(id)), 'the health request at the syslog collector', 10_000);
      const m = /^<(\d+)>1 (\S+) (\S+) khtest (\d+) audit - (\{.*\})$/.exec(line);
      assert.ok(m, `RFC 5424 line: ${line}`);
      assert.equal(Number(m[1]), 13 * 8 + 6);
      assert.ok(!Number.isNaN(Date.parse(m[2]!)), 'timestamp');
      const rec = JSON.parse(m[5]!) as AuditRow;
      assert.equal(rec.request_id, id);
      assert.equal(rec.operation, 'sys.health');
      assert.equal(m[2], rec.time);
      assert.equal(details(rec).cluster, 'c-syslog');
      assert.match(rec.hash, /^[0-9a-f]{64}$/);
      // Signed checkpoints travel the same way, told apart by their message id and shape.
      const cpLine = await waitFor(() => got.find((l) => / checkpoint - \{"checkpoint":/.test(l)), 'a checkpoint at the syslog collector', 10_000);
      const cm = /^<(\d+)>1 (\S+) (\S+) khtest (\d+) checkpoint - (\{.*\})$/.exec(cpLine);
      assert.ok(cm, `RFC 5424 checkpoint line: ${cpLine}`);
      const cp = (JSON.parse(cm[5]!) as { checkpoint: Record<string, unknown> }).checkpoint;
      assert.deepEqual(Object.keys(cp), ['v', 'store', 'seq', 'hash', 'time', 'prev', 'mac']);
    } finally {
      await s.stop();
      sock.close();
      removeDir(dir);
    }
  });

  it('stdout sink: records and checkpoints among the server\'s log lines verify as a witness; a last checkpoint on seal, none while sealed', async () => {
    const dir = tempDir('kh-stdout-');
    const s = await startServerProcess({ dir, config: { audit: { fsync: true, sink: { stdout: {} }, checkpoint: { interval: '1s' } } } });
    try {
      const init = await initServer(s.url);
      const admin = await login(s.url, init.admin.name, init.admin.password);
      const made = await api(s.url, 'POST', '/v1/users', { token: admin, body: { name: 'aud', password: 'aud-password-123', roles: ['auditor'] } });
      assert.equal(made.status, 200, made.text);
      const aud = await login(s.url, 'aud', 'aud-password-123');
      const cps = () => s.output().split('\n').filter((l) => l.startsWith('{"checkpoint":')).map((l) => (JSON.parse(l) as { checkpoint: { seq: number } }).checkpoint);
      const newest = async () => Number((await readAudit(s.url, aud)).at(-1)!.seq);
      const want = await newest();
      await waitFor(() => cps().some((c) => c.seq >= want) || undefined, `a checkpoint at or after record ${want} on stdout`, 15_000);
      assert.ok(/"msg":"keyhaven server listening"/.test(s.output()), 'log lines share stdout');
      assert.ok(s.output().split('\n').some((l) => l.startsWith('{"seq":')), 'records on stdout');
      const witness = join(dir, 'stdout.log');
      writeFileSync(witness, s.output());
      const r = cli(['audit', 'verify', '--witness', witness, '-o', 'json'], { env: { KEYHAVEN_ADDR: s.url, KEYHAVEN_TOKEN: aud } });
      assert.equal(r.code, 0, r.stdout + r.stderr);
      assert.equal(JSON.parse(r.stdout).ok, true);

      // Sealing writes a checkpoint over the sys.seal record; a sealed server writes none and checks none.
      const sealed = await api(s.url, 'POST', '/v1/sys/seal', { token: admin, body: {} });
      assert.equal(sealed.status, 200, sealed.text);
      const db = new Database(join(dir, 'keyhaven.db'), { readonly: true });
      const sealSeq = (db.prepare("select max(seq) as m from audit where operation = 'sys.seal' and actor = 'system:seal'").get() as { m: number }).m;
      db.close();
      await waitFor(() => cps().some((c) => c.seq >= sealSeq) || undefined, 'a checkpoint covering the seal', 15_000);
      const count = cps().length;
      const v = await api(s.url, 'POST', '/v1/audit/verify', { token: aud, body: { checkpoints: [cps()[0]] } });
      assert.equal(v.status, 503, v.text);
      await api(s.url, 'GET', '/v1/sys/health');
      // Two interval ticks pass with new records and no key: nothing is written.
      await new Promise((res) => setTimeout(res, 2500));
      assert.equal(cps().length, count, 'no checkpoint while sealed');
    } finally {
      await s.stop();
      removeDir(dir);
    }
  });
});
