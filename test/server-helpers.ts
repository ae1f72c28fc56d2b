import type { ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify as toYaml } from 'yaml';
import { BIN, ROOT, tempDir } from './helpers.js';
import { spawnOwned, type Teardown } from './reaper.js';

// End-to-end helpers for the key server: a real `keyhaven server` process on
// 127.0.0.1 (port chosen by the OS), real HTTP from node's fetch.

export interface ServerProcess {
  readonly child: ChildProcess;
  readonly dir: string;
  readonly configPath: string;
  /** Base URL, e.g. http://127.0.0.1:40123 */
  readonly url: string;
  output(): string;
  exited: Promise<number | null>;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

export interface ServerStartOptions {
  /** Folder for config and data (a new temp folder by default). */
  dir?: string;
  /** Config fields merged over the defaults (SQLite + key file in `dir`, listen 127.0.0.1:0, audit fsync on). */
  config?: Record<string, unknown>;
  env?: NodeJS.ProcessEnv;
  /** Resolve once the "listening" log line appears (default true). */
  waitReady?: boolean;
  /** The test whose teardown kills the process and removes a folder made here (both go when the file's process ends in any case). */
  t?: Teardown;
}

function defaultServerConfig(dir: string): Record<string, unknown> {
  return {
    listen: '127.0.0.1:0',
    storage: { sqlite: { path: join(dir, 'keyhaven.db') } },
    seal: { keyfile: { path: join(dir, 'root.key') } },
    audit: { fsync: true },
    scheduler: { interval: '1s' },
    log: { level: 'debug' },
    // Tests sign in often from 127.0.0.1; the sign-in rate limit has its own tests (adversary-login).
    // The lowest scrypt cost allowed: password hashing is most of a test server's CPU at the
    // default (the default's cost has its own tests: secrets.test, password-pool.test, adversary-login-flood).
    auth: { rateLimit: { max: 100_000 }, hashing: { scryptN: 1024 } },
  };
}

export async function startServerProcess(opts: ServerStartOptions = {}): Promise<ServerProcess> {
  const dir = opts.dir ?? tempDir('kh-srv-', opts.t);
  const configPath = join(dir, 'server.yaml');
  const defaults = defaultServerConfig(dir);
  const auth = { ...(defaults.auth as object), ...(opts.config?.auth as object | undefined) };
  writeFileSync(configPath, toYaml({ ...defaults, ...opts.config, auth }), { mode: 0o600 });
  const child = spawnOwned(process.execPath, [BIN, 'server', '--config', configPath], { cwd: ROOT, env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'], t: opts.t });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (code, sig) => r(code ?? (sig ? 128 : null))));
  const stop = async (signal: NodeJS.Signals = 'SIGTERM') => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    return exited;
  };
  if (opts.waitReady === false) return { child, dir, configPath, url: '', output: () => out, exited, stop };
  const url = await new Promise<string>((resolve, reject) => {
    const done = () => {
      clearInterval(timer);
      clearTimeout(cap);
    };
    const timer = setInterval(() => {
      const m = /"url":"(https?:\/\/[^"]+)"[^\n]*"msg":"keyhaven server listening"/.exec(out);
      if (m) {
        done();
        resolve(m[1]!);
      } else if (child.exitCode !== null) {
        done();
        reject(new Error(`server exited with ${child.exitCode} before listening:\n${out}`));
      }
    }, 25);
    // A cap for a hung start only: a busy machine may take long to start a process.
    const cap = setTimeout(() => {
      done();
      child.kill('SIGKILL');
      reject(new Error(`server did not start within 60 s:\n${out}`));
    }, 60_000);
    cap.unref();
  });
  return { child, dir, configPath, url, output: () => out, exited, stop };
}

export interface ApiResult<T = any> {
  status: number;
  body: T;
  text: string;
  headers: Headers;
}

/** Headers and body of a test call: a bearer token if given; `body` objects as JSON, strings as they are. */
export function jsonRequest(opts: { token?: string | undefined; body?: unknown; headers?: Record<string, string> | undefined }): { headers: Record<string, string>; body: string | undefined } {
  const headers: Record<string, string> = { ...opts.headers };
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  let body: string | undefined;
  if (opts.body !== undefined) {
    body = typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body);
    headers['content-type'] ??= 'application/json';
  }
  return { headers, body };
}

/** One HTTP call; `body` objects are sent as JSON, strings as they are. */
export async function api<T = any>(
  url: string,
  method: string,
  path: string,
  opts: { token?: string; body?: unknown; headers?: Record<string, string> } = {},
): Promise<ApiResult<T>> {
  const { headers, body } = jsonRequest(opts);
  const res = await fetch(url + path, { method, headers, body });
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON (JSON lines, metrics)
  }
  return { status: res.status, body: parsed as T, text, headers: res.headers };
}

export async function login(url: string, name: string, password: string): Promise<string> {
  const r = await api(url, 'POST', '/v1/auth/login', { body: { name, password } });
  if (r.status !== 200) throw new Error(`login as ${name} failed: ${r.status} ${r.text}`);
  return r.body.token as string;
}

export async function initServer(url: string, body: Record<string, unknown> = {}): Promise<{ admin: { name: string; password: string }; keyAdmin: { name: string; password: string }; shares?: string[] }> {
  const r = await api(url, 'POST', '/v1/sys/init', { body });
  if (r.status !== 200) throw new Error(`init failed: ${r.status} ${r.text}`);
  return r.body;
}

/** Everyone a test usually needs, each with a live token. */
export interface Cast {
  /** security-admin made by init */
  admin: string;
  /** a second and third security-admin */
  admin2: string;
  admin3: string;
  keyAdmin: string;
  keyAdmin2: string;
  keyAdmin3: string;
  auditor: string;
  /** an app with every operation on `key`, and its API key */
  appKey: string;
  /** an app with no grants */
  strangerKey: string;
  key: string;
  passwords: Record<string, string>;
}

async function must(r: Promise<ApiResult>, what: string): Promise<ApiResult> {
  const res = await r;
  if (res.status >= 300) throw new Error(`${what} failed: ${res.status} ${res.text}`);
  return res;
}

/**
 * Creates a user with roles as `requester`; when the separation-of-duties
 * floor (or a quorum policy) files an approval request, `approver` approves it.
 */
export async function createUserApproved(url: string, requester: string, approver: string, name: string, password: string, roles: string[]): Promise<void> {
  const r = await must(api(url, 'POST', '/v1/users', { token: requester, body: { name, password, roles } }), `create user ${name}`);
  if (r.status !== 202) return;
  const a = await must(api(url, 'POST', `/v1/approvals/${r.body.approval.id}/approve`, { token: approver, body: {} }), `approve roles of ${name}`);
  if (a.body.state !== 'executed') throw new Error(`roles of ${name} not given: ${a.text}`);
}

/**
 * Issues a new API key for an app as `requester`; when it holds grants a
 * key-admin (`approver`) approves first and the requester collects the key.
 */
export async function rotateAppKeyApproved(url: string, requester: string, approver: string, app: string): Promise<string> {
  const r = await must(api(url, 'POST', `/v1/apps/${app}/rotate-key`, { token: requester, body: {} }), `rotate ${app}`);
  if (r.status === 200) return r.body.apiKey;
  const a = await must(api(url, 'POST', `/v1/approvals/${r.body.approval.id}/approve`, { token: approver, body: {} }), `approve rotation of ${app}`);
  if (a.body.state !== 'executed') throw new Error(`rotation of ${app} not executed: ${a.text}`);
  return (await must(api(url, 'POST', `/v1/approvals/${r.body.approval.id}/collect`, { token: requester, body: {} }), `collect ${app}`)).body.apiKey;
}

/** Initialises a fresh server and creates users, apps and a key. */
export async function setupCast(url: string, key = 'k1'): Promise<Cast> {
  const init = await initServer(url);
  const admin = await login(url, init.admin.name, init.admin.password);
  const passwords: Record<string, string> = { [init.admin.name]: init.admin.password, [init.keyAdmin.name]: init.keyAdmin.password };
  const keyAdmin = await login(url, init.keyAdmin.name, init.keyAdmin.password);
  const tok = async (n: string) => login(url, n, passwords[n]!);
  // Admin roles need another admin's approval: the first admin asks, an eligible other admin approves.
  const users: [string, string[], () => string][] = [
    ['admin2', ['security-admin'], () => keyAdmin], // nobody else holds security-admin yet: any other admin
    ['admin3', ['security-admin'], () => admin2],
    ['keyadmin2', ['key-admin'], () => keyAdmin],
    ['keyadmin3', ['key-admin'], () => keyAdmin],
    ['auditor', ['auditor'], () => keyAdmin],
  ];
  let admin2 = '';
  for (const [name, roles, approver] of users) {
    passwords[name] = `${name}-password-123`;
    await createUserApproved(url, admin, approver(), name, passwords[name], roles);
    if (name === 'admin2') admin2 = await tok('admin2');
  }
  await must(api(url, 'POST', '/v1/keys', { token: keyAdmin, body: { name: key } }), 'create key');
  const app = await must(api(url, 'POST', '/v1/apps', { token: admin, body: { name: 'app1' } }), 'create app');
  const stranger = await must(api(url, 'POST', '/v1/apps', { token: admin, body: { name: 'stranger' } }), 'create app');
  // Grants are the key-admin's.
  await must(api(url, 'PUT', `/v1/apps/app1/grants/${key}`, { token: keyAdmin, body: { operations: ['encrypt', 'decrypt', 'rewrap', 'datakey'] } }), 'grant');
  return {
    admin,
    admin2,
    admin3: await tok('admin3'),
    keyAdmin,
    keyAdmin2: await tok('keyadmin2'),
    keyAdmin3: await tok('keyadmin3'),
    auditor: await tok('auditor'),
    appKey: app.body.apiKey,
    strangerKey: stranger.body.apiKey,
    key,
    passwords,
  };
}

/** The audit records as JSON lines, read by the auditor. */
export async function auditRecords(url: string, auditorToken: string, query = ''): Promise<any[]> {
  const out: any[] = [];
  let after = 0;
  for (;;) {
    const r = await api(url, 'GET', `/v1/audit?after=${after}&limit=10000${query ? `&${query}` : ''}`, { token: auditorToken });
    if (r.status !== 200) throw new Error(`audit read failed: ${r.status} ${r.text}`);
    const rows = r.text.split('\n').filter(Boolean).map((l) => JSON.parse(l));
    out.push(...rows);
    // Each read writes a record of its own, so stop at a short page rather than an empty one.
    if (rows.length < 10000) return out;
    after = rows[rows.length - 1].seq;
  }
}
