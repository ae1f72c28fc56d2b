// The one-call point of `npm run bench` ("oneshot"): plugins that make one
// key server call per KMS call, against the Go reference plugin doing the same
// call in the same run. All four talk to one keyhaven server:
//   refplugin  bench/go-refplugin: Go, net/http keep-alive, one DSM call per operation
//   dsm        keyhaven plugin, provider fortanix-dsm (keyhaven's DSM API)
//   vault      keyhaven plugin, provider vault (keyhaven's Transit API)
//   kek off    keyhaven plugin, provider keyhaven, localKek off
//   echo       bench/echo-server.ts: bare grpc-js answering constants, no key server call
//              (the ceiling of any Node plugin here; not part of the aim)
// Encrypt and Decrypt at c=1 and c=16; calls/s, p50, p99 and the ratio to the
// Go reference. The aim (issue 11): every keyhaven target ≥ 1.00× the Go
// reference at c=1.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BenchError, Child, exited, fmt, interrupted, kmsload, type KmsLoadReport, log, ratio, ROOT, run, table } from './procs.js';
import { startKeyServer } from './server-bench.js';

const KEY = 'bench';
const APP = 'bench-oneshot';
const CLUSTER = 'bench';
const READY_TIMEOUT_MS = 60_000;
const CONCURRENCIES = [1, 16] as const;
const OPS = ['encrypt', 'decrypt'] as const;
// From the issue: at c=1 at least as fast as the Go plugin doing the same one call per operation.
const AIM = { overRef: 1.0, concurrency: 1 } as const;

const TARGETS = ['refplugin', 'dsm', 'vault', 'kekOff', 'echo'] as const;
type TargetName = (typeof TARGETS)[number];
const SHORT: Record<TargetName, string> = { refplugin: 'go ref', dsm: 'dsm', vault: 'vault', kekOff: 'kek off', echo: 'echo' };
// The names BENCH_ONESHOT_TARGETS takes.
const TARGET_WORDS: Record<string, TargetName> = { refplugin: 'refplugin', 'go-ref': 'refplugin', dsm: 'dsm', vault: 'vault', 'kek-off': 'kekOff', echo: 'echo' };
const LABEL: Record<TargetName, string> = {
  echo: 'grpc-js echo',
  refplugin: 'Go reference plugin',
  dsm: 'keyhaven fortanix-dsm',
  vault: 'keyhaven vault',
  kekOff: 'keyhaven remote kek off',
};

const REFPLUGIN_DIR = join(ROOT, 'bench', 'go-refplugin');

export interface OneshotOptions {
  readonly seconds: number;
  readonly warmup: number;
  /** A folder of the caller's, removed by it. */
  readonly tmpDir: string;
  /** The built Go load client. */
  readonly kmsload: string;
  /** The built Go reference plugin. */
  readonly refplugin: string;
  /** Which targets (default all); the ratios need refplugin. */
  readonly targets?: readonly TargetName[];
}

export interface OneshotResult {
  readonly text: string;
  readonly failed: boolean;
}

interface Point {
  op: (typeof OPS)[number];
  concurrency: number;
  results: Partial<Record<TargetName, KmsLoadReport>>;
  /** calls/s ÷ the Go reference's calls/s */
  overRef: Partial<Record<TargetName, number>>;
  /** CPU time (user + system) per call of the target's own process, µs */
  cpuUs: Partial<Record<TargetName, number>>;
  /** CPU time per call of the key server while it served that target, µs */
  serverCpuUs: Partial<Record<TargetName, number>>;
}

/** A comma-separated environment list, each word checked against `allowed`; undefined when unset. */
function envList<T>(name: string, allowed: Record<string, T>): T[] | undefined {
  const raw = process.env[name]?.trim();
  if (!raw) return undefined;
  return raw.split(',').map((w) => {
    const v = allowed[w.trim()];
    if (v === undefined) throw new BenchError(`${name} takes a comma-separated list of ${Object.keys(allowed).join(', ')}; got ${JSON.stringify(w)}`);
    return v;
  });
}

let clockTicks: number | undefined;
/** CPU time (user + system) a process has used so far, ms, from /proc; undefined where there is no /proc. */
function cpuMsOf(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    clockTicks ??= Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which may hold spaces): utime and stime are the 14th and 15th of the line.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(f[11]) + Number(f[12])) * 1000) / clockTicks;
  } catch {
    return undefined;
  }
}

/** Builds bench/go-refplugin with the same GOPATH-mode environment as the load client. */
export function buildRefplugin(env: NodeJS.ProcessEnv, out: string): void {
  const r = spawnSync('go', ['build', '-o', out, '.'], { cwd: REFPLUGIN_DIR, env, encoding: 'utf8' });
  if (r.status !== 0) throw new BenchError(`building the Go reference plugin failed:\n${r.stderr || r.error?.message || ''}`);
}

async function statusOk(bin: string, socket: string): Promise<boolean> {
  const r = await run(bin, ['-socket', socket, '-mode', 'status', '-dial-timeout', '1s', '-timeout', '2s']);
  return r.code === 0;
}

function nodeArgs(): string[] {
  const raw = process.env.BENCH_ONESHOT_NODE_ARGS?.trim();
  return raw ? raw.split(/\s+/) : [];
}

/** Starts a target and waits for its socket to answer Status. */
async function start(o: OneshotOptions, name: TargetName, cmd: string, argv: string[], socket: string, children: Child[]): Promise<Child> {
  const child = new Child(LABEL[name], argv, process.env, cmd);
  children.push(child);
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    if (interrupted) throw new BenchError('interrupted');
    if (child.spawnError) throw new BenchError(`${LABEL[name]}: ${child.spawnError.message}`);
    if (exited(child.proc)) throw new BenchError(`${LABEL[name]} exited (${child.proc.exitCode ?? child.proc.signalCode}) before it was ready${child.output()}`);
    if (existsSync(socket) && (await statusOk(o.kmsload, socket))) return child;
    if (Date.now() > deadline) throw new BenchError(`${LABEL[name]} not ready after ${READY_TIMEOUT_MS / 1000} s (socket ${socket})${child.output()}`);
    await sleep(100);
  }
}

export async function runOneshotSection(o: OneshotOptions): Promise<OneshotResult> {
  const picked = o.targets ?? envList('BENCH_ONESHOT_TARGETS', TARGET_WORDS);
  const names = TARGETS.filter((n) => !picked || picked.includes(n));
  const pickedOps = envList('BENCH_ONESHOT_OPS', { encrypt: 'encrypt', decrypt: 'decrypt' } as const);
  const ops = OPS.filter((op) => !pickedOps || pickedOps.includes(op));
  const concurrencies = envList('BENCH_ONESHOT_C', { '1': 1, '16': 16 }) ?? CONCURRENCIES;
  const children: Child[] = [];
  try {
    log('oneshot: starting keyhaven server (SQLite, keyfile seal, audit fsync)');
    const dir = join(o.tmpDir, 'oneshot');
    const server = await startKeyServer(
      { label: 'oneshot key server', storage: { sqlite: { path: join(dir, 'server', 'keyhaven.db') } }, dir: join(dir, 'server'), key: KEY, app: APP },
      children,
    );
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    // The app's API key in each provider's form: DSM's base64("app:secret") (docs/compat-dsm.md), Vault's token, keyhaven's own.
    const dsmKeyFile = join(dir, 'dsm.key');
    writeFileSync(dsmKeyFile, `${Buffer.from(`${APP}:${server.apiKey}`).toString('base64')}\n`, { mode: 0o600 });
    const apiKeyFile = join(dir, 'api.key');
    writeFileSync(apiKeyFile, `${server.apiKey}\n`, { mode: 0o600 });

    const sockets = new Map<TargetName, string>();
    const pids = new Map<TargetName, number | undefined>();
    const cli = join(ROOT, 'bin', 'keyhaven');
    for (const name of names) {
      const socket = join(dir, `${name}.sock`);
      sockets.set(name, socket);
      if (name === 'echo') {
        pids.set(name, (await start(o, name, process.execPath, [join(ROOT, 'dist', 'bench', 'echo-server.js'), socket], socket, children)).proc.pid);
        continue;
      }
      if (name === 'refplugin') {
        pids.set(name, (await start(o, name, o.refplugin, ['-socket', socket, '-endpoint', server.url, '-api-key-file', dsmKeyFile, '-key-name', KEY, '-cluster', CLUSTER], socket, children)).proc.pid);
        continue;
      }
      const provider =
        name === 'dsm'
          ? { type: 'fortanix-dsm', endpoints: [server.url], apiKeyFile: dsmKeyFile, keyName: KEY, cluster: CLUSTER }
          : name === 'vault'
            ? { type: 'vault', addresses: [server.url], key: KEY, auth: { tokenFile: apiKeyFile } }
            : { type: 'keyhaven', servers: [server.url], key: KEY, cluster: CLUSTER, apiKeyFile, localKek: { enabled: false } };
      const cfgPath = join(dir, `${name}.yaml`);
      // YAML is a superset of JSON.
      writeFileSync(cfgPath, `${JSON.stringify({ socket: `unix://${socket}`, provider, log: { level: 'warn' } }, null, 2)}\n`, { mode: 0o600 });
      try {
        unlinkSync(socket);
      } catch {
        // not there
      }
      pids.set(name, (await start(o, name, process.execPath, [...nodeArgs(), cli, 'plugin', '--config', cfgPath, '--health-addr', '127.0.0.1:0'], socket, children)).proc.pid);
    }
    log(`oneshot: ${names.map((n) => LABEL[n]).join(', ')} ready`);

    // The echo answers a constant plaintext: only the plugins' are checked.
    const check = (n: TargetName) => `-check=${n !== 'echo'}`;
    const poll = async (n: TargetName) => {
      // The keyhaven providers refuse Encrypt when the server has not confirmed the key lately, as kube-apiserver's Status poll keeps it.
      if (!(await statusOk(o.kmsload, sockets.get(n)!))) throw new BenchError(`${LABEL[n]}: Status failed`);
    };
    for (const n of names) {
      log(`oneshot: ${LABEL[n]}: warm-up 3 s of mixed Encrypt/Decrypt`);
      await poll(n);
      await kmsload(o.kmsload, LABEL[n], ['-socket', sockets.get(n)!, '-mode', 'mixed', '-c', '16', '-warmup', '0s', '-duration', '3s', check(n)]);
    }

    // Interleaved per point, so drift on the machine hits every target alike.
    const points: Point[] = [];
    for (const op of ops) {
      for (const c of concurrencies) {
        const p: Point = { op, concurrency: c, results: {}, overRef: {}, cpuUs: {}, serverCpuUs: {} };
        for (const n of names) {
          await poll(n);
          const before = [cpuMsOf(pids.get(n)), cpuMsOf(server.child.proc.pid)];
          const r = await kmsload(o.kmsload, LABEL[n], ['-socket', sockets.get(n)!, '-mode', op, '-c', String(c), '-warmup', `${o.warmup}s`, '-duration', `${o.seconds}s`, check(n)]);
          const after = [cpuMsOf(pids.get(n)), cpuMsOf(server.child.proc.pid)];
          p.results[n] = r;
          // The CPU is counted over warm-up and measured seconds alike: the calls of both, at the measured rate.
          const calls = r.callsPerSec * (o.warmup + o.seconds);
          const perCall = (i: number) => (before[i] !== undefined && after[i] !== undefined && calls > 0 ? Math.round(((after[i]! - before[i]!) * 1000) / calls) : undefined);
          const cpu = perCall(0);
          const serverCpu = perCall(1);
          if (cpu !== undefined) p.cpuUs[n] = cpu;
          if (serverCpu !== undefined) p.serverCpuUs[n] = serverCpu;
          log(`oneshot: ${LABEL[n]} ${op} c=${c}: ${r.callsPerSec.toFixed(0)} calls/s, p50 ${r.p50Ms} ms, p99 ${r.p99Ms} ms, errors ${r.errors}, CPU ${fmt(cpu)} µs/call (key server ${fmt(serverCpu)})`);
        }
        for (const n of names) if (n !== 'refplugin') p.overRef[n] = ratio(p.results[n]?.callsPerSec, p.results.refplugin?.callsPerSec);
        points.push(p);
      }
    }

    // The keyhaven plugins: what the aim is about.
    const ours = names.filter((n) => n !== 'refplugin' && n !== 'echo');
    const others = names.filter((n) => n !== 'refplugin');
    const hasRef = names.includes('refplugin');
    const out: string[] = [];
    out.push(`keyhaven one-call-per-operation plugins vs the Go reference — ${cpus().length} CPUs, Node ${process.version}`);
    out.push(`${o.seconds} s measured per point after ${o.warmup} s warm-up; kmsload over one gRPC connection; every target makes one HTTP call to one`);
    out.push('keyhaven server (SQLite, keyfile seal, audit fsync, plain HTTP on 127.0.0.1) per Encrypt or Decrypt:');
    out.push('  go ref = bench/go-refplugin (Go net/http keep-alive, DSM API, session Bearer, AES-GCM by kid); dsm = provider fortanix-dsm;');
    out.push('  vault = provider vault (Transit API); kek off = provider keyhaven, localKek off;');
    out.push('  echo = bare grpc-js server answering constants, no key server call: the ceiling of a Node plugin on this machine (not in the aim)');
    out.push('');
    out.push(
      table(
        ['op', 'c', ...names.map((n) => `${SHORT[n]} calls/s`), ...names.map((n) => `${SHORT[n]} p50/p99 ms`), ...(hasRef ? others.map((n) => `${SHORT[n]}/go ref`) : []), 'errors'],
        points.map((p) => [
          p.op, String(p.concurrency),
          ...names.map((n) => fmt(p.results[n]?.callsPerSec)),
          ...names.map((n) => {
            const r = p.results[n];
            return r ? `${r.p50Ms.toFixed(2)} / ${r.p99Ms.toFixed(2)}` : '-';
          }),
          ...(hasRef ? others.map((n) => fmt(p.overRef[n], 2)) : []),
          names.map((n) => {
            const r = p.results[n];
            return r ? (r.mismatches ? `${r.errors}+${r.mismatches}mm` : String(r.errors)) : '-';
          }).join(' / '),
        ]),
      ),
    );
    out.push('');
    // CPU per call: what the wall-clock ratios hide on a busy machine.
    out.push(
      table(
        ['op', 'c', ...names.map((n) => `${SHORT[n]} CPU µs`), ...names.map((n) => `server for ${SHORT[n]} µs`)],
        points.map((p) => [p.op, String(p.concurrency), ...names.map((n) => fmt(p.cpuUs[n])), ...names.map((n) => fmt(p.serverCpuUs[n]))]),
      ),
    );
    out.push('');
    let met: boolean | undefined;
    if (hasRef && ours.length > 0) {
      const at = points.filter((p) => p.concurrency === AIM.concurrency);
      const cells = at.flatMap((p) => ours.map((n) => ({ p, n, q: p.overRef[n] })));
      met = cells.every((x) => x.q !== undefined && x.q >= AIM.overRef);
      const worst = cells.reduce<(typeof cells)[number] | undefined>((w, x) => (x.q !== undefined && (w?.q === undefined || x.q < w.q) ? x : w), undefined);
      out.push(
        `aim: one-call providers at c=${AIM.concurrency} ≥ ${AIM.overRef.toFixed(2)}× Go reference (calls/s)\n` +
          `  measured ${at.map((p) => `${p.op} ${ours.map((n) => `${SHORT[n]} ${fmt(p.overRef[n], 2)}`).join(', ')}`).join('; ')}` +
          `; lowest ${fmt(worst?.q, 2)}${worst ? ` (${SHORT[worst.n]} ${worst.p.op})` : ''}: ${met ? 'met' : 'NOT MET'}`,
      );
    }
    out.push('X/go ref: calls/s ÷ the Go reference plugin\'s calls/s in the same point (1.00 = as fast).');
    out.push(`errors: failed calls (+Nmm = wrong plaintexts), one figure per target (${names.map((n) => SHORT[n]).join(' / ')}).`);
    out.push('CPU µs: user + system CPU per call of the target\'s process (from /proc; warm-up included, at the measured rate); server for X: the key server\'s, while it served X.');
    out.push('');
    out.push('results (JSON):');
    out.push(JSON.stringify({ section: 'oneshot', cpus: cpus().length, node: process.version, seconds: o.seconds, warmup: o.warmup, aimMet: met ?? null, points }));
    const failed = points.some((p) => Object.values(p.results).some((r) => r !== undefined && (r.errors > 0 || (r.mismatches ?? 0) > 0)));
    return { text: out.join('\n'), failed };
  } finally {
    await Promise.allSettled(children.reverse().map((c) => c.stop()));
  }
}
