// npm run bench: KMS v2 throughput and latency of the keyhaven plugin against
// a bare grpc-js server measured in the same run, driven by a Go client that
// behaves like kube-apiserver (one connection over a unix socket); then the
// key server's HTTP Encrypt/Decrypt against a bare node:http server
// (bench/server-bench.ts).
//
//   node dist/bench/run.js [server] [--only echo|plugin|server]
//   env: BENCH_SECONDS (measured seconds per plugin point, default 5),
//        BENCH_SERVER_SECONDS (measured seconds per server point, default 3),
//        BENCH_WARMUP (unmeasured seconds before each point, default 1),
//        BENCH_STORM_N (seeds in the restart storm, default 10000),
//        BENCH_SERVER_NODE_ARGS (extra node flags for the key server, e.g. --cpu-prof)
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, unlinkSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import {
  BenchError, envNumber, exited, fmt, interrupted, log, ratio, registerTmp, ROOT, run, shutdown, stopAll, stopChild, table, track,
} from './procs.js';
import { runServerSection } from './server-bench.js';

const GO_CLIENT_DIR = join(ROOT, 'bench', 'go-client');
const KMSLOAD = join(GO_CLIENT_DIR, 'bin', 'kmsload');
const GOPATH_DIR = join(ROOT, 'bench', '.gopath');
const DEBIAN_GOCODE = '/usr/share/gocode';
const DEBIAN_PACKAGES = ['golang-go', 'golang-google-grpc-dev', 'golang-google-protobuf-dev'];

const CONCURRENCIES = [1, 16, 64] as const;
const OPS = ['encrypt', 'decrypt'] as const;
const STORM_CONCURRENCIES = [64, 16] as const;
const READY_TIMEOUT_MS = 60_000;

type TargetName = 'echo' | 'plugin';
type Op = (typeof OPS)[number];

interface LoadReport {
  mode: string;
  concurrency: number;
  calls: number;
  errors: number;
  seconds: number;
  callsPerSec: number;
  p50Ms: number;
  p99Ms: number;
  totalSeconds?: number;
  mismatches?: number;
}

interface StatusReport {
  version: string;
  healthz: string;
  keyId: string;
}

// ---------------------------------------------------------------- Go client

function commandExists(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

function goToolchainReady(): boolean {
  return (
    spawnSync('go', ['version'], { stdio: 'ignore' }).status === 0 &&
    existsSync(join(DEBIAN_GOCODE, 'src/google.golang.org/grpc/version.go')) &&
    existsSync(join(DEBIAN_GOCODE, 'src/google.golang.org/protobuf/encoding/protowire'))
  );
}

function ensureGo(): void {
  if (goToolchainReady()) return;
  const msg =
    `the Go load client needs Go and Debian's grpc-go sources under ${DEBIAN_GOCODE}:\n` +
    `  apt-get install ${DEBIAN_PACKAGES.join(' ')}`;
  const isRoot = process.getuid?.() === 0;
  if (!isRoot || !commandExists('apt-get')) throw new BenchError(msg);
  log(`${msg}\ninstalling them now (running as root)`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  for (const args of [['update'], ['install', '-y', '--no-install-recommends', ...DEBIAN_PACKAGES]]) {
    const r = spawnSync('apt-get', args, { stdio: ['ignore', 2, 2], env });
    if (r.status !== 0) throw new BenchError(`apt-get ${args[0]} failed\n${msg}`);
  }
  if (!goToolchainReady()) throw new BenchError(`Go is still not usable after installing\n${msg}`);
}

// GOPATH mode against Debian's sources: offline, no go.mod, no protoc.
function buildClient(): void {
  mkdirSync(GOPATH_DIR, { recursive: true });
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    GO111MODULE: 'off',
    GOPATH: `${GOPATH_DIR}:${DEBIAN_GOCODE}`,
    GOCACHE: join(GOPATH_DIR, 'cache'),
    GOFLAGS: '',
    GOPROXY: 'off',
    CGO_ENABLED: '0',
  };
  const r = spawnSync('go', ['build', '-o', KMSLOAD, '.'], { cwd: GO_CLIENT_DIR, env, encoding: 'utf8' });
  if (r.status !== 0) {
    throw new BenchError(`building the Go client failed:\n${r.stderr || r.error?.message || ''}\n(needs ${DEBIAN_PACKAGES.join(' ')})`);
  }
}

async function kmsload(label: string, args: string[]): Promise<LoadReport> {
  const r = await run(KMSLOAD, args);
  for (const line of r.stderr.split('\n')) if (line.trim()) log(`${label}: ${line}`);
  if (r.code !== 0) throw new BenchError(`${label}: kmsload ${args.join(' ')} exited ${r.code ?? r.signal}`);
  const last = r.stdout.trim().split('\n').pop() ?? '';
  return JSON.parse(last) as LoadReport;
}

async function statusOnce(socket: string): Promise<StatusReport | undefined> {
  const r = await run(KMSLOAD, ['-socket', socket, '-mode', 'status', '-dial-timeout', '1s', '-timeout', '2s']);
  if (r.code !== 0) return undefined;
  try {
    return JSON.parse(r.stdout.trim()) as StatusReport;
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------- targets

class Target {
  private child: ChildProcess | undefined;
  private tail: string[] = [];
  status: StatusReport | undefined;

  constructor(
    readonly name: TargetName,
    readonly socket: string,
    private readonly argv: string[],
    // The echo answers a constant plaintext; only the plugin's is checked.
    readonly checkPlaintext: boolean,
  ) {}

  private remember(chunk: string): void {
    for (const line of chunk.split('\n')) {
      if (!line.trim()) continue;
      this.tail.push(line);
      if (this.tail.length > 40) this.tail.shift();
    }
  }

  private output(): string {
    return this.tail.length ? `\n--- last output of ${this.name} ---\n${this.tail.join('\n')}` : '';
  }

  async start(): Promise<void> {
    this.tail = [];
    const child = track(spawn(process.execPath, this.argv, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] }));
    this.child = child;
    // Always drain the pipes, or a chatty child blocks on a full pipe.
    child.stdout?.setEncoding('utf8').on('data', (d: string) => this.remember(d));
    child.stderr?.setEncoding('utf8').on('data', (d: string) => this.remember(d));
    let spawnError: Error | undefined;
    child.once('error', (e) => (spawnError = e));

    const deadline = Date.now() + READY_TIMEOUT_MS;
    for (;;) {
      if (interrupted) throw new BenchError('interrupted');
      if (spawnError) throw new BenchError(`${this.name}: ${spawnError.message}`);
      if (exited(child)) {
        throw new BenchError(`${this.name} exited (${child.exitCode ?? child.signalCode}) before it was ready${this.output()}`);
      }
      if (existsSync(this.socket)) {
        const s = await statusOnce(this.socket);
        if (s) {
          if (s.healthz !== 'ok' || (s.version !== 'v2' && s.version !== 'v2beta1')) {
            log(`${this.name}: Status answered version=${s.version} healthz=${s.healthz}`);
          }
          this.status = s;
          return;
        }
      }
      if (Date.now() > deadline) {
        throw new BenchError(`${this.name} not ready after ${READY_TIMEOUT_MS / 1000} s (socket ${this.socket})${this.output()}`);
      }
      await sleep(100);
    }
  }

  async stop(): Promise<void> {
    if (this.child) await stopChild(this.child);
    this.child = undefined;
    // A fresh start must be seen to create its own socket.
    try {
      unlinkSync(this.socket);
    } catch {
      // not there
    }
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }
}

async function initPlugin(dataDir: string): Promise<void> {
  const cli = join(ROOT, 'bin', 'keyhaven');
  if (!existsSync(cli)) throw new BenchError(`${cli} not found; the plugin is not built yet (try --only echo)`);
  const r = await run(process.execPath, [cli, 'init', '--data-dir', dataDir, '--key', 'bench']);
  if (r.code !== 0) {
    throw new BenchError(`keyhaven init failed (${r.code ?? r.signal}):\n${(r.stderr || r.stdout).trim().split('\n').slice(-20).join('\n')}`);
  }
}

// ---------------------------------------------------------------- report

interface PointResult {
  op: Op;
  concurrency: number;
  echo?: LoadReport;
  plugin?: LoadReport;
  pluginOverEcho?: number;
}

interface StormResult {
  concurrency: number;
  decrypts: number;
  echo?: LoadReport;
  plugin?: LoadReport;
  pluginTimeOverEchoTime?: number;
}

function lat(r: LoadReport | undefined): string {
  return r ? `${r.p50Ms.toFixed(2)} / ${r.p99Ms.toFixed(2)}` : '-';
}

function faults(r: LoadReport | undefined): string {
  if (!r) return '-';
  return r.mismatches ? `${r.errors}+${r.mismatches}mm` : String(r.errors);
}

// ---------------------------------------------------------------- main

async function pluginSection(names: TargetName[], tmpRoot: string): Promise<boolean> {
  const seconds = envNumber('BENCH_SECONDS', 5);
  const warmup = envNumber('BENCH_WARMUP', 1);
  const stormN = Math.round(envNumber('BENCH_STORM_N', 10_000));

  ensureGo();
  log('building the Go client');
  buildClient();
  const goVersion = spawnSync('go', ['version'], { encoding: 'utf8' }).stdout.trim();

  const echoSock = join(tmpRoot, 'echo.sock');
  const pluginSock = join(tmpRoot, 'plugin.sock');
  const dataDir = join(tmpRoot, 'plugin-data');

  const targets: Target[] = [];
  for (const name of names) {
    if (name === 'echo') {
      targets.push(new Target('echo', echoSock, [join(ROOT, 'dist', 'bench', 'echo-server.js'), echoSock], false));
    } else {
      await initPlugin(dataDir);
      const argv = [
        join(ROOT, 'bin', 'keyhaven'), 'plugin',
        '--socket', `unix://${pluginSock}`,
        '--data-dir', dataDir,
        '--key', 'bench',
        '--health-addr', '127.0.0.1:0',
        '--log-level', 'warn',
      ];
      targets.push(new Target('plugin', pluginSock, argv, true));
    }
  }

  for (const t of targets) {
    log(`starting ${t.name}`);
    await t.start();
    log(`${t.name} ready: key_id ${t.status?.keyId ?? '?'}`);
  }

  const checkFlag = (t: Target): string => `-check=${t.checkPlaintext}`;

  for (const t of targets) {
    log(`${t.name}: warm-up 3 s of mixed Encrypt/Decrypt`);
    await kmsload(t.name, ['-socket', t.socket, '-mode', 'mixed', '-c', '16', '-warmup', '0s', '-duration', '3s', checkFlag(t)]);
  }

  // Interleave targets per point so drift on the machine hits both alike.
  const points: PointResult[] = [];
  for (const op of OPS) {
    for (const c of CONCURRENCIES) {
      const p: PointResult = { op, concurrency: c };
      for (const t of targets) {
        const r = await kmsload(t.name, [
          '-socket', t.socket, '-mode', op, '-c', String(c),
          '-warmup', `${warmup}s`, '-duration', `${seconds}s`, checkFlag(t),
        ]);
        p[t.name] = r;
        log(`${t.name} ${op} c=${c}: ${r.callsPerSec.toFixed(0)} calls/s, p50 ${r.p50Ms} ms, p99 ${r.p99Ms} ms, errors ${r.errors}`);
      }
      p.pluginOverEcho = ratio(p.plugin?.callsPerSec, p.echo?.callsPerSec);
      points.push(p);
    }
  }

  const genFile = (t: Target): string => join(tmpRoot, `seeds-${t.name}.jsonl`);
  for (const t of targets) {
    log(`${t.name}: wrapping ${stormN} seeds for the restart storm`);
    const g = await kmsload(t.name, ['-socket', t.socket, '-mode', 'gen', '-n', String(stormN), '-c', '64', '-out', genFile(t)]);
    if (g.errors > 0) throw new BenchError(`${t.name}: ${g.errors} Encrypt calls failed while preparing the storm`);
  }

  const storms: StormResult[] = [];
  for (const c of STORM_CONCURRENCIES) {
    const s: StormResult = { concurrency: c, decrypts: stormN };
    for (const t of targets) {
      log(`${t.name}: restart, then Decrypt ${stormN} seeds at c=${c}`);
      await t.restart();
      const r = await kmsload(t.name, ['-socket', t.socket, '-mode', 'storm', '-c', String(c), '-in', genFile(t), checkFlag(t)]);
      s[t.name] = r;
      log(`${t.name} storm c=${c}: ${r.totalSeconds ?? r.seconds} s, errors ${r.errors}, mismatches ${r.mismatches ?? '-'}`);
    }
    s.pluginTimeOverEchoTime = ratio(s.plugin?.totalSeconds, s.echo?.totalSeconds);
    storms.push(s);
  }

  for (const t of targets) await t.stop();

  const out: string[] = [];
  out.push(`keyhaven KMS v2 benchmark — ${cpus().length} CPUs, Node ${process.version}, ${goVersion}`);
  out.push(`${seconds} s measured per point after ${warmup} s warm-up; one gRPC connection over a unix socket, like kube-apiserver`);
  out.push('');
  out.push(
    table(
      ['op', 'c', 'echo calls/s', 'plugin calls/s', 'plugin/echo', 'echo p50/p99 ms', 'plugin p50/p99 ms', 'errors echo', 'errors plugin'],
      points.map((p) => [
        p.op, String(p.concurrency),
        fmt(p.echo?.callsPerSec), fmt(p.plugin?.callsPerSec), fmt(p.pluginOverEcho, 2),
        lat(p.echo), lat(p.plugin), faults(p.echo), faults(p.plugin),
      ]),
    ),
  );
  out.push('');
  out.push(`restart storm: ${stormN} distinct Decrypts right after a process restart`);
  out.push(
    table(
      ['storm', 'c', 'echo s', 'plugin s', 'plugin time / echo time', 'echo p50/p99 ms', 'plugin p50/p99 ms', 'errors echo', 'errors plugin'],
      storms.map((s) => [
        'decrypt', String(s.concurrency),
        fmt(s.echo?.totalSeconds, 3), fmt(s.plugin?.totalSeconds, 3), fmt(s.pluginTimeOverEchoTime, 2),
        lat(s.echo), lat(s.plugin), faults(s.echo), faults(s.plugin),
      ]),
    ),
  );
  out.push('');
  out.push('plugin/echo: share of the bare grpc-js ceiling the plugin reaches (1.00 = as fast as a server doing nothing).');
  out.push('plugin time / echo time: how many times longer the plugin takes to drain the storm (1.00 = no overhead).');
  out.push('errors: failed calls (+Nmm = plaintext mismatches).');
  out.push('');
  out.push('results (JSON):');
  out.push(
    JSON.stringify({
      cpus: cpus().length,
      node: process.version,
      go: goVersion,
      seconds,
      warmup,
      stormN,
      keyIds: Object.fromEntries(targets.map((t) => [t.name, t.status?.keyId ?? null])),
      points,
      storms,
    }),
  );
  process.stdout.write(out.join('\n') + '\n');

  const failed = [...points.flatMap((p) => [p.echo, p.plugin]), ...storms.flatMap((s) => [s.echo, s.plugin])].some(
    (r) => r !== undefined && (r.errors > 0 || (r.mismatches ?? 0) > 0),
  );
  if (failed) log('some calls failed or returned a wrong plaintext (see the errors columns)');
  return failed;
}

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    options: { only: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
    allowPositionals: true,
    strict: true,
  });
  if (values.help) {
    process.stdout.write(
      'usage: node dist/bench/run.js [server] [--only echo|plugin|server]\n' +
        '  env BENCH_SECONDS, BENCH_SERVER_SECONDS, BENCH_WARMUP, BENCH_STORM_N,\n' +
        '      BENCH_SERVER_BACKENDS, BENCH_SERVER_OPS, BENCH_SERVER_C, BENCH_SERVER_NODE_ARGS (see bench/README.md)\n',
    );
    return;
  }
  if (positionals.length > 1 || (positionals[0] !== undefined && positionals[0] !== 'server')) {
    throw new BenchError(`unexpected argument ${JSON.stringify(positionals.join(' '))}; the only section name is "server"`);
  }
  const only = positionals[0] ?? values.only;
  if (only !== undefined && only !== 'echo' && only !== 'plugin' && only !== 'server') throw new BenchError('--only takes echo, plugin or server');

  // Short base path: unix socket paths are limited to 107 bytes.
  const base = join(tmpdir(), 'kh-bench-').length < 60 ? tmpdir() : '/tmp';
  const tmpRoot = mkdtempSync(join(base, 'kh-bench-'));
  registerTmp(tmpRoot);

  let failed = false;
  if (only !== 'server') {
    try {
      failed = (await pluginSection(only ? [only] : ['echo', 'plugin'], tmpRoot)) || failed;
    } catch (e) {
      // In a full run the key server section still runs; the exit status says the run failed.
      if (only !== undefined || interrupted || !(e instanceof BenchError)) throw e;
      log(`plugin section failed: ${e.message}`);
      process.stdout.write(`plugin section FAILED:\n${e.message.replace(/^/gm, '  ')}\n`);
      await stopAll();
      failed = true;
    }
  }
  if (only === undefined || only === 'server') {
    const r = await runServerSection({ seconds: envNumber('BENCH_SERVER_SECONDS', 3), warmup: envNumber('BENCH_WARMUP', 1), tmpDir: tmpRoot });
    if (only === undefined) process.stdout.write('\n');
    process.stdout.write(`${r.text}\n`);
    if (r.failed) log('key server: some calls failed (see the errors columns)');
    failed = r.failed || failed;
  }
  if (failed) process.exitCode = 1;
}

main().catch((err: unknown) => {
  // An interrupt is already shutting down (its children failing is expected).
  if (interrupted) return;
  const msg = err instanceof BenchError ? err.message : err instanceof Error ? (err.stack ?? err.message) : String(err);
  log(msg);
  // Children get SIGTERM first, async clean-ups run; the exit handler SIGKILLs the rest and removes temp files.
  void shutdown(1);
});
