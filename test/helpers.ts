import assert from 'node:assert/strict';
import { spawnSync, type ChildProcess } from 'node:child_process';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { loadKmsProtos } from '../src/plugin/kms-protos.js';
import { ownedTempDir, removeOwnedDir, spawnOwned, type Teardown } from './reaper.js';

// End-to-end helpers: real processes (bin/keyhaven), real unix sockets, real
// SQLite files in temp folders.
export const ROOT = resolve(fileURLToPath(new URL('../../', import.meta.url)));
export const BIN = join(ROOT, 'bin', 'keyhaven');

/** A temp folder owned by the reaper: removed at the latest when the test file's process ends, or in `t`'s teardown. */
export function tempDir(prefix = 'kh-', t?: Teardown): string {
  return ownedTempDir(prefix, t);
}

export function removeDir(dir: string): void {
  removeOwnedDir(dir);
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function cli(args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): CliResult {
  const r = spawnSync(process.execPath, [BIN, ...args], { cwd: opts.cwd ?? ROOT, env: { ...process.env, ...opts.env }, encoding: 'utf8', timeout: 60_000 });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** The environment without any KEYHAVEN_* variable or XDG_CONFIG_HOME, so a test sets exactly what it means. */
export function cleanCliEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (k.startsWith('KEYHAVEN_') || k === 'XDG_CONFIG_HOME') delete env[k];
  return env;
}

/** Runs a command to its end asynchronously (owned by the reaper), collecting its output; `input` goes to stdin. */
export function runCommand(command: string, args: readonly string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string; input?: string } = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    // stdin only when there is input: a quick command may exit before an empty write lands (EPIPE).
    const child = spawnOwned(command, args, { cwd: opts.cwd ?? ROOT, env: opts.env ?? process.env, stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
    if (opts.input !== undefined) {
      // A command that exits without reading its input is judged by its exit code, not by the pipe.
      child.stdin!.on('error', () => {});
      child.stdin!.end(opts.input);
    }
  });
}

/** Runs bin/keyhaven asynchronously (the event loop stays free for servers in this process); `input` goes to stdin. */
export function runCli(args: string[], opts: { env: NodeJS.ProcessEnv; input?: string }): Promise<CliResult> {
  // stdin is a pipe for every CLI run (as before): empty unless `input` is given.
  return runCommand(process.execPath, [BIN, ...args], { env: opts.env, input: opts.input ?? '' });
}

/** ok(): the command must exit 0; json(): the same with `-o json`, parsed. */
export function cliExpect<O>(kh: (args: string[], opts?: O) => Promise<CliResult>) {
  const ok = async (args: string[], opts?: O): Promise<CliResult> => {
    const r = await kh(args, opts);
    assert.equal(r.code, 0, `keyhaven ${args.join(' ')} exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
    return r;
  };
  const json = async <T = any>(args: string[], opts?: O): Promise<T> => JSON.parse((await ok([...args, '-o', 'json'], opts)).stdout) as T;
  return { ok, json };
}

export interface PluginProcess {
  readonly child: ChildProcess;
  readonly socket: string;
  readonly dataDir: string;
  healthPort?: number;
  output(): string;
  /** Resolves with the exit code once the process ends. */
  exited: Promise<number | null>;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

export interface StartOptions {
  dataDir: string;
  socketPath?: string;
  extraArgs?: string[];
  cwd?: string;
  command?: string[];
  /** Wait for the socket to accept gRPC (default true). */
  waitReady?: boolean;
  /** The test whose teardown kills the process (it is killed when the file's process ends in any case). */
  t?: Teardown;
}

export async function startPlugin(opts: StartOptions): Promise<PluginProcess> {
  const socket = opts.socketPath ?? join(opts.dataDir, 'kms.sock');
  const args = opts.command ?? [
    'plugin',
    '--socket', `unix://${socket}`,
    '--data-dir', opts.dataDir,
    '--health-addr', '127.0.0.1:0',
    '--log-level', 'debug',
    '--status-cache-ttl', '100ms',
    ...(opts.extraArgs ?? []),
  ];
  const child = spawnOwned(process.execPath, [BIN, ...args], { cwd: opts.cwd ?? ROOT, stdio: ['ignore', 'pipe', 'pipe'], t: opts.t });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (code, sig) => r(code ?? (sig ? 128 : null))));
  const proc: PluginProcess = {
    child,
    socket,
    dataDir: opts.dataDir,
    output: () => out,
    exited,
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
  if (opts.waitReady === false) return proc;
  // A cap for a hung start only: a busy machine may take long to start a process.
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    const lines = logLines(out);
    if (lines.some((l) => l.msg === 'kms plugin listening')) {
      const h = lines.find((l) => l.msg === 'health listening');
      if (h) proc.healthPort = Number(h.port);
      return proc;
    }
    if (child.exitCode !== null) throw new Error(`plugin exited with ${child.exitCode} before it was ready:\n${out}`);
    await new Promise((r) => setTimeout(r, 25));
  }
  child.kill('SIGKILL');
  throw new Error(`plugin did not become ready in 60 s:\n${out}`);
}

/** Creates a store with the given key (default kubernetes-secrets). */
export function initStore(dataDir: string, key = 'kubernetes-secrets'): void {
  const r = cli(['init', '--data-dir', dataDir, '--key', key]);
  if (r.code !== 0) throw new Error(`init failed (${r.code}): ${r.stderr}`);
}

type Callback<T> = (err: grpc.ServiceError | null, res?: T) => void;
type Method = (req: unknown, meta: grpc.Metadata, opts: grpc.CallOptions, cb: Callback<any>) => void;

/** The test-side deadline of a gRPC call: a cap for a hung call only. */
export const CALL_CAP_MS = 60_000;

export interface KmsClients {
  v2: grpc.Client & Record<string, Method>;
  v1: grpc.Client & Record<string, Method>;
  close(): void;
}

export function kmsClients(socket: string): KmsClients {
  const protos = loadKmsProtos();
  const address = socket.startsWith('@') ? `unix-abstract:${socket.slice(1)}` : `unix://${socket}`;
  const v2 = new protos.v2.KeyManagementService(address, grpc.credentials.createInsecure()) as unknown as KmsClients['v2'];
  const v1 = new protos.v1beta1.KeyManagementService(address, grpc.credentials.createInsecure()) as unknown as KmsClients['v1'];
  return {
    v2,
    v1,
    close() {
      v2.close();
      v1.close();
    },
  };
}

/**
 * Calls a unary method; resolves the reply or rejects the ServiceError. Its
 * deadline (CALL_CAP_MS) only ends a hung call: a busy machine may take
 * seconds to answer, and the 3 s the apiserver allows is the plugin's own
 * deadlines' business, tested where they are.
 */
export function call<T = any>(client: Record<string, Method>, method: string, req: unknown): Promise<T> {
  return new Promise((resolve, reject) => {
    client[method]!(req, new grpc.Metadata(), { deadline: Date.now() + CALL_CAP_MS }, (err, res) => (err ? reject(err) : resolve(res as T)));
  });
}

/** Runs fn expecting a gRPC error; returns it. */
export async function callError(client: Record<string, Method>, method: string, req: unknown): Promise<grpc.ServiceError> {
  try {
    await call(client, method, req);
  } catch (e) {
    return e as grpc.ServiceError;
  }
  throw new Error(`${method} succeeded but an error was expected`);
}

/** Repeats a call until it fails (a change made by another process has been picked up); returns the error. */
export function waitForError(client: Record<string, Method>, method: string, req: unknown, what: string): Promise<grpc.ServiceError> {
  return waitForFailure(() => call(client, method, req), what);
}

/** Repeats fn until it rejects (e.g. a plugin's Status once it fails); returns the gRPC error. */
export function waitForFailure(fn: () => Promise<unknown>, what: string): Promise<grpc.ServiceError> {
  return waitFor(async () => {
    try {
      await fn();
      return undefined;
    } catch (e) {
      return e as grpc.ServiceError;
    }
  }, what);
}

/** A v2 Encrypt reply. */
export interface V2Encrypted {
  ciphertext: Buffer;
  key_id: string;
  annotations: Record<string, Buffer>;
}

/** Sum of a plugin metric's samples (from its /metrics) whose labels include `labels`. */
export async function metric(p: PluginProcess, name: string, labels: Record<string, string> = {}): Promise<number> {
  const res = await httpGet(p.healthPort!, '/metrics');
  assert.equal(res.status, 200);
  let sum = 0;
  for (const line of res.body.split('\n')) {
    const m = /^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) have[l[1]!] = l[2]!;
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) sum += Number(m[3]);
  }
  return sum;
}

/** Runs fn on a fresh, initialised store in a temp folder, removed afterwards. */
export async function withStore(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = tempDir();
  try {
    initStore(dir);
    await fn(dir);
  } finally {
    removeDir(dir);
  }
}

/** The store's audit records, through `keyhaven audit export`. */
export function auditRecords(dir: string): Array<Record<string, any>> {
  const ex = cli(['audit', 'export', '--data-dir', dir]);
  if (ex.code !== 0) throw new Error(`audit export failed (${ex.code}): ${ex.stderr}`);
  return ex.stdout
    .trim()
    .split('\n')
    .filter((l) => l.length > 0)
    .map((l) => JSON.parse(l) as Record<string, any>);
}

// The cap only ends a hung wait; a busy machine just waits longer.
export async function waitFor<T>(fn: () => Promise<T | undefined> | T | undefined, what: string, ms = 60_000): Promise<T> {
  const deadline = Date.now() + ms;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v as T;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
}

export async function httpGet(port: number, path: string): Promise<{ status: number; body: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: res.status, body: await res.text() };
}

/** Parsed JSON log lines of a process's output. */
export function logLines(out: string): Array<Record<string, unknown>> {
  return out
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => {
      try {
        return JSON.parse(l) as Record<string, unknown>;
      } catch {
        return {};
      }
    });
}

export { grpc };
export { freePort } from './ports.js';
