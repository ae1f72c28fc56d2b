// The key server section of `npm run bench`: Encrypt and Decrypt calls/s over
// HTTP with durable audit (fsync on), on SQLite and on PostgreSQL, beside a
// bare node:http echo measured in the same run with the same client; then
// encrypt quiet and under a 50-way wrong-password flood (the sign-in flood point).
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import Database from 'better-sqlite3';
import pg from 'pg';
import { request } from 'undici';
import type { HttpLoadReport, LoadSpec } from './http-load.js';
import type { FloodReport } from './login-flood.js';
import {
  BenchError, Child, cpuSeconds, exited, fmt, freePort, interrupted, log, machineBusySeconds, onCleanup, ROOT, ratio, table,
} from './procs.js';

const CONCURRENCIES = [1, 16, 64] as const;
const OPS = ['encrypt', 'decrypt'] as const;
const READY_TIMEOUT_MS = 60_000;
const PG_ADMIN_URL = 'postgres://postgres@127.0.0.1:5432/postgres';
const KEY = 'bench';
const APP = 'bench-app';
const BODIES = 64;
// Encrypt at c=16 against the echo, per backend (issue 11): SQLite at least half the echo, PostgreSQL a quarter.
const AIMS = [
  { backend: 'sqlite', op: 'encrypt', concurrency: 16, ratio: 0.5 },
  { backend: 'postgres', op: 'encrypt', concurrency: 16, ratio: 0.25 },
] as const;
// Sign-in flood point: encrypt at this concurrency, quiet and with FLOOD_WAYS wrong-password loops running.
const FLOOD = { ways: 50, concurrency: 16, p99Ms: 100, p99Ratio: 2 } as const;
// The bench servers lift the per-source sign-in rate limit, so every flood request reaches the
// sign-in path (an attacker with unlimited addresses); per-source locks and the hashing queue stay.
const BENCH_AUTH = { rateLimit: { max: 100_000 } } as const;

type Op = (typeof OPS)[number];
type Backend = 'sqlite' | 'postgres';

interface Measured extends HttpLoadReport {
  /** Target process CPU over the measured window, in cores (1.00 = one core busy). */
  targetCpu?: number;
  /** Load client CPU over the measured window, in cores. */
  clientCpu?: number;
  /** CPU used by everything else on the machine over the window, in cores: noise. */
  otherCpu?: number;
}

interface ServerPoint {
  backend: Backend;
  op: Op;
  concurrency: number;
  echo?: Measured;
  server?: Measured;
  serverOverEcho?: number;
}

export interface ServerSectionOptions {
  readonly seconds: number;
  readonly warmup: number;
  /** A folder of the caller's, removed by it. */
  readonly tmpDir: string;
}

export interface ServerSectionResult {
  readonly text: string;
  readonly json: unknown;
  readonly failed: boolean;
}

// ---------------------------------------------------------------- HTTP set-up

interface Answer {
  status: number;
  text: string;
  json: unknown;
}

async function call(base: string, method: 'GET' | 'POST' | 'PUT', path: string, body?: unknown, token?: string): Promise<Answer> {
  const headers: Record<string, string> = {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await request(`${base}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.body.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.statusCode, text, json };
}

async function must<T>(what: string, a: Promise<Answer>): Promise<T & { bytes: number }> {
  const r = await a;
  if (r.status < 200 || r.status >= 300) throw new BenchError(`server set-up: ${what} answered ${r.status}: ${r.text.slice(0, 300)}`);
  return { ...(r.json as T), bytes: Buffer.byteLength(r.text) };
}

// ---------------------------------------------------------------- targets

interface Target {
  readonly name: 'echo' | Backend;
  readonly child: Child;
  readonly url: string;
  readonly headers: Record<string, string>;
  readonly bodies: Record<Op, string[]>;
}

interface ServerTarget extends Target {
  readonly name: Backend;
  readonly answerBytes: Record<Op, number>;
}

/** A comma-separated subset from the environment, for focused runs (profiling). */
function envSubset<T extends string | number>(name: string, all: readonly T[]): readonly T[] {
  const raw = process.env[name]?.trim();
  if (!raw) return all;
  const picked = raw.split(',').map((v) => v.trim()).filter(Boolean);
  const out = all.filter((v) => picked.includes(String(v)));
  const unknown = picked.filter((v) => !all.some((a) => String(a) === v));
  if (unknown.length || out.length === 0) throw new BenchError(`${name} takes a comma-separated subset of ${all.join(',')}, got ${JSON.stringify(raw)}`);
  return out;
}

function serverNodeArgs(): string[] {
  const raw = process.env.BENCH_SERVER_NODE_ARGS?.trim();
  return raw ? raw.split(/\s+/) : [];
}

export interface KeyServerOptions {
  /** Shown in progress lines and error messages. */
  readonly label: string;
  /** The `storage` block of server.yaml. */
  readonly storage: unknown;
  /** Config, root key and (for SQLite) data go here. */
  readonly dir: string;
  /** The key to create. */
  readonly key: string;
  /** The app granted encrypt and decrypt on `key`. */
  readonly app: string;
  readonly nodeArgs?: readonly string[];
  /** The `auth` block of server.yaml (defaults otherwise). */
  readonly auth?: unknown;
}

export interface KeyServer {
  readonly child: Child;
  /** http://127.0.0.1:PORT */
  readonly url: string;
  /** The app's API key (kha_...). */
  readonly apiKey: string;
  /** Seconds from spawn to the end of set-up. */
  readonly setupSeconds: number;
}

/**
 * Starts `keyhaven server` on a free loopback port (keyfile seal, audit fsync
 * on, log level warn) and sets it up over the API: init, log in as the admin,
 * a key-admin user, the app, the key (as the key-admin), the app's encrypt and
 * decrypt grant.
 */
export async function startKeyServer(o: KeyServerOptions, children: Child[]): Promise<KeyServer> {
  mkdirSync(o.dir, { recursive: true, mode: 0o700 });
  const port = await freePort();
  const cfgPath = join(o.dir, 'server.yaml');
  // YAML is a superset of JSON.
  const cfg = {
    listen: `127.0.0.1:${port}`,
    storage: o.storage,
    seal: { keyfile: { path: join(o.dir, 'root.key') } },
    audit: { fsync: true },
    log: { level: 'warn' },
    ...(o.auth === undefined ? {} : { auth: o.auth }),
  };
  writeFileSync(cfgPath, `${JSON.stringify(cfg, null, 2)}\n`, { mode: 0o600 });
  const cli = join(ROOT, 'bin', 'keyhaven');
  if (!existsSync(join(ROOT, 'dist', 'src', 'cli', 'main.js'))) throw new BenchError('the server is not built yet (npm run build)');
  const child = new Child(o.label, [...(o.nodeArgs ?? []), cli, 'server', '--config', cfgPath]);
  children.push(child);
  const base = `http://127.0.0.1:${port}`;
  const started = Date.now();

  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    if (interrupted) throw new BenchError('interrupted');
    if (child.spawnError) throw new BenchError(`${o.label} server: ${child.spawnError.message}`);
    if (exited(child.proc)) throw new BenchError(`${o.label} server exited (${child.proc.exitCode ?? child.proc.signalCode}) before it was ready${child.output()}`);
    const r = await call(base, 'GET', '/v1/sys/seal-status').catch(() => undefined);
    if (r?.status === 200) break;
    if (Date.now() > deadline) throw new BenchError(`${o.label} server not ready after ${READY_TIMEOUT_MS / 1000} s at ${base}${child.output()}`);
    await sleep(100);
  }

  // Init makes the first security-admin (apps) and the first key-admin (keys and grants).
  const init = await must<{ admin: { name: string; password: string }; keyAdmin: { name: string; password: string } }>('POST /v1/sys/init', call(base, 'POST', '/v1/sys/init', {}));
  const admin = await must<{ token: string }>('admin login', call(base, 'POST', '/v1/auth/login', { name: init.admin.name, password: init.admin.password }));
  const keyAdmin = await must<{ token: string }>('key-admin login', call(base, 'POST', '/v1/auth/login', { name: init.keyAdmin.name, password: init.keyAdmin.password }));
  const app = await must<{ apiKey: string }>('POST /v1/apps', call(base, 'POST', '/v1/apps', { name: o.app }, admin.token));
  await must('POST /v1/keys', call(base, 'POST', '/v1/keys', { name: o.key }, keyAdmin.token));
  await must('PUT grants', call(base, 'PUT', `/v1/apps/${o.app}/grants/${o.key}`, { operations: ['encrypt', 'decrypt'] }, keyAdmin.token));
  return { child, url: base, apiKey: app.apiKey, setupSeconds: (Date.now() - started) / 1000 };
}

async function startServer(backend: Backend, storage: unknown, dir: string, plaintexts: string[], children: Child[]): Promise<ServerTarget> {
  const started = Date.now();
  const { child, url: base, apiKey } = await startKeyServer({ label: backend, storage, dir, key: KEY, app: APP, nodeArgs: serverNodeArgs(), auth: BENCH_AUTH }, children);
  const app = { apiKey };

  // Ciphertexts for the decrypt load, made first (concurrently, so the audit batches them); each is checked once.
  const made = await Promise.all(
    plaintexts.map(async (pt) => {
      const enc = await must<{ ciphertext: string }>('encrypt', call(base, 'POST', `/v1/keys/${KEY}/encrypt`, { plaintext: pt }, app.apiKey));
      const dec = await must<{ plaintext: string }>('decrypt', call(base, 'POST', `/v1/keys/${KEY}/decrypt`, { ciphertext: enc.ciphertext }, app.apiKey));
      if (dec.plaintext !== pt) throw new BenchError(`${backend} server: decrypt returned a different plaintext`);
      return { ciphertext: enc.ciphertext, encryptBytes: enc.bytes, decryptBytes: dec.bytes };
    }),
  );
  const ciphertexts = made.map((m) => m.ciphertext);
  const encryptBytes = Math.max(...made.map((m) => m.encryptBytes));
  const decryptBytes = Math.max(...made.map((m) => m.decryptBytes));
  log(`server: ${backend} ready in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  return {
    name: backend,
    child,
    url: base,
    headers: { authorization: `Bearer ${app.apiKey}` },
    bodies: {
      encrypt: plaintexts.map((p) => JSON.stringify({ plaintext: p })),
      decrypt: ciphertexts.map((c) => JSON.stringify({ ciphertext: c })),
    },
    answerBytes: { encrypt: encryptBytes, decrypt: decryptBytes },
  };
}

async function startEcho(like: ServerTarget, children: Child[], mode: 'bare' | 'crypto' = 'bare'): Promise<Target> {
  const child = new Child(mode === 'crypto' ? 'crypto floor' : 'echo', [join(ROOT, 'dist', 'bench', 'http-echo.js'), String(like.answerBytes.encrypt), String(like.answerBytes.decrypt), ...(mode === 'crypto' ? ['crypto'] : [])]);
  children.push(child);
  const url = await new Promise<string>((res, rej) => {
    const timer = setTimeout(() => rej(new BenchError(`http echo not ready after 10 s${child.output()}`)), 10_000);
    child.onLine((line) => {
      try {
        const u = (JSON.parse(line) as { url?: string }).url;
        if (u) {
          clearTimeout(timer);
          res(u);
        }
      } catch {
        // not ours
      }
    });
    child.proc.once('exit', (code) => {
      clearTimeout(timer);
      rej(new BenchError(`http echo exited (${code}) before it was ready${child.output()}`));
    });
  });
  // Same request bodies and headers as the server gets.
  return { name: 'echo', child, url, headers: like.headers, bodies: like.bodies };
}

// ---------------------------------------------------------------- PostgreSQL

async function pgAdmin<T>(fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: PG_ADMIN_URL, connectionTimeoutMillis: 3000 });
  c.on('error', () => {});
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end().catch(() => {});
  }
}

/** A throwaway database, or the reason there is none. */
export async function pgDatabase(): Promise<{ url: string; drop(): Promise<void> } | { skip: string }> {
  try {
    await pgAdmin((c) => c.query('select 1'));
  } catch (e) {
    return { skip: `PostgreSQL unreachable at ${new URL(PG_ADMIN_URL).host} as postgres: ${e instanceof Error ? e.message : String(e)}` };
  }
  const name = `keyhaven_bench_${randomBytes(6).toString('hex')}`;
  await pgAdmin((c) => c.query(`create database ${name}`));
  // Every caller (normal end, error, interrupt) waits for the one drop.
  let dropping: Promise<void> | undefined;
  const drop = () =>
    (dropping ??= (async () => {
      // force: ends sessions a killed server left open (PostgreSQL 13+).
      await pgAdmin((c) => c.query(`drop database if exists ${name} with (force)`));
      log(`dropped PostgreSQL database ${name}`);
    })());
  const u = new URL(PG_ADMIN_URL);
  u.pathname = `/${name}`;
  log(`created PostgreSQL database ${name}`);
  return { url: u.toString(), drop };
}

// ---------------------------------------------------------------- disk probes

const PROBE_MS = 1000;

/** Durable commits per second of a one-row SQLite transaction (WAL, synchronous=FULL), one after another. */
function probeSqlite(dir: string): number {
  const db = new Database(join(dir, 'probe.db'));
  try {
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = FULL');
    db.exec('create table probe (id integer primary key, v text)');
    const insert = db.prepare('insert into probe (v) values (?)');
    const value = 'x'.repeat(200);
    let n = 0;
    const t0 = performance.now();
    while (performance.now() - t0 < PROBE_MS) {
      insert.run(value);
      n += 1;
    }
    return Math.round(n / ((performance.now() - t0) / 1000));
  } finally {
    db.close();
  }
}

/** Commits per second of one-row autocommit inserts from 16 connections. */
async function probePostgres(url: string, concurrency = 16): Promise<number> {
  const pool = new pg.Pool({ connectionString: url, max: concurrency });
  pool.on('error', () => {});
  try {
    await pool.query('create table bench_probe (id bigserial primary key, v text)');
    const value = 'x'.repeat(200);
    let n = 0;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (performance.now() - t0 < PROBE_MS) {
          await pool.query('insert into bench_probe (v) values ($1)', [value]);
          n += 1;
        }
      }),
    );
    const rate = Math.round(n / ((performance.now() - t0) / 1000));
    await pool.query('drop table bench_probe');
    return rate;
  } finally {
    await pool.end().catch(() => {});
  }
}

// ---------------------------------------------------------------- load

async function load(t: Target, op: Op, concurrency: number, o: ServerSectionOptions, specDir: string): Promise<Measured> {
  const spec: LoadSpec = {
    url: t.url,
    path: `/v1/keys/${KEY}/${op}`,
    headers: t.headers,
    bodies: t.bodies[op],
    concurrency,
    seconds: o.seconds,
    warmup: o.warmup,
  };
  const specPath = join(specDir, `load-${t.name}.json`);
  writeFileSync(specPath, JSON.stringify(spec));
  const client = new Child(`load ${t.name}`, [join(ROOT, 'dist', 'bench', 'http-load.js'), specPath]);
  // CPU of the target over the measured window, sampled on the client's clock marks.
  let cpuAtStart: number | undefined;
  let cpuAtEnd: number | undefined;
  let busyAtStart: number | undefined;
  let busyAtEnd: number | undefined;
  let markedAt = 0;
  let window = 0;
  client.onLine((line) => {
    if (line === 'measure') {
      cpuAtStart = cpuSeconds(t.child.proc.pid);
      busyAtStart = machineBusySeconds();
      markedAt = performance.now();
    } else if (line === 'done') {
      cpuAtEnd = cpuSeconds(t.child.proc.pid);
      busyAtEnd = machineBusySeconds();
      window = (performance.now() - markedAt) / 1000;
    }
  });
  const code = await new Promise<number | null>((res) => {
    if (exited(client.proc)) res(client.proc.exitCode);
    else client.proc.once('exit', (c) => res(c));
  });
  if (client.spawnError) throw new BenchError(`load client: ${client.spawnError.message}`);
  const lines = client.lastLines();
  const reportLine = [...lines].reverse().find((l) => l.startsWith('{'));
  if (code !== 0 || !reportLine) throw new BenchError(`load client for ${t.name} ${op} c=${concurrency} exited ${code}${client.output()}`);
  const r = JSON.parse(reportLine) as Measured & { cpuSeconds?: number };
  if (cpuAtStart !== undefined && cpuAtEnd !== undefined && window > 0) r.targetCpu = Math.round(((cpuAtEnd - cpuAtStart) / window) * 100) / 100;
  if (r.cpuSeconds !== undefined) r.clientCpu = Math.round((r.cpuSeconds / o.seconds) * 100) / 100;
  if (busyAtStart !== undefined && busyAtEnd !== undefined && window > 0 && r.targetCpu !== undefined && r.clientCpu !== undefined) {
    r.otherCpu = Math.max(0, Math.round(((busyAtEnd - busyAtStart) / window - r.targetCpu - r.clientCpu) * 100) / 100);
  }
  delete r.cpuSeconds;
  if (exited(t.child.proc)) throw new BenchError(`${t.name} exited during ${op} c=${concurrency}${t.child.output()}`);
  return r;
}

// ---------------------------------------------------------------- sign-in flood

interface HealthProbe {
  count: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  errors: number;
}

/** GET /v1/sys/health one after another until `until` settles: what a liveness probe sees. */
async function probeHealth(url: string, until: Promise<unknown>): Promise<HealthProbe> {
  let done = false;
  void until.finally(() => (done = true)).catch(() => {});
  const lat: number[] = [];
  let errors = 0;
  while (!done) {
    const t = performance.now();
    try {
      const r = await request(`${url}/v1/sys/health`);
      await r.body.dump();
      if (r.statusCode === 200) lat.push(performance.now() - t);
      else errors += 1;
    } catch {
      errors += 1;
    }
    await sleep(20);
  }
  lat.sort((a, b) => a - b);
  const at = (q: number) => (lat.length ? Math.round(lat[Math.min(lat.length - 1, Math.ceil(q * lat.length) - 1)]! * 100) / 100 : 0);
  return { count: lat.length, p50Ms: at(0.5), p99Ms: at(0.99), maxMs: lat.length ? Math.round(lat[lat.length - 1]! * 100) / 100 : 0, errors };
}

interface FloodPoint {
  backend: Backend;
  concurrency: number;
  ways: number;
  quiet: Measured;
  flooded: Measured;
  p99Ratio?: number;
  quietHealth: HealthProbe;
  floodHealth: HealthProbe;
  flood?: FloodReport;
}

/** Encrypt at FLOOD.concurrency, quiet, then with a FLOOD.ways wrong-password flood from another process. */
async function floodPoint(s: ServerTarget, o: ServerSectionOptions, dir: string, children: Child[]): Promise<FloodPoint> {
  const quietLoad = load(s, 'encrypt', FLOOD.concurrency, o, dir);
  const quietHealth = await probeHealth(s.url, quietLoad);
  const quiet = await quietLoad;
  const flooder = new Child(`flood ${s.name}`, [join(ROOT, 'dist', 'bench', 'login-flood.js'), s.url, String(FLOOD.ways), String(o.warmup + o.seconds + 2)]);
  children.push(flooder);
  const exitedFlood = new Promise<number | null>((res) => {
    if (exited(flooder.proc)) res(flooder.proc.exitCode);
    else flooder.proc.once('exit', (c) => res(c));
  });
  await Promise.race([
    new Promise<void>((res) => flooder.onLine((l) => l === 'flooding' && res())),
    exitedFlood.then((c) => {
      throw new BenchError(`login flood exited (${c}) before it started${flooder.output()}`);
    }),
  ]);
  const floodLoad = load(s, 'encrypt', FLOOD.concurrency, o, dir);
  const floodHealth = await probeHealth(s.url, floodLoad);
  const flooded = await floodLoad;
  const code = await exitedFlood;
  const line = [...flooder.lastLines()].reverse().find((l) => l.startsWith('{'));
  if (code !== 0 || !line) throw new BenchError(`login flood exited ${code}${flooder.output()}`);
  const flood = JSON.parse(line) as FloodReport;
  return { backend: s.name, concurrency: FLOOD.concurrency, ways: FLOOD.ways, quiet, flooded, p99Ratio: ratio(flooded.p99Ms, quiet.p99Ms), quietHealth, floodHealth, flood };
}

// ---------------------------------------------------------------- report

function lat(r: Measured | undefined): string {
  return r ? `${r.p50Ms.toFixed(2)} / ${r.p99Ms.toFixed(2)}` : '-';
}

function cores(r: Measured | undefined): string {
  return fmt(r?.targetCpu, 2);
}

function errs(r: Measured | undefined): string {
  if (!r) return '-';
  return r.errors ? `${r.errors} !!` : '0';
}

function describeErrors(label: string, r: Measured | undefined): string[] {
  if (!r || r.errors === 0) return [];
  const kinds = Object.entries(r.errorKinds).map(([k, n]) => `${k}×${n}`).join(', ');
  return [`  ${label}: ${r.errors} failed (${kinds}); first: ${r.firstError ?? '?'}`];
}

// ---------------------------------------------------------------- main

export async function runServerSection(o: ServerSectionOptions): Promise<ServerSectionResult> {
  const dir = join(o.tmpDir, 'server');
  mkdirSync(dir, { recursive: true });
  const plaintexts = Array.from({ length: BODIES }, () => randomBytes(32).toString('base64'));
  const backends = envSubset<Backend>('BENCH_SERVER_BACKENDS', ['sqlite', 'postgres']);
  const ops = envSubset<Op>('BENCH_SERVER_OPS', OPS);
  const concurrencies = envSubset<number>('BENCH_SERVER_C', CONCURRENCIES);

  const servers: ServerTarget[] = [];
  const children: Child[] = [];
  let pgSkip: string | undefined;
  let pgDrop: (() => Promise<void>) | undefined;
  let pgUrl: string | undefined;
  let unregister: (() => void) | undefined;
  try {
    // Both servers start and set up at once (password hashing makes set-up slow).
    const starting: Promise<ServerTarget>[] = [];
    const begin = (p: Promise<ServerTarget>) => {
      p.catch(() => {}); // awaited below; a failure meanwhile must not count as unhandled
      starting.push(p);
    };
    if (backends.includes('sqlite')) {
      log('server: starting keyhaven server on SQLite');
      begin(startServer('sqlite', { sqlite: { path: join(dir, 'sqlite', 'keyhaven.db') } }, join(dir, 'sqlite'), plaintexts, children));
    }
    const db = backends.includes('postgres') ? await pgDatabase() : { skip: 'not selected (BENCH_SERVER_BACKENDS)' };
    if ('skip' in db) {
      pgSkip = db.skip;
      log(`server: skipping PostgreSQL: ${pgSkip}`);
    } else {
      pgDrop = db.drop;
      pgUrl = db.url;
      unregister = onCleanup(db.drop);
      log('server: starting keyhaven server on PostgreSQL');
      begin(startServer('postgres', { postgres: { url: db.url } }, join(dir, 'postgres'), plaintexts, children));
    }
    const started = await Promise.allSettled(starting);
    for (const r of started) if (r.status === 'rejected') throw r.reason;
    for (const r of started) if (r.status === 'fulfilled') servers.push(r.value);
    const first = servers[0];
    if (!first) throw new BenchError(`no key server to measure: ${pgSkip ?? 'none selected'}`);
    for (const s of servers.slice(1)) {
      if (s.answerBytes.encrypt !== first.answerBytes.encrypt || s.answerBytes.decrypt !== first.answerBytes.decrypt) {
        log(`server: ${s.name} answers are ${s.answerBytes.encrypt}/${s.answerBytes.decrypt} bytes, ${first.name} ${first.answerBytes.encrypt}/${first.answerBytes.decrypt}`);
      }
    }
    log(`server: starting the HTTP echo (answers of ${first.answerBytes.encrypt} and ${first.answerBytes.decrypt} bytes)`);
    const echo = await startEcho(first, children);

    // What the disk gives right now: the server's figures follow fsync latency.
    const probes: { sqliteCommitsPerSec?: number; postgresCommitsPerSecC16?: number } = {};
    if (servers.some((t) => t.name === 'sqlite')) probes.sqliteCommitsPerSec = probeSqlite(dir);
    if (pgUrl) probes.postgresCommitsPerSecC16 = await probePostgres(pgUrl);
    log(`server: disk probe: SQLite ${probes.sqliteCommitsPerSec ?? '-'} commits/s (WAL, FULL, one at a time); PostgreSQL ${probes.postgresCommitsPerSecC16 ?? '-'} commits/s (16 connections)`);

    // Interleave targets per point so drift on the machine hits all alike.
    const points: ServerPoint[] = [];
    for (const op of ops) {
      for (const c of concurrencies) {
        const e = await load(echo, op, c, o, dir);
        log(`server: echo ${op} c=${c}: ${e.callsPerSec.toFixed(0)} calls/s, p50 ${e.p50Ms} ms, p99 ${e.p99Ms} ms, errors ${e.errors}`);
        for (const s of servers) {
          const r = await load(s, op, c, o, dir);
          const q = ratio(r.callsPerSec, e.callsPerSec);
          log(`server: ${s.name} ${op} c=${c}: ${r.callsPerSec.toFixed(0)} calls/s (${fmt(q, 2)}× echo), p50 ${r.p50Ms} ms, p99 ${r.p99Ms} ms, cpu ${cores(r)}, errors ${r.errors}`);
          points.push({ backend: s.name, op, concurrency: c, echo: e, server: r, serverOverEcho: q });
        }
      }
    }

    // The floor: node:http doing only the per-call cryptography (http-echo.ts "crypto"), at the first aim's point.
    let floor: { measured: Measured; echo: Measured } | undefined;
    const floorPoint = points.find((p) => p.op === 'encrypt' && p.concurrency === AIMS[0].concurrency && p.echo);
    if (floorPoint?.echo) {
      const target = await startEcho(first, children, 'crypto');
      const m = await load(target, 'encrypt', floorPoint.concurrency, o, dir);
      await target.child.stop();
      floor = { measured: m, echo: floorPoint.echo };
      log(`server: crypto floor encrypt c=${floorPoint.concurrency}: ${m.callsPerSec.toFixed(0)} calls/s (${fmt(ratio(m.callsPerSec, floorPoint.echo.callsPerSec), 2)}× echo)`);
    }

    const floods: FloodPoint[] = [];
    if (process.env.BENCH_SERVER_FLOOD !== '0' && ops.includes('encrypt')) {
      for (const s of servers) {
        const f = await floodPoint(s, o, dir, children);
        log(
          `server: ${s.name} encrypt c=${f.concurrency} quiet p50/p99 ${lat(f.quiet)} ms, with a ${f.ways}-way sign-in flood ${lat(f.flooded)} ms ` +
            `(p99 ×${fmt(f.p99Ratio, 2)}); flood ${f.flood?.perSec ?? '-'} req/s ${JSON.stringify(f.flood?.answers ?? {})}`,
        );
        floods.push(f);
      }
    }

    const out: string[] = [];
    out.push(`keyhaven key server benchmark — ${cpus().length} CPUs, Node ${process.version}`);
    out.push(`${o.seconds} s measured per point after ${o.warmup} s warm-up; undici Pool, one keep-alive connection per call in flight; audit fsync on`);
    out.push(`echo: bare node:http answering ${first.answerBytes.encrypt}-byte (encrypt) and ${first.answerBytes.decrypt}-byte (decrypt) JSON bodies`);
    out.push(
      `disk probe, same run: SQLite ${fmt(probes.sqliteCommitsPerSec)} commits/s (WAL, synchronous=FULL, one at a time); ` +
        `PostgreSQL ${fmt(probes.postgresCommitsPerSecC16)} commits/s (16 connections)`,
    );
    if (pgSkip) out.push(`PostgreSQL skipped: ${pgSkip}`);
    out.push('');
    out.push(
      table(
        ['backend', 'op', 'c', 'echo calls/s', 'server calls/s', 'server/echo', 'echo p50/p99 ms', 'server p50/p99 ms', 'cpu echo/server', 'cpu others', 'errors echo', 'errors server'],
        points.map((p) => [
          p.backend, p.op, String(p.concurrency),
          fmt(p.echo?.callsPerSec), fmt(p.server?.callsPerSec), fmt(p.serverOverEcho, 2),
          lat(p.echo), lat(p.server), `${cores(p.echo)} / ${cores(p.server)}`, `${fmt(p.echo?.otherCpu, 1)} / ${fmt(p.server?.otherCpu, 1)}`,
          errs(p.echo), errs(p.server),
        ]),
        3,
      ),
    );
    out.push('');
    for (const a of AIMS) {
      const aim = points.find((p) => p.backend === a.backend && p.op === a.op && p.concurrency === a.concurrency);
      if (!aim) continue; // backend or point not selected
      const got = aim.serverOverEcho;
      out.push(
        `aim: ${a.backend} ${a.op} at c=${a.concurrency} ≥ ${a.ratio.toFixed(2)}× echo — measured ${fmt(got, 2)}× ` +
          `(${fmt(aim.server?.callsPerSec)} / ${fmt(aim.echo?.callsPerSec)} calls/s; p50/p99 ${lat(aim.server)} ms, echo ${lat(aim.echo)} ms): ` +
          `${got !== undefined && got >= a.ratio ? 'met' : 'NOT MET'}`,
      );
    }
    if (floor) {
      const best = points.filter((p) => p.op === 'encrypt' && p.concurrency === floorPoint!.concurrency).map((p) => `${p.backend} ${fmt(ratio(p.server?.callsPerSec, floor!.measured.callsPerSec), 2)}×`).join(', ');
      out.push(
        `floor: node:http doing only the per-call crypto of an encrypt (random nonce, AES-256-GCM, one SHA-256; no framework, no auth, no audit) at c=${floorPoint!.concurrency}: ` +
          `${fmt(floor.measured.callsPerSec)} calls/s = ${fmt(ratio(floor.measured.callsPerSec, floor.echo.callsPerSec), 2)}× echo (p50/p99 ${lat(floor.measured)} ms); the key server reaches ${best} of it`,
      );
    }
    if (floods.length) {
      out.push('');
      out.push(`sign-in flood: encrypt at c=${FLOOD.concurrency}, quiet, then while another process sends ${FLOOD.ways} concurrent wrong-password logins back to back`);
      out.push(`(each loop from its own address 127.0.0.10+, each attempt a new name; the bench servers lift the per-source rate limit so the flood reaches password hashing)`);
      out.push(
        table(
          ['backend', 'c', 'quiet calls/s', 'flood calls/s', 'quiet p50/p99 ms', 'flood p50/p99 ms', 'p99 flood/quiet', 'health p50/p99/max ms quiet', 'health p50/p99/max ms flood', 'flood req/s', 'hashed/busy/locked/limited/other', 'errors'],
          floods.map((f) => [
            f.backend, String(f.concurrency), fmt(f.quiet.callsPerSec), fmt(f.flooded.callsPerSec), lat(f.quiet), lat(f.flooded), fmt(f.p99Ratio, 2),
            `${f.quietHealth.p50Ms} / ${f.quietHealth.p99Ms} / ${f.quietHealth.maxMs}`, `${f.floodHealth.p50Ms} / ${f.floodHealth.p99Ms} / ${f.floodHealth.maxMs}`, fmt(f.flood?.perSec),
            f.flood ? `${f.flood.answers.hashed}/${f.flood.answers.busy}/${f.flood.answers.locked}/${f.flood.answers.rateLimited}/${f.flood.answers.other}` : '-',
            `${errs(f.quiet)} / ${errs(f.flooded)}${f.quietHealth.errors + f.floodHealth.errors ? ` health ${f.quietHealth.errors + f.floodHealth.errors} !!` : ''}`,
          ]),
          2,
        ),
      );
      for (const f of floods) {
        const met = f.flooded.p99Ms < FLOOD.p99Ms && f.p99Ratio !== undefined && f.p99Ratio <= FLOOD.p99Ratio;
        out.push(`aim: ${f.backend} encrypt p99 under a sign-in flood < ${FLOOD.p99Ms} ms and ≤ ${FLOOD.p99Ratio}× quiet — measured ${f.flooded.p99Ms} ms, ${fmt(f.p99Ratio, 2)}× (quiet ${f.quiet.p99Ms} ms): ${met ? 'met' : 'NOT MET'}`);
      }
    }
    const noise = points.flatMap((p) => [p.echo?.otherCpu, p.server?.otherCpu]).filter((v): v is number => v !== undefined);
    const meanNoise = noise.length ? noise.reduce((a, b) => a + b, 0) / noise.length : 0;
    if (meanNoise > 0.3) {
      out.push(`WARNING: other processes used ${meanNoise.toFixed(1)} of ${cpus().length} cores on average during the measured windows; the figures and ratios are noisy.`);
    }
    out.push('server/echo: share of the bare node:http ceiling the key server reaches (1.00 = as fast as a server doing nothing).');
    out.push('cpu echo/server: cores the target process used over the measured window; cpu others: cores used meanwhile by processes other');
    out.push('than the target and its load client (noise from the rest of the machine), during the echo and the server point.');

    const errorLines: string[] = [];
    const seen = new Set<Measured>();
    for (const p of points) {
      if (p.echo && !seen.has(p.echo)) {
        seen.add(p.echo);
        errorLines.push(...describeErrors(`echo ${p.op} c=${p.concurrency}`, p.echo));
      }
      errorLines.push(...describeErrors(`${p.backend} ${p.op} c=${p.concurrency}`, p.server));
    }
    for (const f of floods) {
      errorLines.push(...describeErrors(`${f.backend} encrypt c=${f.concurrency} quiet`, f.quiet), ...describeErrors(`${f.backend} encrypt c=${f.concurrency} under the sign-in flood`, f.flooded));
      const healthErrors = f.quietHealth.errors + f.floodHealth.errors;
      if (healthErrors) errorLines.push(`  ${f.backend} /v1/sys/health: ${healthErrors} failed during the flood point`);
      if (f.flood?.answers.other) errorLines.push(`  ${f.backend} sign-in flood: ${f.flood.answers.other} unexpected answers; first: ${f.flood.firstOther ?? '?'}`);
    }
    const failed = errorLines.length > 0;
    if (failed) {
      out.push('');
      out.push('!!!!!!!! CALLS FAILED: the figures above are not valid !!!!!!!!');
      out.push(...errorLines);
    }
    out.push('');
    out.push('results (JSON):');
    const json = {
      section: 'server', cpus: cpus().length, node: process.version, seconds: o.seconds, warmup: o.warmup,
      postgresSkipped: pgSkip ?? null, answerBytes: first.answerBytes, probes, meanOtherCpu: Math.round(meanNoise * 100) / 100, points, floods, cryptoFloor: floor?.measured ?? null,
    };
    out.push(JSON.stringify(json));
    return { text: out.join('\n'), json, failed };
  } finally {
    await Promise.allSettled(children.map((c) => c.stop()));
    if (pgDrop) {
      await pgDrop().catch((e: unknown) => log(`server: dropping the PostgreSQL database failed: ${e instanceof Error ? e.message : String(e)}`));
      unregister?.();
    }
  }
}
