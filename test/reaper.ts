import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { mkdtempSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after } from 'node:test';

// Every process a test starts and every temp folder it makes (which may hold
// a root key) is owned here, so none outlives the test file's process:
//
// - children start in a process group of their own (detached) and are killed
//   by group, which also takes anything they started;
// - a test that passes its context (`t`) gets them stopped in `t.after`, which
//   node:test runs even when that test times out;
// - the file's own `after` hook, the process's `exit`, and SIGTERM / SIGINT /
//   SIGHUP kill whatever is still running and remove the folders. Node 20's
//   runner ends a file that overran --test-timeout with SIGTERM, skipping
//   every `after` hook: only the signal handler runs then.

const children = new Map<number, ChildProcess>();
const dirs = new Set<string>();

/** What a helper needs of a TestContext (or a suite's context): a teardown hook. */
export interface Teardown {
  after(fn: () => unknown): void;
}

function killGroup(pid: number): void {
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    // The group is gone already.
  }
}

/** Kills every owned child (by process group) and removes every owned folder. Synchronous: it runs in `exit`. */
function reapAll(): void {
  for (const pid of children.keys()) killGroup(pid);
  children.clear();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  dirs.clear();
}

process.once('exit', reapAll);
for (const [sig, code] of [['SIGTERM', 143], ['SIGINT', 130], ['SIGHUP', 129]] as const) {
  process.once(sig, () => {
    // Written synchronously: a process ending on a signal loses what is still queued for a pipe.
    writeSync(2, `\n# ${sig} ended this test file; killing ${children.size} child process group(s), removing ${dirs.size} temp folder(s)\n`);
    reapAll();
    process.exit(code);
  });
}
// Registered on the file's root test when this module is first imported; runs after the last test, timed out or not.
after(reapAll);

/** Spawns a child in a process group of its own, owned until it exits; `t` (optional) kills it in its teardown. */
export function spawnOwned(command: string, args: readonly string[], opts: SpawnOptions & { t?: Teardown } = {}): ChildProcess {
  const { t, ...spawnOpts } = opts;
  const child = spawn(command, args, { ...spawnOpts, detached: true });
  const pid = child.pid;
  if (pid !== undefined) {
    children.set(pid, child);
    // When the leader exits, whatever it started in its group goes too, at
    // once: Linux hands out no pid still in use as a process group id, so the
    // group is still this child's. Then it is forgotten, as pids are reused
    // quickly (pid_max may be 32768).
    child.once('exit', () => {
      killGroup(pid);
      children.delete(pid);
    });
  }
  t?.after(() => killOwned(child));
  return child;
}

/** SIGKILLs an owned child's process group and resolves once the child has exited. */
async function killOwned(child: ChildProcess): Promise<void> {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  killGroup(child.pid);
  await exited;
}

/** A new temp folder, removed at the latest when the file's process ends; `t` (optional) removes it in its teardown. */
export function ownedTempDir(prefix = 'kh-', t?: Teardown): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  dirs.add(dir);
  t?.after(() => removeOwnedDir(dir));
  return dir;
}

export function removeOwnedDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
  dirs.delete(dir);
}

/** A teardown for a describe() block: what is registered runs, newest first, in the suite's `after`. Call it in the describe body. */
export function suiteTeardown(): Teardown {
  const fns: (() => unknown)[] = [];
  after(async () => {
    for (const fn of fns.reverse()) await fn();
  });
  return { after: (fn) => fns.push(fn) };
}
