import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { logLines, removeDir, waitFor } from './helpers.js';
import { byteForms } from './secret-forms.js';
import { api, createUserApproved, initServer, login, startServerProcess, type ServerProcess } from './server-helpers.js';

// The key server's operational log lines, from a real server process: each
// operation an operator watches for leaves its line with the expected fields,
// an unexpected error is logged with its message and stack, and no secret
// used along the way (passwords, wrong passwords, API keys, session tokens,
// plaintext, the root key) appears anywhere in the output.

type Line = Record<string, any>;

describe('operational log lines', () => {
  let s: ServerProcess;
  const secrets: Record<string, string> = {};
  let admin = '';
  let keyAdmin = '';
  let names = { admin: '', keyAdmin: '' };

  const lines = (): Line[] => logLines(s.output());
  /** Waits for the line of `event` that also matches `fields`. */
  const line = (event: string, fields: Record<string, unknown> = {}): Promise<Line> =>
    waitFor(() => lines().find((l) => l.event === event && Object.entries(fields).every(([k, v]) => l[k] === v)), `the log line ${event} ${JSON.stringify(fields)}`, 30_000);

  before(async () => {
    s = await startServerProcess({ config: { log: { level: 'trace' }, auth: { maxFailedLogins: 3 } } });
    const init = await initServer(s.url);
    names = { admin: init.admin.name, keyAdmin: init.keyAdmin.name };
    secrets.adminPassword = init.admin.password;
    secrets.keyAdminPassword = init.keyAdmin.password;
    admin = await login(s.url, init.admin.name, init.admin.password);
    keyAdmin = await login(s.url, init.keyAdmin.name, init.keyAdmin.password);
    secrets.adminToken = admin;
    secrets.keyAdminToken = keyAdmin;
  });
  after(async () => {
    await s?.stop();
    if (s) removeDir(s.dir);
  });

  it('init and the unseal that follows it are info lines', async () => {
    const i = await line('init');
    assert.equal(i.level, 'info');
    assert.equal(i.component, 'ops');
    assert.deepEqual([i.kind, i.admin, i.keyAdmin], ['keyfile', names.admin, names.keyAdmin]);
    const u = await line('unseal', { by: 'system:seal' });
    assert.equal(u.level, 'info');
  });

  it('a refused seal is a warning; an operator seal and the unseal that lifts it are info lines', async () => {
    const refused = await api(s.url, 'POST', '/v1/sys/seal', { token: keyAdmin });
    assert.equal(refused.status, 403, refused.text);
    const r = await line('seal.refused');
    assert.equal(r.level, 'warn');
    assert.deepEqual([r.actor, r.result, r.source, r.requestId], [`user:${names.keyAdmin}`, 'permission_denied', '127.0.0.1', refused.headers.get('x-request-id')]);

    assert.equal((await api(s.url, 'POST', '/v1/sys/seal', { token: admin })).status, 200);
    const sealed = await line('seal', { by: `user:${names.admin}` });
    assert.deepEqual([sealed.level, sealed.operatorSeal], ['info', true]);

    const un = await api(s.url, 'POST', '/v1/sys/unseal', { body: { name: names.admin, password: secrets.adminPassword } });
    assert.equal(un.status, 200, un.text);
    const u = await line('unseal', { by: `user:${names.admin}` });
    assert.deepEqual([u.level, u.operatorSealLifted], ['info', true]);
  });

  it('failed sign-ins are warnings naming the user and source; the one that locks says so, and so does a refusal while locked', async () => {
    for (let i = 1; i <= 3; i++) {
      secrets[`wrongPassword${i}`] = `WRONG-planted-password-${i}-xyz`;
      const r = await api(s.url, 'POST', '/v1/auth/login', { body: { name: names.keyAdmin, password: secrets[`wrongPassword${i}`] } });
      assert.equal(r.status, 401, r.text);
    }
    await waitFor(() => lines().filter((l) => l.event === 'signin.failed' && l.user === names.keyAdmin).length >= 3 || undefined, 'three sign-in failure lines');
    const failed = lines().filter((l) => l.event === 'signin.failed');
    for (const f of failed) assert.deepEqual([f.level, f.user, f.source, f.result], ['warn', names.keyAdmin, '127.0.0.1', 'unauthenticated']);
    const locked = await line('signin.locked');
    assert.deepEqual([locked.level, locked.user, locked.source, locked.failures], ['warn', names.keyAdmin, '127.0.0.1', 3]);
    assert.ok(Date.parse(locked.lockedUntil) > Date.now() - 60_000);

    const again = await api(s.url, 'POST', '/v1/auth/login', { body: { name: names.keyAdmin, password: secrets.keyAdminPassword } });
    assert.equal(again.status, 429, again.text);
    const refused = await line('signin.refused');
    assert.deepEqual([refused.level, refused.user, refused.result], ['warn', names.keyAdmin, 'too_many_attempts']);
  });

  it('approvals: filed, approved and executed, and denied, are info lines', async () => {
    secrets.admin2Password = 'PLANTED-admin2-password-123';
    await createUserApproved(s.url, admin, keyAdmin, 'admin2', secrets.admin2Password, ['security-admin']);
    const filed = await line('approval.filed', { operation: 'admin.add' });
    assert.deepEqual([filed.level, filed.by], ['info', `user:${names.admin}`]);
    const approved = await line('approval.approved', { approval: filed.approval });
    assert.deepEqual([approved.level, approved.by, approved.approvals, approved.required], ['info', `user:${names.keyAdmin}`, 1, 1]);
    const executed = await line('approval.executed', { approval: filed.approval });
    assert.deepEqual([executed.level, executed.state], ['info', 'executed']);

    const r = await api(s.url, 'POST', '/v1/users', { token: admin, body: { name: 'admin3', password: 'PLANTED-admin3-password-123', roles: ['security-admin'] } });
    secrets.admin3Password = 'PLANTED-admin3-password-123';
    assert.equal(r.status, 202, r.text);
    const id = r.body.approval.id as string;
    assert.equal((await api(s.url, 'POST', `/v1/approvals/${id}/deny`, { token: admin, body: {} })).status, 200);
    const denied = await line('approval.denied', { approval: id });
    assert.deepEqual([denied.level, denied.by], ['info', `user:${names.admin}`]);
  });

  it('a scheduled rotation is an info line naming the key and its new version', async () => {
    assert.equal((await api(s.url, 'POST', '/v1/keys', { token: keyAdmin, body: { name: 'rot', rotationPeriod: '30d' } })).status, 200);
    // Crypto use with a planted plaintext and API key, to look for them in the output later.
    const app = await api(s.url, 'POST', '/v1/apps', { token: admin, body: { name: 'app1' } });
    assert.equal(app.status, 200, app.text);
    secrets.apiKey = app.body.apiKey;
    assert.equal((await api(s.url, 'PUT', '/v1/apps/app1/grants/rot', { token: keyAdmin, body: { operations: ['encrypt'] } })).status, 200);
    secrets.plaintext = 'PLANTED-plaintext-never-logged';
    const enc = await api(s.url, 'POST', '/v1/keys/rot/encrypt', { token: secrets.apiKey, body: { plaintext: Buffer.from(secrets.plaintext).toString('base64') } });
    assert.equal(enc.status, 200, enc.text);
    // Time passing, as the scheduler tests do it: the rotation is due now.
    const db = new Database(join(s.dir, 'keyhaven.db'));
    try {
      db.pragma('busy_timeout = 5000');
      assert.equal(db.prepare('update keys set next_rotation_at = ? where name = ?').run(new Date(Date.now() - 60_000).toISOString(), 'rot').changes, 1);
    } finally {
      db.close();
    }
    const rotated = await line('key.rotated', { keyName: 'rot' });
    assert.deepEqual([rotated.level, rotated.version, rotated.by, rotated.scheduled], ['info', 2, 'system:scheduler', true]);
  });

  it('an unexpected error is logged with its type, message, stack and code', async () => {
    // A table gone behind the server's back: the storage error is no KeyhavenError.
    const db = new Database(join(s.dir, 'keyhaven.db'));
    try {
      db.pragma('busy_timeout = 5000');
      db.exec('drop table approvals');
    } finally {
      db.close();
    }
    const r = await api(s.url, 'GET', '/v1/approvals', { token: admin });
    assert.equal(r.status, 500, r.text);
    const l = await waitFor(() => lines().find((x) => x.msg === 'unexpected error in request'), 'the unexpected error line');
    assert.equal(l.level, 'error');
    assert.equal(l.err.type, 'SqliteError');
    assert.match(l.err.message, /no such table: approvals/);
    assert.match(l.err.stack, /^SqliteError: no such table: approvals\n\s+at /);
    assert.equal(l.err.code, 'SQLITE_ERROR');
    // The scheduler's tick meets the same table: its failure carries the error too.
    const tick = await waitFor(() => lines().find((x) => x.msg === 'scheduled work failed; will retry'), 'the scheduler failure line');
    assert.match(tick.err.stack, /no such table/);
  });

  it('no error line lacks its message, and no secret appears anywhere in the output', async () => {
    await s.stop();
    const out = s.output();
    for (const l of lines()) {
      if (l.err !== undefined) {
        assert.equal(typeof l.err.message, 'string', JSON.stringify(l));
        assert.notEqual(l.err.type, 'Object', JSON.stringify(l));
      }
    }
    const planted: Record<string, Buffer> = { rootKey: readFileSync(join(s.dir, 'root.key')) };
    for (const [name, value] of Object.entries(secrets)) planted[name] = Buffer.from(value);
    assert.ok(Object.keys(planted).length >= 12);
    const hay = Buffer.from(out);
    for (const [name, value] of Object.entries(planted)) {
      for (const [form, needle] of Object.entries(byteForms(value))) {
        assert.equal(hay.includes(needle), false, `the output contains ${name} (${form})`);
      }
    }
  });
});
