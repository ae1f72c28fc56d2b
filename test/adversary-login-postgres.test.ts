import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { join } from 'node:path';
import { removeDir, tempDir } from './helpers.js';
import { freshPostgresDatabase, postgresAvailable, POSTGRES_REASON } from './pg.js';
import { requireDependency } from './require.js';
import { initServer, login, startServerProcess, type ServerProcess } from './server-helpers.js';
import { call, closeAgents, count, loginFrom } from './source-client.js';

// Attacks on sign-in, against real server processes over real HTTP. Each test
// fails if the attack succeeds. Client source addresses are real (see
// source-client.ts).
// Here: two servers sharing one PostgreSQL database count in one place.

after(closeAgents);

describe('adversary: concurrent guesses spread over two servers sharing PostgreSQL', () => {
  let db: Awaited<ReturnType<typeof freshPostgresDatabase>>;
  const dirs: string[] = [];
  const servers: ServerProcess[] = [];

  after(async () => {
    await Promise.all(servers.map((s) => s.stop()));
    await db?.drop();
    for (const d of dirs) removeDir(d);
  });

  it('40 wrong passwords at once, half to each server: at most maxFailedLogins checked in all; another source still signs in', async (t) => {
    if (!requireDependency(t, await postgresAvailable(), POSTGRES_REASON)) return;
    db = await freshPostgresDatabase();
    assert.ok(db, 'a fresh PostgreSQL database');
    dirs.push(tempDir('kh-adv-pg-a-'), tempDir('kh-adv-pg-b-'));
    const config = { storage: { postgres: { url: db.url, poolSize: 4 } }, seal: { keyfile: { path: join(dirs[0]!, 'root.key') } }, auth: { maxFailedLogins: 5, lockBase: '1h', lockMax: '2h' } };
    servers.push(await startServerProcess({ dir: dirs[0]!, config }));
    const init = await initServer(servers[0]!.url);
    servers.push(await startServerProcess({ dir: dirs[1]!, config }));
    const admin = await login(servers[0]!.url, init.admin.name, init.admin.password);
    const made = await call(servers[0]!.url, 'POST', '/v1/users', { token: admin, body: { name: 'shared', password: 'shared-password-123', roles: [] } });
    assert.equal(made.status, 200, made.text);

    const answers = await Promise.all(Array.from({ length: 40 }, (_, i) => loginFrom(servers[i % 2]!.url, '127.0.0.1', 'shared', `wrong-password-${i}`)));
    for (const a of answers) assert.ok(a.status === 401 || a.status === 429, `${a.status} ${a.text}`);
    assert.equal(count(answers, (a) => a.status === 401), 5, 'checked passwords over both servers');
    for (const s of servers) {
      const r = await loginFrom(s.url, '127.0.0.1', 'shared', 'shared-password-123');
      assert.equal(r.status, 429, `the locked source on either server: ${r.text}`);
    }
    const other = await loginFrom(servers[1]!.url, '127.0.0.2', 'shared', 'shared-password-123');
    assert.equal(other.status, 200, other.text);
    // Unlock on one server holds for both.
    const un = await call(servers[1]!.url, 'POST', '/v1/users/shared/unlock', { token: admin, body: {} });
    assert.equal(un.status, 200, un.text);
    assert.equal(un.body.cleared, 1);
    assert.equal((await loginFrom(servers[0]!.url, '127.0.0.1', 'shared', 'shared-password-123')).status, 200);
  });
});
