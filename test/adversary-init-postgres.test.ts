import { describe, it } from 'node:test';
import { freshPostgresDatabase, POSTGRES_REASON } from './pg.js';
import { tempDir } from './helpers.js';
import { requireDependency } from './require.js';
import { crashLoop, spread } from './init-crash.js';

// adversary-init.test.ts on PostgreSQL: kill -9 at points of init, the
// transaction dies with the connection.

describe('adversary: kill -9 during init (PostgreSQL)', () => {
  it('at 4 points from 0 to 130% of a whole init into it, the restarted server can always be initialised or its answer logs in', async (t) => {
    let db = await freshPostgresDatabase();
    if (!requireDependency(t, db !== undefined, POSTGRES_REASON)) return;
    const dbs = [db!];
    try {
      const seen = await crashLoop({
        points: spread(4, 0, 1),
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
});
