import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { removeDir } from './helpers.js';
import { api, login, rotateAppKeyApproved, setupCast, startServerProcess, type ApiResult, type Cast, type ServerProcess } from './server-helpers.js';
import { byteForms } from './secret-forms.js';

// Plant known secrets in a key server running at log level trace (passwords,
// API keys, session tokens, plaintexts, data keys, the root key), run the
// usual flows and some failing ones, then look for the secrets in every
// place the server writes: its output, the audit log, /metrics and the raw
// SQLite files.

/** A distinctive plaintext: readable marker plus random bytes, 48 bytes. */
function marker(label: string): Buffer {
  return Buffer.concat([Buffer.from(`KH-SECRET-${label}-`.padEnd(32, 'Q').slice(0, 32)), randomBytes(16)]);
}


const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

describe('server secrets hygiene', () => {
  let srv: ServerProcess;
  let url: string;
  let cast: Cast;
  let dbPath: string;
  let rootKeyPath: string;
  /** name -> forms to look for */
  const secrets = new Map<string, Record<string, Buffer>>();
  /** Tokens the server issued. */
  const issued: string[] = [];
  const places = new Map<string, Buffer>();

  const plantBytes = (name: string, b: Buffer) => secrets.set(name, byteForms(b));
  const plantText = (name: string, s: string) => secrets.set(name, byteForms(Buffer.from(s, 'utf8')));
  const plantToken = (name: string, t: string, real = true) => {
    if (real) issued.push(t);
    // <prefix>_<16 hex id>_<secret>; the secret itself may hold '_'.
    const secret = t.slice(21);
    plantText(name, t);
    plantText(`${name} (secret part)`, secret);
    plantBytes(`${name} (secret bytes)`, Buffer.from(secret, 'base64url'));
  };
  const ok = async (r: Promise<ApiResult>, what: string): Promise<ApiResult> => {
    const res = await r;
    assert.ok(res.status >= 200 && res.status < 300, `${what}: ${res.status} ${res.text.slice(0, 300)}`);
    return res;
  };

  const readDbFiles = (when: string) => {
    for (const suffix of ['', '-wal', '-shm']) {
      const p = dbPath + suffix;
      if (existsSync(p)) places.set(`database file ${suffix || 'main'} (${when})`, readFileSync(p));
    }
  };

  before(async () => {
    srv = await startServerProcess({ config: { log: { level: 'trace' } } });
    url = srv.url;
    dbPath = join(srv.dir, 'keyhaven.db');
    rootKeyPath = join(srv.dir, 'root.key');
    cast = await setupCast(url);
    plantBytes('root key', readFileSync(rootKeyPath));
    for (const [user, pw] of Object.entries(cast.passwords)) plantText(`password of ${user}`, pw);
    for (const [k, v] of Object.entries(cast)) if (typeof v === 'string' && /^kh[as]_/.test(v)) plantToken(`token ${k}`, v);

    // More users and passwords, logins right and wrong, logout.
    const alicePw = `PW-alice-${randomBytes(12).toString('hex')}`;
    plantText('password of alice', alicePw);
    await ok(api(url, 'POST', '/v1/users', { token: cast.admin, body: { name: 'alice', password: alicePw, roles: ['auditor'] } }), 'create alice');
    const aliceSession = await login(url, 'alice', alicePw);
    plantToken('session of alice', aliceSession);
    for (const [name, pw] of [['alice', `PW-wrong-${randomBytes(12).toString('hex')}`], ['nobody-here', `PW-unknown-${randomBytes(12).toString('hex')}`]] as const) {
      plantText(`wrong password for ${name}`, pw);
      const r = await api(url, 'POST', '/v1/auth/login', { body: { name, password: pw } });
      assert.equal(r.status, 401);
    }
    const shortPw = `PWs${randomBytes(3).toString('hex')}`;
    plantText('a refused short password', shortPw);
    assert.equal((await api(url, 'POST', '/v1/users', { token: cast.admin, body: { name: 'bob', password: shortPw, roles: [] } })).status, 400);
    // Passwords reset by an admin (at once, and waiting sealed in an approval request) and changed by their owner.
    const resetPw = `PW-reset-${randomBytes(12).toString('hex')}`;
    plantText('a reset password', resetPw);
    await ok(api(url, 'PUT', '/v1/users/alice/password', { token: cast.admin, body: { password: resetPw } }), 'reset alice');
    const pendingPw = `PW-pending-${randomBytes(12).toString('hex')}`;
    plantText('a reset password waiting for approval', pendingPw);
    const pending = await ok(api(url, 'PUT', '/v1/users/keyadmin3/password', { token: cast.admin, body: { password: pendingPw } }), 'reset keyadmin3');
    assert.equal(pending.status, 202);
    const aliceNow = await login(url, 'alice', resetPw);
    await ok(api(url, 'PUT', '/v1/auth/password', { token: aliceNow, body: { currentPassword: resetPw, newPassword: alicePw } }), 'alice changes hers back');
    const toEnd = await login(url, 'alice', alicePw);
    plantToken('ended session', toEnd);
    await ok(api(url, 'POST', '/v1/auth/logout', { token: toEnd, body: {} }), 'logout');
    assert.equal((await api(url, 'GET', '/v1/auth/whoami', { token: toEnd })).status, 401);

    // Apps: API keys, a rotation, the old key refused, a wrong secret for a known id.
    const made = await ok(api(url, 'POST', '/v1/apps', { token: cast.admin, body: { name: 'svc', description: 'secrets test' } }), 'create svc');
    const oldKey = made.body.apiKey as string;
    plantToken('api key of svc (rotated away)', oldKey);
    await ok(api(url, 'PUT', '/v1/apps/svc/grants/k1', { token: cast.keyAdmin, body: { operations: ['encrypt', 'decrypt', 'rewrap', 'datakey'] } }), 'grant svc');
    await ok(api(url, 'GET', '/v1/auth/whoami', { token: oldKey }), 'old key works before rotation');
    // svc holds grants: a key-admin approves the new key, the requester collects it once.
    const svcKey = await rotateAppKeyApproved(url, cast.admin, cast.keyAdmin, 'svc');
    plantToken('api key of svc', svcKey);
    const forged = `${svcKey.slice(0, 21)}${randomBytes(32).toString('base64url')}`;
    plantToken('forged api key', forged, false);
    assert.equal((await api(url, 'GET', '/v1/auth/whoami', { token: forged })).status, 401);
    const garbage = `GARBAGE-TOKEN-${randomBytes(16).toString('hex')}`;
    plantText('garbage bearer', garbage);
    assert.equal((await api(url, 'GET', '/v1/auth/whoami', { token: garbage })).status, 401);

    // Plaintexts through every crypto route, single and batch, with and without context, and failing ones.
    const p1 = marker('single');
    const p2 = marker('batch-a');
    const p3 = marker('batch-b');
    const p4 = marker('with-context');
    const p5 = marker('rewrapped');
    const p6 = marker('refused-disabled');
    const p7 = marker('tampered');
    const ctx = marker('context-is-not-secret').toString('base64');
    for (const [n, p] of Object.entries({ p1, p2, p3, p4, p5, p6, p7 })) plantBytes(`plaintext ${n}`, p);
    const enc = async (token: string, key: string, plaintext: Buffer, context?: string) =>
      (await ok(api(url, 'POST', `/v1/keys/${key}/encrypt`, { token, body: { plaintext: plaintext.toString('base64'), ...(context ? { context } : {}) } }), 'encrypt')).body.ciphertext as string;
    const c1 = await enc(svcKey, 'k1', p1);
    const batch = await ok(api(url, 'POST', '/v1/keys/k1/encrypt', { token: cast.appKey, body: { batch: [{ plaintext: p2.toString('base64') }, { plaintext: p3.toString('base64') }] } }), 'batch');
    const c4 = await enc(cast.appKey, 'k1', p4, ctx);
    const c5 = await enc(cast.appKey, 'k1', p5);
    const c7 = await enc(cast.appKey, 'k1', p7);
    const d1 = await ok(api(url, 'POST', '/v1/keys/k1/decrypt', { token: svcKey, body: { ciphertext: c1 } }), 'decrypt');
    assert.ok(Buffer.from(d1.body.plaintext, 'base64').equals(p1));
    const d2 = await ok(api(url, 'POST', '/v1/keys/k1/decrypt', { token: cast.appKey, body: { batch: batch.body.batch.map((x: any) => ({ ciphertext: x.ciphertext })) } }), 'batch decrypt');
    assert.ok(Buffer.from(d2.body.batch[1].plaintext, 'base64').equals(p3));
    await ok(api(url, 'POST', '/v1/keys/k1/decrypt', { token: cast.appKey, body: { ciphertext: c4, context: ctx } }), 'decrypt with context');
    assert.equal((await api(url, 'POST', '/v1/keys/k1/decrypt', { token: cast.appKey, body: { ciphertext: c4 } })).status, 400);
    await ok(api(url, 'POST', '/v1/keys/k1/rewrap', { token: cast.appKey, body: { ciphertext: c5 } }), 'rewrap');
    const blob = Buffer.from(c7.slice(c7.indexOf(':', 3) + 1), 'base64');
    blob[blob.length - 1] = blob[blob.length - 1]! ^ 1;
    assert.equal((await api(url, 'POST', '/v1/keys/k1/decrypt', { token: cast.appKey, body: { ciphertext: `kh:v1:${blob.toString('base64')}` } })).status, 400);
    // A refused plaintext: the key is disabled.
    await ok(api(url, 'POST', '/v1/keys', { token: cast.keyAdmin, body: { name: 'kdis' } }), 'create kdis');
    await ok(api(url, 'PUT', '/v1/apps/app1/grants/kdis', { token: cast.keyAdmin, body: { operations: ['encrypt'] } }), 'grant kdis');
    await ok(api(url, 'POST', '/v1/keys/kdis/disable', { token: cast.keyAdmin, body: {} }), 'disable');
    const refusedEnc = await api(url, 'POST', '/v1/keys/kdis/encrypt', { token: cast.appKey, body: { plaintext: p6.toString('base64') } });
    assert.equal(refusedEnc.status, 409, refusedEnc.text);
    // A plaintext sent by someone without a grant.
    assert.equal((await api(url, 'POST', '/v1/keys/k1/encrypt', { token: cast.strangerKey, body: { plaintext: p6.toString('base64') } })).status, 403);
    // Rotation, then the old ciphertext still opens.
    await ok(api(url, 'POST', '/v1/keys/k1/rotate', { token: cast.keyAdmin, body: {} }), 'rotate k1');
    await ok(api(url, 'POST', '/v1/keys/k1/decrypt', { token: svcKey, body: { ciphertext: c1 } }), 'decrypt after rotation');

    // Data keys.
    for (const body of [{}, { bytes: 64 }, { context: ctx }, { batch: [{}, { bytes: 16 }] }]) {
      const r = await ok(api(url, 'POST', '/v1/keys/k1/datakey', { token: svcKey, body }), 'datakey');
      const items = 'batch' in body ? r.body.batch : [r.body];
      for (const [i, it] of items.entries()) {
        assert.ok(it.plaintext, 'data key returned');
        plantBytes(`data key ${JSON.stringify(body)}#${i}`, Buffer.from(it.plaintext, 'base64'));
      }
    }
    const quiet = await ok(api(url, 'POST', '/v1/keys/k1/datakey', { token: svcKey, body: { includePlaintext: false } }), 'datakey without plaintext');
    assert.equal(quiet.body.plaintext, undefined);

    // Everything readable while the server runs.
    let auditText = '';
    let afterSeq = 0;
    for (;;) {
      const r = await ok(api(url, 'GET', `/v1/audit?after=${afterSeq}&limit=10000`, { token: cast.auditor }), 'audit export');
      const rows = r.text.split('\n').filter(Boolean);
      auditText += r.text;
      if (rows.length < 10000) break;
      afterSeq = JSON.parse(rows[rows.length - 1]!).seq;
    }
    places.set('audit export', Buffer.from(auditText));
    places.set('/metrics', Buffer.from((await ok(api(url, 'GET', '/metrics'), 'metrics')).text));
    readDbFiles('running');
    await srv.stop();
    places.set('server output', Buffer.from(srv.output()));
    readDbFiles('stopped');
  });

  after(async () => {
    await srv?.stop();
    if (srv) removeDir(srv.dir);
  });

  it('the scan covers real output', () => {
    const out = places.get('server output')!.toString();
    assert.match(out, /keyhaven server listening/);
    assert.match(out, /"msg":"stopping/);
    assert.ok(places.get('audit export')!.toString().split('\n').length > 50);
    assert.match(places.get('/metrics')!.toString(), /keyhaven_/);
    assert.ok(places.get('database file main (running)')!.length > 0);
    assert.ok(secrets.size > 40, `${secrets.size} secrets planted`);
  });

  it('no planted secret appears in output, audit, metrics or database files', () => {
    const found: string[] = [];
    for (const [where, hay] of places) {
      for (const [name, forms] of secrets) {
        for (const [form, needle] of Object.entries(forms)) if (hay.includes(needle)) found.push(`${where}: ${name} (${form})`);
      }
    }
    assert.deepEqual(found, []);
  });

  it('API keys and sessions are stored only as hashes of their secret', () => {
    const db = new Database(dbPath, { readonly: true });
    try {
      assert.ok(issued.length >= 12, `${issued.length} tokens issued`);
      for (const t of issued) {
        const m = /^(kha|khs)_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$/.exec(t);
        assert.ok(m, 'token format');
        const row = db.prepare('select * from credentials where id = ?').get(m[2]) as Record<string, unknown> | undefined;
        assert.ok(row, `credential ${m[2]} stored`);
        assert.equal(row.kind, m[1] === 'kha' ? 'api_key' : 'session');
        assert.equal(row.hash, sha256(m[3]!), 'stored as the SHA-256 of the secret');
        assert.ok(!JSON.stringify(row).includes(m[3]!));
      }
      for (const row of db.prepare('select hash from credentials').all() as { hash: string }[]) assert.match(row.hash, /^[0-9a-f]{64}$/);
    } finally {
      db.close();
    }
  });

  it('the database and the root key file are private (0600)', () => {
    for (const p of [dbPath, rootKeyPath]) assert.equal(statSync(p).mode & 0o777, 0o600, p);
    for (const suffix of ['-wal', '-shm']) if (existsSync(dbPath + suffix)) assert.equal(statSync(dbPath + suffix).mode & 0o077, 0, dbPath + suffix);
  });
});
