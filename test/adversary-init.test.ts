import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { removeDir, tempDir } from './helpers.js';import { api, login, startServerProcess, type ServerProcess } from './server-helpers.js';

// Attack: kill -9 the server at many points of POST /v1/sys/init. Whatever
// the moment, the restarted server is uninitialised, or initialised but
// unconfirmed so init runs again, or the passwords init answered log in.
// Never a server that is initialised with nobody able to administer it.

import { assertAnswerLogsIn, crashLoop, status } from './init-crash.js';

describe('adversary: kill -9 during init', () => {
  it('SQLite: at 12 points from 0 to 900 ms into init, the restarted server can always be initialised or its answer logs in', async () => {
    const seen = await crashLoop({ tries: 12, spreadMs: 900, config: () => ({}), freshDir: () => tempDir('kh-adv-init-'), fresh: async () => {} });
    // Not an assertion on timing: a report of which states the kills reached.
    process.stdout.write(`# kill -9 during init (SQLite): ${JSON.stringify(seen)}\n`);
  });

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

});
