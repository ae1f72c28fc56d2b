// The chaos point of `npm run bench`: KMS v2 load through the remote
// provider against two key servers on one PostgreSQL database, measured with
// no faults (the baseline) and again while the plugin's first server is
// SIGSTOPped and SIGCONTed every few seconds (a hung process, not a dead one),
// in the same run. Calls/s, failed calls, p99 and max latency.
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { BenchError, Child, envNumber, exited, fmt, freePort, interrupted, kmsload, type KmsLoadReport, log, onCleanup, ratio, ROOT, run, table } from './procs.js';
import { pgDatabase, startKeyServer } from './server-bench.js';

const KEY = 'bench';
const APP = 'bench-chaos';
const CONCURRENCY = 16;
const READY_TIMEOUT_MS = 60_000;
// From the issue: a hung server costs no call (those sent to it fail over within their deadline), and none reaches the apiserver's 3 s deadline.
const AIM = { failed: 0, maxMs: 3000 } as const;

const TARGETS = [
  { name: 'kekOff', label: 'kek off', localKek: false },
  { name: 'kekOn', label: 'kek on', localKek: true },
] as const;
type TargetName = (typeof TARGETS)[number]['name'];

export interface ChaosSectionOptions {
  readonly warmup: number;
  /** A folder of the caller's, removed by it. */
  readonly tmpDir: string;
  /** The built Go load client. */
  readonly kmsload: string;
}

export interface ChaosSectionResult {
  readonly text: string;
  readonly json: unknown;
  readonly failed: boolean;
}

type LoadReport = KmsLoadReport;

interface ChaosPoint {
  target: TargetName;
  baseline: LoadReport;
  chaos: LoadReport & { stops: number; stoppedSeconds: number };
  callsOverBaseline?: number;
}

async function waitHealthy(label: string, base: string, child: Child): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    if (interrupted) throw new BenchError('interrupted');
    if (exited(child.proc)) throw new BenchError(`${label} exited (${child.proc.exitCode ?? child.proc.signalCode}) before it was ready${child.output()}`);
    const status = await request(`${base}/v1/sys/health`).then(async (r) => (await r.body.text(), r.statusCode)).catch(() => 0);
    if (status === 200) return;
    if (Date.now() > deadline) throw new BenchError(`${label} not unsealed after ${READY_TIMEOUT_MS / 1000} s at ${base}${child.output()}`);
    await sleep(100);
  }
}

/** A second server on the same database and root key file: it unseals itself at start, after the first one's init. */
async function startSecondServer(dir: string, storage: unknown, rootKey: string, children: Child[]): Promise<{ child: Child; url: string }> {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const port = await freePort();
  const cfgPath = join(dir, 'server.yaml');
  const cfg = { listen: `127.0.0.1:${port}`, storage, seal: { keyfile: { path: rootKey } }, audit: { fsync: true }, log: { level: 'warn' } };
  writeFileSync(cfgPath, `${JSON.stringify(cfg, null, 2)}\n`, { mode: 0o600 });
  const child = new Child('chaos B', [join(ROOT, 'bin', 'keyhaven'), 'server', '--config', cfgPath]);
  children.push(child);
  const url = `http://127.0.0.1:${port}`;
  await waitHealthy('chaos server B', url, child);
  return { child, url };
}

async function startPlugin(bin: string, label: string, dir: string, servers: string[], apiKey: string, localKek: boolean, children: Child[]): Promise<string> {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const apiKeyFile = join(dir, 'api.key');
  writeFileSync(apiKeyFile, `${apiKey}\n`, { mode: 0o600 });
  const socket = join(dir, 'kms.sock');
  const cfgPath = join(dir, 'plugin.yaml');
  const cfg = {
    socket: `unix://${socket}`,
    provider: { type: 'keyhaven', servers, key: KEY, cluster: 'bench-chaos', apiKeyFile, localKek: { enabled: localKek } },
    log: { level: 'warn' },
  };
  writeFileSync(cfgPath, `${JSON.stringify(cfg, null, 2)}\n`, { mode: 0o600 });
  const child = new Child(label, [join(ROOT, 'bin', 'keyhaven'), 'plugin', '--config', cfgPath, '--health-addr', '127.0.0.1:0']);
  children.push(child);
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    if (interrupted) throw new BenchError('interrupted');
    if (exited(child.proc)) throw new BenchError(`${label} exited (${child.proc.exitCode ?? child.proc.signalCode}) before it was ready${child.output()}`);
    if (existsSync(socket) && (await status(bin, socket))) return socket;
    if (Date.now() > deadline) throw new BenchError(`${label} not ready after ${READY_TIMEOUT_MS / 1000} s${child.output()}`);
    await sleep(100);
  }
}

/** One Status call, as kube-apiserver polls it (the remote provider refuses Encrypt without a recent good probe). */
async function status(bin: string, socket: string): Promise<boolean> {
  const r = await run(bin, ['-socket', socket, '-mode', 'status', '-dial-timeout', '1s', '-timeout', '2s']);
  return r.code === 0;
}

/**
 * SIGSTOP the child for stopMs every everyMs, from startMs until endMs (epoch
 * ms); it is always continued before this resolves, also when the load fails.
 */
async function stopAndContinue(child: Child, startMs: number, endMs: number, everyMs: number, stopMs: number, done: () => boolean): Promise<{ stops: number; stoppedSeconds: number }> {
  let stops = 0;
  let stopped = 0;
  await sleep(Math.max(0, startMs - Date.now()));
  while (!done() && Date.now() + stopMs <= endMs) {
    const t0 = Date.now();
    child.proc.kill('SIGSTOP');
    try {
      await sleep(stopMs);
    } finally {
      child.proc.kill('SIGCONT');
    }
    stops += 1;
    stopped += Date.now() - t0;
    await sleep(Math.max(0, everyMs - (Date.now() - t0)));
  }
  return { stops, stoppedSeconds: Math.round(stopped / 100) / 10 };
}

export async function runChaosSection(o: ChaosSectionOptions): Promise<ChaosSectionResult> {
  const seconds = envNumber('BENCH_CHAOS_SECONDS', 12);
  const everyMs = envNumber('BENCH_CHAOS_EVERY_MS', 4000);
  const stopMs = envNumber('BENCH_CHAOS_STOP_MS', 2000);
  if (stopMs >= everyMs) throw new BenchError(`BENCH_CHAOS_STOP_MS (${stopMs}) must be below BENCH_CHAOS_EVERY_MS (${everyMs})`);
  const db = await pgDatabase();
  if ('skip' in db) {
    log(`chaos: skipped: ${db.skip}`);
    return { text: `chaos point skipped: ${db.skip}`, json: { section: 'chaos', skipped: db.skip }, failed: false };
  }
  const unregister = onCleanup(db.drop);
  const children: Child[] = [];
  let serverA: Child | undefined;
  try {
    const storage = { postgres: { url: db.url, poolSize: 4 } };
    const dirA = join(o.tmpDir, 'chaos-a');
    log('chaos: starting two key servers on one PostgreSQL database');
    const a = await startKeyServer({ label: 'chaos A', storage, dir: dirA, key: KEY, app: APP }, children);
    serverA = a.child;
    const b = await startSecondServer(join(o.tmpDir, 'chaos-b'), storage, join(dirA, 'root.key'), children);
    const sockets = new Map<TargetName, string>();
    for (const t of TARGETS) {
      sockets.set(t.name, await startPlugin(o.kmsload, `chaos ${t.label}`, join(o.tmpDir, `chaos-${t.name}`), [a.url, b.url], a.apiKey, t.localKek, children));
    }

    const points: ChaosPoint[] = [];
    for (const t of TARGETS) {
      const socket = sockets.get(t.name)!;
      const args = ['-socket', socket, '-mode', 'mixed', '-c', String(CONCURRENCY), '-warmup', `${o.warmup}s`, '-duration', `${seconds}s`];
      if (!(await status(o.kmsload, socket))) throw new BenchError(`chaos ${t.label}: Status failed before the baseline`);
      log(`chaos ${t.label}: baseline, ${seconds} s with no faults`);
      const baseline = await kmsload(o.kmsload, `chaos ${t.label} baseline`, args);
      if (!(await status(o.kmsload, socket))) throw new BenchError(`chaos ${t.label}: Status failed before the chaos load`);
      log(`chaos ${t.label}: ${seconds} s with server A stopped for ${stopMs} ms every ${everyMs} ms`);
      const t0 = Date.now();
      let finished = false;
      // Faults start once the warm-up is over (the client wraps its ciphertexts first, then warms up).
      const faults = stopAndContinue(a.child, t0 + o.warmup * 1000 + 500, t0 + (o.warmup + seconds) * 1000, everyMs, stopMs, () => finished);
      let chaos: LoadReport;
      try {
        chaos = await kmsload(o.kmsload, `chaos ${t.label} stopped`, args);
      } finally {
        finished = true;
        await faults;
      }
      const f = await faults;
      points.push({ target: t.name, baseline, chaos: { ...chaos, ...f }, callsOverBaseline: ratio(chaos.callsPerSec, baseline.callsPerSec) });
      log(`chaos ${t.label}: baseline ${baseline.callsPerSec.toFixed(0)} calls/s, ${baseline.errors} failed; stopped ${chaos.callsPerSec.toFixed(0)} calls/s, ${chaos.errors} failed, p99 ${chaos.p99Ms} ms, max ${chaos.maxMs} ms (${f.stops} stops)`);
      // Let the servers settle (connections the stop broke, back-off) before the next target's baseline.
      await sleep(2000);
    }

    const out: string[] = [];
    out.push(`keyhaven chaos point — ${cpus().length} CPUs, Node ${process.version}`);
    out.push(`KMS v2 Encrypt/Decrypt alternating, c=${CONCURRENCY} on one connection (kmsload -mode mixed, 3 s deadline per call), ${seconds} s measured after ${o.warmup} s warm-up;`);
    out.push(`a plugin with the remote provider, servers [A, B]: two keyhaven servers on one PostgreSQL database (keyfile seal, audit fsync).`);
    out.push(`"A stopped": A gets SIGSTOP for ${stopMs} ms every ${everyMs} ms during the measured window (SIGCONT after each), the baseline the same load with no faults.`);
    out.push('');
    const row = (label: string, load: string, r: LoadReport, extra: string): string[] => [
      label, load, fmt(r.callsPerSec), fmt(r.p50Ms, 2), fmt(r.p99Ms, 2), fmt(r.maxMs, 0), `${r.errors}${r.errors ? ' !!' : ''}${r.mismatches ? ` +${r.mismatches}mm` : ''}`, extra,
    ];
    out.push(
      table(
        ['target', 'load', 'calls/s', 'p50 ms', 'p99 ms', 'max ms', 'failed', 'calls/s vs baseline'],
        points.flatMap((p) => {
          const label = TARGETS.find((t) => t.name === p.target)!.label;
          return [row(label, 'no faults', p.baseline, ''), row(label, `A stopped ×${p.chaos.stops}`, p.chaos, fmt(p.callsOverBaseline, 2))];
        }),
      ),
    );
    out.push('');
    const met = points.every((p) => p.chaos.errors <= AIM.failed && p.chaos.maxMs < AIM.maxMs);
    out.push(
      `aim: a hung server stops no call: ${AIM.failed} failed calls and every call under ${AIM.maxMs / 1000} s (the apiserver's deadline) while A is stopped\n` +
        `  measured ${points.map((p) => `${TARGETS.find((t) => t.name === p.target)!.label} ${p.chaos.errors} failed of ${p.chaos.calls}, max ${fmt(p.chaos.maxMs, 0)} ms`).join('; ')}: ${met ? 'met' : 'NOT MET'}`,
    );
    out.push('failed: calls that returned an error or ran past the 3 s deadline (!! when not zero; +Nmm = wrong plaintexts).');
    out.push('calls/s vs baseline: chaos calls/s ÷ no-fault calls/s of the same target (1.00 = the hung server costs nothing).');
    out.push('');
    out.push('results (JSON):');
    out.push(JSON.stringify({ section: 'chaos', aimMet: met, cpus: cpus().length, node: process.version, seconds, warmup: o.warmup, everyMs, stopMs, concurrency: CONCURRENCY, points }));
    // Baseline failures or wrong plaintexts anywhere fail the run; failures under faults are what the aim measures.
    const failed = points.some((p) => p.baseline.errors > 0 || (p.baseline.mismatches ?? 0) > 0 || (p.chaos.mismatches ?? 0) > 0);
    return { text: out.join('\n'), json: points, failed };
  } finally {
    // A stopped child ignores SIGTERM until continued.
    serverA?.proc.kill('SIGCONT');
    await Promise.allSettled(children.reverse().map((c) => c.stop()));
    await db.drop().catch((e: unknown) => log(`chaos: dropping the database failed: ${e instanceof Error ? e.message : String(e)}`));
    unregister();
  }
}
