import assert from 'node:assert/strict';
import { once } from 'node:events';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { ROOT, tempDir, waitFor } from './helpers.js';
import { spawnOwned } from './reaper.js';

// The reaper's own test: a child `node --test` run of a file that starts a
// real key server and then hangs until it times out. Afterwards no process of
// it may be left, and none of its temp folders (one holds a root key).

const FIXTURE = join(ROOT, 'dist', 'test', 'fixtures', 'reaper-hang.js');

/** [state, process group] of a pid from /proc, or undefined once it is gone. */
function procStat(pid: number): { state: string; pgid: number } | undefined {
  try {
    // Fields after the command name (which may hold spaces) start after the last ')'.
    const rest = readFileSync(`/proc/${pid}/stat`, 'utf8').split(')').at(-1)!.trim().split(' ');
    return { state: rest[0]!, pgid: Number(rest[2]) };
  } catch {
    return undefined;
  }
}

const running = (pid: number) => {
  const s = procStat(pid);
  return s !== undefined && s.state !== 'Z';
};

/** Live processes in process group `pgid`. */
function groupMembers(pgid: number): number[] {
  return readdirSync('/proc')
    .filter((n) => /^\d+$/.test(n))
    .map(Number)
    .filter((pid) => {
      const s = procStat(pid);
      return s !== undefined && s.state !== 'Z' && s.pgid === pgid;
    });
}

interface Run {
  code: number | null;
  output: string;
  record?: { pid: number; dirs: string[] };
}

function runFixture(mode: string, timeoutMs: number): Promise<Run> {
  const dir = tempDir('kh-reaper-test-');
  const record = join(dir, 'record.json');
  const runnerArgs = mode === 'file' ? [`--test-timeout=${timeoutMs}`] : [];
  // Without NODE_TEST_CONTEXT: set by the runner around this file, it would make the child run report to this one.
  const { NODE_TEST_CONTEXT: _, ...env } = process.env;
  const child = spawnOwned(process.execPath, ['--test', '--test-reporter=tap', ...runnerArgs, FIXTURE], {
    cwd: ROOT,
    env: { ...env, KH_REAPER_MODE: mode, KH_REAPER_RECORD: record, KH_REAPER_TIMEOUT_MS: String(timeoutMs) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, output, ...(existsSync(record) ? { record: JSON.parse(readFileSync(record, 'utf8')) } : {}) }));
  });
}

/**
 * Runs the fixture until a run got as far as starting its server before the
 * timeout (a busy machine may need a longer one: doubled each time, so the
 * outcome never depends on the machine's speed).
 */
async function timedOutRun(mode: string): Promise<Run & { record: { pid: number; dirs: string[] } }> {
  for (let ms = 4000; ; ms *= 2) {
    const run = await runFixture(mode, ms);
    assert.notEqual(run.code, 0, `the fixture run must fail (it times out):\n${run.output}`);
    assert.match(run.output, /timed out/, `the fixture run timed out:\n${run.output}`);
    if (run.record) return run as Run & { record: { pid: number; dirs: string[] } };
    if (ms >= 64_000) assert.fail(`the fixture never started its server before its timeout:\n${run.output}`);
  }
}

describe('reaper: a test that times out leaves no process and no temp folder behind', { concurrency: true }, () => {
  for (const [mode, how] of [
    ['file', "the runner's --test-timeout ends the file's process with SIGTERM (Node 20)"],
    ['test-t', "the test's own timeout; the server was started with the test's context"],
    ['test', "the test's own timeout; the file's after hook reaps"],
  ] as const) {
    it(`${mode}: ${how}`, async () => {
      const run = await timedOutRun(mode);
      const { pid, dirs } = run.record;
      assert.ok(pid > 0);
      await waitFor(() => !running(pid) || undefined, `server ${pid} to be gone`);
      assert.deepEqual(groupMembers(pid), [], `nothing left in the server's process group ${pid}`);
      for (const d of dirs) assert.equal(existsSync(d), false, `${d} was removed`);
    });
  }
});

describe('reaper: a process group outlives its leader only until the leader exits', () => {
  it('a grandchild left behind by a leader that exits first is killed with its group', async () => {
    // The leader starts a grandchild in its own group (not detached), prints its pid, and exits.
    const leader = spawnOwned(process.execPath, ['-e', "const c = require('node:child_process').spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' }); console.log(c.pid); c.unref();"], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    leader.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    await once(leader, 'exit');
    const grandchild = Number(out.trim());
    assert.ok(grandchild > 0, `the leader printed its child's pid: ${JSON.stringify(out)}`);
    assert.equal(procStat(grandchild)?.pgid ?? leader.pid, leader.pid, "the grandchild was in the leader's group");
    await waitFor(() => !running(grandchild) || undefined, `grandchild ${grandchild} to be gone`);
    assert.deepEqual(groupMembers(leader.pid!), []);
  });
});
