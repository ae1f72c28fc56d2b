import { describe, it } from 'node:test';
import { tempDir } from './helpers.js';
import { crashLoop, spread } from './init-crash.js';

// Attack: kill -9 the server at many points of POST /v1/sys/init. Whatever
// the moment, the restarted server is uninitialised, or initialised but
// unconfirmed so init runs again, or the passwords init answered log in.
// Never a server that is initialised with nobody able to administer it.

describe('adversary: kill -9 during init', () => {
  // 10 points over the call, every second one here, the others in the other adversary-init file (each file stays well within the runner's time limit on a busy machine).
  it('SQLite: at 5 more points (set b) from 0 to 130% of a whole init into it, the restarted server can always be initialised or its answer logs in', async () => {
    const seen = await crashLoop({ points: spread(10, 1, 2), config: () => ({}), freshDir: () => tempDir('kh-adv-init-b-'), fresh: async () => {} });
    // Not an assertion on timing: a report of which states the kills reached.
    process.stdout.write(`# kill -9 during init (SQLite, set b): ${JSON.stringify(seen)}\n`);
  });
});
