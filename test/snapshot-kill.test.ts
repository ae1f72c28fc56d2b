import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, it, type TestContext } from 'node:test';
import { ETCD_AVAILABLE, startEtcd } from './etcd.js';
import { ROOT } from './helpers.js';
import { ownedTempDir, spawnOwned } from './reaper.js';
import { requireDependency } from './require.js';

// A recovery or scan of a snapshot killed with SIGKILL (OOM killer, kill -9):
// no handler runs, so what the temporary etcd leaves behind is what stays.
// It serves a full copy of the cluster (every Secret, encrypted or not).

const FIXTURE = join(ROOT, 'dist', 'test', 'fixtures', 'open-snapshot.js');

/** Pids of processes whose command line mentions `needle`. */
function processesMentioning(needle: string): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      if (readFileSync(`/proc/${d}/cmdline`, 'utf8').includes(needle)) out.push(Number(d));
    } catch {
      // Gone meanwhile.
    }
  }
  return out;
}

describe('a snapshot opened by a process killed with SIGKILL', () => {
  it('leaves no temporary etcd running', async (t: TestContext) => {
    if (!requireDependency(t, ETCD_AVAILABLE, 'etcd-server and etcd-client (apt-get install etcd-server etcd-client)')) return;
    const dir = ownedTempDir('kh-snapkill-', t);
    const etcd = await startEtcd(t);
    await etcd.put('/registry/secrets/default/db', Buffer.from('x'));
    const file = join(dir, 'backup.db');
    await etcd.snapshot(file);
    await etcd.stop();

    const work = ownedTempDir('kh-snapkillwork-', t);
    // Whatever survives is this test's to end (by its pid).
    t.after(() => {
      for (const pid of processesMentioning(work)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // Gone.
        }
      }
    });
    // The process group outlives the killed process, as a shell job's does when one
    // command in it is killed: the group leader (sh) stays, so the reaper's
    // group kill (which would hide the leak) waits for the test's teardown.
    const group = spawnOwned('sh', ['-c', '"$0" "$@" & echo "pid $!"; exec sleep 120', process.execPath, FIXTURE, file, work, 'wait'], { t, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    await new Promise<void>((resolve, reject) => {
      group.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        if (/ready/.test(out)) resolve();
      });
      group.once('exit', () => reject(new Error(`the fixture exited before it was ready: ${out}`)));
    });
    const pid = Number(/pid (\d+)/.exec(out)![1]);
    assert.equal(processesMentioning(work).length > 0, true, 'the temporary etcd runs while the snapshot is open');
    process.kill(pid, 'SIGKILL');
    while (processesMentioning(FIXTURE).length > 0) await sleep(50);
    // Give an orphaned etcd a generous while to notice its parent is gone.
    let left = processesMentioning(work);
    for (let i = 0; i < 50 && left.length > 0; i++) {
      await sleep(200);
      left = processesMentioning(work);
    }
    assert.deepEqual(left, [], `a temporary etcd (pid ${left.join(', ')}) still serves the snapshot copy in ${work}: ${readdirSync(work).join(', ')}`);
  });
});
