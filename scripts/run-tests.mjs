#!/usr/bin/env node
// Runs every compiled test file (unit tests beside the code, end-to-end tests
// under test/), each in a node process of its own with node's test runner
// and spec reporter. Test files are listed explicitly so the run does not
// depend on the Node version's discovery rules.
//
// Order: longest first, by the durations in test/durations.txt (a file not
// listed there counts as longest), so the run does not end on one long file
// while the other slots idle. Node 20's `--test` sorts its files by name, so
// this script keeps its own small pool. `--record` rewrites the list from
// this run's wall times.
//
// Concurrency: KEYHAVEN_TEST_CONCURRENCY (default 4: end-to-end files often
// wait on child processes, fsync and PostgreSQL; on 2 cores a fourth file
// keeps them busy: 309 s against 331 s with 3 on a quiet machine).
//
// A file still running after KEYHAVEN_TEST_FILE_GUARD_MIN minutes (default
// 30) is taken for hung and ended with SIGTERM (test/reaper.ts then kills its
// children). It is a guard against a hang only, far above any file's time on
// a busy machine: a slow machine makes the run slower, never red.
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';

const ROOT = resolve(import.meta.dirname, '..');
const DURATIONS = join(ROOT, 'test', 'durations.txt');

function positiveInt(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const v = Number(raw);
  if (!Number.isInteger(v) || v < 1) {
    console.error(`${name} must be a positive integer, got ${JSON.stringify(raw)}`);
    process.exit(2);
  }
  return v;
}
const concurrency = positiveInt('KEYHAVEN_TEST_CONCURRENCY', 4);
const guardMs = positiveInt('KEYHAVEN_TEST_FILE_GUARD_MIN', 30) * 60_000;

function collect(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...collect(p));
    else if (name.endsWith('.test.js')) out.push(relative(ROOT, p));
  }
  return out;
}

/** path (relative to the repository) → seconds, from the recorded list. */
function knownDurations() {
  const out = new Map();
  if (!existsSync(DURATIONS)) return out;
  for (const line of readFileSync(DURATIONS, 'utf8').split('\n')) {
    const m = /^(\d+(?:\.\d+)?) (\S+)$/.exec(line.trim());
    if (m) out.set(m[2], Number(m[1]));
  }
  return out;
}

const args = process.argv.slice(2);
const record = args.includes('--record');
const only = args.filter((a) => a !== '--record');
const known = knownDurations();
const files = [...collect(join(ROOT, 'dist/src')), ...collect(join(ROOT, 'dist/test'))]
  .filter((f) => only.length === 0 || only.some((o) => f.includes(o)))
  .sort((a, b) => (known.get(b) ?? Infinity) - (known.get(a) ?? Infinity) || a.localeCompare(b));
if (files.length === 0) {
  console.error('no test files found under dist/ (did the build run?)');
  process.exit(1);
}

const running = new Set();
const results = [];
const totals = { tests: 0, pass: 0, fail: 0, cancelled: 0, skipped: 0, todo: 0 };
const started = Date.now();

function runFile(file) {
  return new Promise((done) => {
    const t0 = Date.now();
    const child = spawn(process.execPath, ['--test-reporter=spec', file], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, FORCE_COLOR: process.stdout.isTTY ? '1' : '0' } });
    running.add(child);
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    let hung = false;
    const guard = setTimeout(() => {
      hung = true;
      child.kill('SIGTERM');
      setTimeout(() => child.kill('SIGKILL'), 30_000).unref();
    }, guardMs);
    child.once('close', (code, signal) => {
      clearTimeout(guard);
      running.delete(child);
      const seconds = (Date.now() - t0) / 1000;
      for (const [, k, n] of out.matchAll(/^ℹ (tests|pass|fail|cancelled|skipped|todo) (\d+)$/gm)) totals[k] += Number(n);
      const ok = code === 0;
      process.stdout.write(`\n# ${ok ? 'ok' : 'FAILED'} ${file} (${seconds.toFixed(1)} s)${ok ? '' : `, exit ${signal ?? code}`}${hung ? ` — ended as hung after ${guardMs / 60_000} min` : ''}\n${out}`);
      results.push({ file, seconds, ok });
      done();
    });
  });
}

const queue = [...files];

// Ending the run (Ctrl-C, a CI cancel) starts no more files and ends the
// running ones; each file's reaper kills its children.
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, () => {
    queue.length = 0;
    for (const c of running) c.kill('SIGTERM');
    process.exitCode = 130;
  });
}

await Promise.all(
  Array.from({ length: Math.min(concurrency, queue.length) }, async () => {
    for (let f = queue.shift(); f !== undefined; f = queue.shift()) await runFile(f);
  }),
);

const wall = (Date.now() - started) / 1000;
const failed = results.filter((r) => !r.ok);
const slowest = [...results].sort((a, b) => b.seconds - a.seconds).slice(0, 10);
console.log(`\n# ${results.length} files in ${wall.toFixed(1)} s (concurrency ${concurrency}): ${totals.tests} tests, ${totals.pass} pass, ${totals.fail} fail, ${totals.cancelled} cancelled, ${totals.skipped} skipped, ${totals.todo} todo`);
console.log('# slowest files:');
for (const r of slowest) console.log(`#   ${r.seconds.toFixed(1).padStart(7)} s  ${r.file}`);
if (failed.length > 0) {
  console.log('# failed files:');
  for (const r of failed) console.log(`#   ${r.file}`);
}
if (record) {
  // Merged over the old list, so a partial run updates only the files it ran.
  const merged = new Map(known);
  for (const r of results) merged.set(r.file, r.seconds);
  const text = [...merged].sort((a, b) => b[1] - a[1]).map(([p, s]) => `${s.toFixed(1)} ${p}`).join('\n');
  writeFileSync(DURATIONS, `${text}\n`);
  console.log(`# durations recorded in ${relative(ROOT, DURATIONS)}`);
}
process.exit(process.exitCode ?? (failed.length > 0 || results.length < files.length ? 1 : 0));
