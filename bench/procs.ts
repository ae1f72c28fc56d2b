// Shared by the benchmark sections: child processes that are always stopped,
// temporary folders that are always removed, and table formatting.
import { spawn, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
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
