// Shared by the benchmark sections: child processes that are always stopped,
// temporary folders that are always removed, and table formatting.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

// dist/bench/procs.js -> repo root
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const STOP_TIMEOUT_MS = 10_000;

export class BenchError extends Error {}

export function log(msg: string): void {
  process.stderr.write(`bench: ${msg}\n`);
}

export function envNumber(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const v = Number(raw);
  if (!Number.isFinite(v) || v <= 0) throw new BenchError(`${name} must be a positive number, got ${JSON.stringify(raw)}`);
  return v;
}

// ---------------------------------------------------------------- cleanup

const live = new Set<ChildProcess>();
const tmpDirs = new Set<string>();
const cleanups = new Set<() => Promise<void>>();

export function track(child: ChildProcess): ChildProcess {
  live.add(child);
  child.once('exit', () => live.delete(child));
  return child;
}

/** Removed on every exit path. */
export function registerTmp(dir: string): void {
  tmpDirs.add(dir);
}

/** Async clean-up (e.g. dropping a database) run after the children stop on error or interrupt; returns the deregister function. */
export function onCleanup(fn: () => Promise<void>): () => void {
  cleanups.add(fn);
  return () => cleanups.delete(fn);
}

// Last-resort cleanup: runs on every exit path, synchronously.
process.on('exit', () => {
  for (const child of live) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
  for (const dir of tmpDirs) rmSync(dir, { recursive: true, force: true });
});

/** Stops every child still running (between sections). */
export async function stopAll(): Promise<void> {
  await Promise.allSettled([...live].map((c) => stopChild(c, 2000)));
}

/** Stops every child, runs the async clean-ups, then exits. */
export async function shutdown(code: number): Promise<never> {
  await stopAll();
  for (const fn of [...cleanups]) {
    await fn().catch((e: unknown) => log(`clean-up failed: ${e instanceof Error ? e.message : String(e)}`));
  }
  process.exit(code);
}

export let interrupted = false;
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(sig, () => {
    if (interrupted) process.exit(130);
    interrupted = true;
    log(`${sig}: stopping`);
    void shutdown(130);
  });
}

export function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

export async function stopChild(child: ChildProcess, timeoutMs = STOP_TIMEOUT_MS): Promise<void> {
  if (exited(child)) return;
  const done = new Promise<void>((res) => child.once('exit', () => res()));
  child.kill('SIGTERM');
  const timer = sleep(timeoutMs).then(() => 'timeout' as const);
  if ((await Promise.race([done.then(() => 'done' as const), timer])) === 'timeout') {
    log(`pid ${child.pid} ignored SIGTERM for ${timeoutMs} ms; killing`);
    child.kill('SIGKILL');
    await done;
  }
}

export interface Captured {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export function run(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<Captured> {
  return new Promise((res, rej) => {
    const child = track(spawn(cmd, args, { cwd: opts.cwd ?? ROOT, env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] }));
    let stdout = '';
    let stderr = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.once('error', rej);
    child.once('close', (code, signal) => res({ code, signal, stdout, stderr }));
  });
}

/** A child that prints its state on stdout; keeps the last lines for error messages. */
export class Child {
  readonly proc: ChildProcess;
  private tail: string[] = [];
  private lineWaiters: ((line: string) => void)[] = [];
  private partial = '';
  spawnError: Error | undefined;

  constructor(
    readonly label: string,
    argv: string[],
    env: NodeJS.ProcessEnv = process.env,
    /** The program; node by default. */
    cmd: string = process.execPath,
  ) {
    this.proc = track(spawn(cmd, argv, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] }));
    // Always drain the pipes, or a chatty child blocks on a full pipe.
    this.proc.stdout?.setEncoding('utf8').on('data', (d: string) => this.onStdout(d));
    this.proc.stderr?.setEncoding('utf8').on('data', (d: string) => this.remember(d));
    this.proc.once('error', (e) => (this.spawnError = e));
  }

  private onStdout(chunk: string): void {
    const lines = (this.partial + chunk).split('\n');
    this.partial = lines.pop() ?? '';
    for (const line of lines) {
      this.remember(line);
      for (const w of this.lineWaiters) w(line);
    }
  }

  private remember(chunk: string): void {
    for (const line of chunk.split('\n')) {
      if (!line.trim()) continue;
      this.tail.push(line);
      if (this.tail.length > 40) this.tail.shift();
    }
  }

  onLine(fn: (line: string) => void): void {
    this.lineWaiters.push(fn);
  }

  output(): string {
    return this.tail.length ? `\n--- last output of ${this.label} ---\n${this.tail.join('\n')}` : '';
  }

  lastLines(): string[] {
    return [...this.tail];
  }

  stop(): Promise<void> {
    return stopChild(this.proc);
  }
}

export function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      s.close(() => (typeof addr === 'object' && addr ? res(addr.port) : rej(new Error('no port'))));
    });
  });
}

// ---------------------------------------------------------------- CPU (Linux /proc)

const CLK_TCK = (() => {
  const r = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
  const v = Number(r.stdout?.trim());
  return Number.isFinite(v) && v > 0 ? v : 100;
})();

/** Fields of /proc/PID/stat after the parenthesised command name (index 0 = field 3). */
function statFields(pid: number | 'self'): string[] | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

/** User + system CPU seconds of a process so far (Linux); undefined elsewhere. */
export function cpuSeconds(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  // utime and stime are fields 14 and 15.
  const f = statFields(pid);
  return f ? (Number(f[11]) + Number(f[12])) / CLK_TCK : undefined;
}

/** CPU seconds of this process plus its children that have exited and been reaped (Linux). */
export function selfAndReapedCpuSeconds(): number | undefined {
  // utime, stime, cutime, cstime are fields 14-17.
  const f = statFields('self');
  return f ? (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) / CLK_TCK : undefined;
}

/** CPU seconds the whole machine has been busy (Linux); undefined elsewhere. */
export function machineBusySeconds(): number | undefined {
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!.trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal
    const busy = (f[0] ?? 0) + (f[1] ?? 0) + (f[2] ?? 0) + (f[5] ?? 0) + (f[6] ?? 0) + (f[7] ?? 0);
    return busy / CLK_TCK;
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------- report

export function ratio(a: number | undefined, b: number | undefined): number | undefined {
  if (a === undefined || b === undefined || b === 0) return undefined;
  return Math.round((a / b) * 100) / 100;
}

export function fmt(v: number | undefined, digits = 0): string {
  return v === undefined ? '-' : v.toFixed(digits);
}

/** The first `left` columns are left-aligned, the rest right-aligned. */
export function table(head: string[], rows: string[][], left = 2): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string =>
    cells.map((c, i) => (i < left ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join('  ');
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

/** One JSON line of the Go KMS load client (bench/go-client, `kmsload`). */
export interface KmsLoadReport {
  mode: string;
  concurrency: number;
  calls: number;
  errors: number;
  seconds: number;
  callsPerSec: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  totalSeconds?: number;
  mismatches?: number;
}

/** Runs kmsload, forwarding its progress lines under `label`, and reads its last stdout line. */
export async function kmsload(bin: string, label: string, args: string[]): Promise<KmsLoadReport> {
  const r = await run(bin, args);
  for (const line of r.stderr.split('\n')) if (line.trim()) log(`${label}: ${line}`);
  if (r.code !== 0) throw new BenchError(`${label}: kmsload ${args.join(' ')} exited ${r.code ?? r.signal}`);
  return JSON.parse(r.stdout.trim().split('\n').pop() ?? '') as KmsLoadReport;
}
