import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { freshPostgresDatabase, POSTGRES_REASON } from './pg.js';
import { removeDir, tempDir, waitFor } from './helpers.js';
import { requireDependency } from './require.js';
import { assertAnswerLogsIn, status } from './init-crash.js';
import { api, login, startServerProcess, type ServerProcess } from './server-helpers.js';

// Attack: an init whose answer was lost (the crash came after the commit)
// must not leave a server nobody can administer, and what the lost answer
// held (passwords, shares) must be dead once init is redone.

describe('adversary: a redone init', () => {
  it('an answer lost after the commit (kill -9 right after it): init runs again, the first passwords are dead, the audit chain is whole', async () => {
    const dir = tempDir('kh-adv-init-lost-');
    let s: ServerProcess | undefined;
    try {
      s = await startServerProcess({ dir });
      const lost = await api(s.url, 'POST', '/v1/sys/init', { body: {} });
      assert.equal(lost.status, 200, lost.text);
      s.child.kill('SIGKILL');
      await s.exited;
      s = await startServerProcess({ dir });
      assert.deepEqual(await status(s.url), { initialized: true, sealed: false, kind: 'keyfile', initConfirmed: false });
      assert.match(s.output(), /initialisation is not confirmed yet/);
      const redo = await api(s.url, 'POST', '/v1/sys/init', { body: { adminName: 'root', keyAdminName: 'keys' } });
      assert.equal(redo.status, 200, redo.text);
      for (const u of [lost.body.admin, lost.body.keyAdmin]) {
        const r: { status: number; text: string } = await api(s.url, 'POST', '/v1/auth/login', { body: u });
        assert.equal(r.status, 401, `${u.name} of the lost init still logs in: ${r.text}`);
      }
      await assertAnswerLogsIn(s.url, redo.body, 'redone init');
      assert.equal((await status(s.url)).initConfirmed, true);
      const again = await api(s.url, 'POST', '/v1/sys/init', { body: {} });
      assert.equal(again.status, 409, again.text);
      // Restarted: the redone init is what holds, and the chain head verifies.
      await s.stop();
      s = await startServerProcess({ dir });
      const admin = await login(s.url, 'root', redo.body.admin.password);
      assert.equal((await api(s.url, 'POST', '/v1/users', { token: admin, body: { name: 'aud', password: 'aud-password-123', roles: ['auditor'] } })).status, 200);
      const v = await api(s.url, 'GET', '/v1/audit/verify', { token: await login(s.url, 'aud', 'aud-password-123') });
      assert.equal(v.body.ok, true, v.text);
      assert.ok(s.output().indexOf(lost.body.admin.password) === -1, 'a password reached the log');
    } finally {
      await s?.stop('SIGKILL');
      removeDir(dir);
    }
  });

  it('shamir: shares of an unconfirmed init that is redone no longer unseal; the new ones do', async () => {
    const dir = tempDir('kh-adv-init-sh-');
    const config = { seal: { shamir: {} } };
    let s: ServerProcess | undefined;
    try {
      s = await startServerProcess({ dir, config });
      const first = await api(s.url, 'POST', '/v1/sys/init', { body: { shares: 3, threshold: 2 } });
      assert.equal(first.status, 200, first.text);
      const second = await api(s.url, 'POST', '/v1/sys/init', { body: { shares: 3, threshold: 2 } });
      assert.equal(second.status, 200, second.text);
      for (const share of first.body.shares.slice(0, 2)) {
        const r: { status: number; text: string } = await api(s.url, 'POST', '/v1/sys/unseal', { body: { share } });
        assert.equal(r.status, 400, `an old share was accepted: ${r.text}`);
      }
      assert.equal((await status(s.url)).sealed, true);
      for (const share of second.body.shares.slice(1, 3)) assert.equal((await api(s.url, 'POST', '/v1/sys/unseal', { body: { share } })).status, 200);
      assert.equal((await status(s.url)).sealed, false);
      await assertAnswerLogsIn(s.url, second.body, 'shamir redo');
    } finally {
      await s?.stop('SIGKILL');
      removeDir(dir);
    }
  });

  it('shamir, two servers: init redone on one is picked up by the other at its tick; only the new shares unseal it', async (t) => {
    const db = await freshPostgresDatabase();
    if (!requireDependency(t, db !== undefined, POSTGRES_REASON)) return;
    const dirs = [tempDir('kh-adv-init-pga-'), tempDir('kh-adv-init-pgb-')];
    const servers: ServerProcess[] = [];
    try {
      const config = { storage: { postgres: { url: db!.url, poolSize: 2 } }, seal: { shamir: {} }, scheduler: { interval: '1s' } };
      for (const dir of dirs) servers.push(await startServerProcess({ dir, config }));
      const [a, b] = servers as [ServerProcess, ServerProcess];
      const first = await api(a.url, 'POST', '/v1/sys/init', { body: { shares: 3, threshold: 2 } });
      assert.equal(first.status, 200, first.text);
      await waitFor(async () => ((await api(b.url, 'GET', '/v1/sys/seal-status')).body.initialized ? true : undefined), 'B sees the init');
      const redo = await api(a.url, 'POST', '/v1/sys/init', { body: { shares: 3, threshold: 2 } });
      assert.equal(redo.status, 200, redo.text);
      // Until B has read the new seal record a new share is refused (400) without counting; then it counts.
      await waitFor(async () => ((await api(b.url, 'POST', '/v1/sys/unseal', { body: { share: redo.body.shares[0] } })).status === 200 ? true : undefined), 'B takes the new shares');
      const old = await api(b.url, 'POST', '/v1/sys/unseal', { body: { share: first.body.shares[1] } });
      assert.equal(old.status, 400, `a share of the replaced init was accepted: ${old.text}`);
      const un = await api(b.url, 'POST', '/v1/sys/unseal', { body: { share: redo.body.shares[2] } });
      assert.equal(un.status, 200, un.text);
      assert.equal(un.body.sealed, false);
      const login = await api(b.url, 'POST', '/v1/auth/login', { body: redo.body.admin });
      assert.equal(login.status, 200, login.text);
    } finally {
      for (const p of servers) await p.stop();
      await db?.drop();
      for (const d of dirs) removeDir(d);
    }
  });
});
