import { describe, it } from 'node:test';
import { freshPostgresDatabase, POSTGRES_REASON } from './pg.js';
import assert from 'node:assert/strict';
import { removeDir, tempDir, waitFor } from './helpers.js';
import { api, startServerProcess, type ServerProcess } from './server-helpers.js';
import { requireDependency } from './require.js';
import { crashLoop } from './init-crash.js';

// adversary-init.test.ts on PostgreSQL: kill -9 at points of init, the
// transaction dies with the connection.

describe('adversary: kill -9 during init (PostgreSQL)', () => {
  it('at 4 points from 0 to 900 ms into init, the restarted server can always be initialised or its answer logs in', async (t) => {
    let db = await freshPostgresDatabase();
    if (!requireDependency(t, db !== undefined, POSTGRES_REASON)) return;
    const dbs = [db!];
    try {
      const seen = await crashLoop({
        tries: 4,
        spreadMs: 900,
        config: () => ({ storage: { postgres: { url: db!.url, poolSize: 2 } } }),
        freshDir: () => tempDir('kh-adv-init-pg-'),
        fresh: async () => {
          db = await freshPostgresDatabase();
          dbs.push(db!);
        },
      });
      process.stdout.write(`# kill -9 during init (PostgreSQL): ${JSON.stringify(seen)}\n`);
    } finally {
      for (const d of dbs) await d.drop();
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
