import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { removeDir } from './helpers.js';
import { setupCast, startServerProcess, type Cast, type ServerProcess } from './server-helpers.js';
import { call, closeAgents, loginFrom } from './source-client.js';

// Attacks on sign-in, against real server processes over real HTTP. Each test
// fails if the attack succeeds. Client source addresses are real (see
// source-client.ts).
// Here: a flood of wrong passwords while an app encrypts.

after(closeAgents);

describe('adversary: a wrong-password flood while an app encrypts', () => {
  let srv: ServerProcess;
  let url: string;
  let cast: Cast;

  before(async () => {
    // The default scrypt cost: the flood must load the hashing pool as a real one would.
    srv = await startServerProcess({ config: { auth: { hashing: { scryptN: 32768 } } } });
    url = srv.url;
    cast = await setupCast(url);
  });

  after(async () => {
    await srv?.stop();
    if (srv) removeDir(srv.dir);
  });

  it('a 50-way wrong-password flood from several sources while an app encrypts: every encrypt succeeds, health answers, the server stays up', async () => {
    let stop = false;
    const statuses = new Map<number, number>();
    const flooder = async (i: number) => {
      const from = `127.0.0.${10 + (i % 5)}`;
      for (let n = 0; !stop; n++) {
        // A fresh name each time: every attempt is a new (name, source) pair, so none is refused by a lock.
        const a = await loginFrom(url, from, `flood-${i}-${n}`, 'not-the-password-at-all');
        statuses.set(a.status, (statuses.get(a.status) ?? 0) + 1);
      }
    };
    const flood = Array.from({ length: 50 }, (_, i) => flooder(i));
    let encrypts = 0;
    let healths = 0;
    try {
      const lane = async () => {
        for (let n = 0; n < 12; n++) {
          const e = await call(url, 'POST', `/v1/keys/${cast.key}/encrypt`, { token: cast.appKey, body: { plaintext: Buffer.from(`secret ${n}`).toString('base64') } });
          assert.equal(e.status, 200, `encrypt during the flood: ${e.text}`);
          encrypts += 1;
          if (n % 4 === 0) {
            const h = await call(url, 'GET', '/v1/sys/health');
            assert.equal(h.status, 200, `health during the flood: ${h.text}`);
            healths += 1;
          }
        }
      };
      await Promise.all([lane(), lane(), lane(), lane()]);
    } finally {
      stop = true;
      await Promise.all(flood);
    }
    assert.equal(encrypts, 48);
    assert.equal(healths, 12);
    for (const s of statuses.keys()) assert.ok(s === 401 || s === 429, `flood answered ${s} (${statuses.get(s)} times)`);
    assert.ok((statuses.get(401) ?? 0) > 0, 'the flood did reach password checks');
    assert.equal(srv.child.exitCode, null, 'the server is still running');
    const own = await loginFrom(url, '127.0.0.1', 'auditor', cast.passwords.auditor!);
    assert.equal(own.status, 200, `a real user signs in after the flood: ${own.text}`);
  });
});
