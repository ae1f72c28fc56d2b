import { randomBytes, randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { stringify as toYaml } from 'yaml';
import { freePort, grpc, kmsClients, metric, removeDir, startPlugin, tempDir, waitFor, type KmsClients, type PluginProcess } from './helpers.js';
import { freshPostgresDatabase } from './pg.js';
import { api, initServer, login, startServerProcess, type ApiResult, type ServerProcess } from './server-helpers.js';

// A small HA cluster for chaos tests: N real `keyhaven server` processes on
// one fresh PostgreSQL database (one root key file, one init), plugins with
// the remote provider in front of them, and K concurrent KMS v2 callers over
// the real unix sockets. Faults (kill -9, SIGSTOP/SIGCONT, restart) are
// injected on the real processes; every call is recorded so a test counts
// failures instead of timing anything.

export const HA_KEY = 'kubernetes-secrets';
const HA_APP = 'app1';
/** The apiserver's default KMS deadline: a call slower than this has failed for it. */
const APISERVER_DEADLINE_MS = 3000;
/** The callers' own deadline: a cap for a hung call only, so a slow call is measured instead of cut off. */
const CALLER_DEADLINE_MS = 60_000;

/** Key version in a keyhaven key_id (kh1:<provider>:<key>:<version>:<hash>). */
const versionOf = (keyId: string): number => Number(keyId.split(':')[3]);

export interface PluginSpec {
  readonly name: string;
  readonly localKek: boolean;
  /** Indexes into the cluster's servers, in the order the plugin tries them. */
  readonly order: readonly number[];
}

export interface HaPlugin {
  readonly spec: PluginSpec;
  proc: PluginProcess;
  clients: KmsClients;
}

export interface ServerSlot {
  readonly index: number;
  readonly name: string;
  readonly url: string;
  readonly dir: string;
  readonly config: Record<string, unknown>;
  proc: ServerProcess;
  /** Set while the process is SIGSTOPped. */
  stopped: boolean;
}

export interface HaCluster {
  readonly db: { url: string; name: string; drop(): Promise<void> };
  readonly servers: ServerSlot[];
  readonly plugins: HaPlugin[];
  readonly keyAdmin: string;
  kill(i: number): Promise<void>;
  restart(i: number): Promise<void>;
  pause(i: number): void;
  resume(i: number): void;
  /** Whether server i answers /v1/sys/health with 200 (unsealed). */
  healthy(i: number): Promise<boolean>;
  /** The plugin's keyhaven_plugin_key_server_up for server i (1 up, 0 kept out). */
  serverUp(p: HaPlugin, i: number): Promise<number>;
  /** Transactions open on the database since before `at` (ISO time) and still open: a hung holder's. */
  openTransactionsSince(at: Date): Promise<number>;
  /** Continues and kills every child, drops the database, removes the folders. Safe to call twice. */
  close(): Promise<void>;
}

export interface HaClusterOptions {
  readonly servers: number;
  readonly plugins: readonly PluginSpec[];
  /** Extra server.yaml fields for every server. */
  readonly serverConfig?: Record<string, unknown>;
  /** Extra plugin `provider` fields. */
  readonly provider?: Record<string, unknown>;
}

/** Starts the cluster; on any failure everything started so far is stopped again. */
export async function startHaCluster(opts: HaClusterOptions): Promise<HaCluster | undefined> {
  const db = await freshPostgresDatabase();
  if (!db) return undefined;
  const dirs: string[] = [];
  const dirOf = (name: string) => {
    const d = tempDir(`kh-ha-${name}-`);
    dirs.push(d);
    return d;
  };
  const servers: ServerSlot[] = [];
  const plugins: HaPlugin[] = [];
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    for (const p of plugins) p.clients.close();
    // A stopped child ignores SIGTERM until it is continued.
    for (const s of servers) s.proc.child.kill('SIGCONT');
    await Promise.all([...plugins.map((p) => stopHard(p.proc.child, p.proc.exited)), ...servers.map((s) => stopHard(s.proc.child, s.proc.exited))]);
    await db.drop().catch(() => {});
    for (const d of dirs) removeDir(d);
  };
  // If the test process ends without its after hook, test/reaper.ts kills every child (SIGKILL ends a stopped one too).

  try {
    const keyDir = dirOf('srv0');
    const storage = { postgres: { url: db.url, poolSize: 4 } };
    // One root key file: the other servers unseal themselves with it once the first has run init.
    const seal = { keyfile: { path: join(keyDir, 'root.key') } };
    let creds: { keyAdmin: string; appKey: string } | undefined;
    for (let i = 0; i < opts.servers; i++) {
      const dir = i === 0 ? keyDir : dirOf(`srv${i}`);
      // Fixed ports: plugins name the servers, and a restarted server comes back at the same address.
      const config = { listen: `127.0.0.1:${await freePort()}`, storage, seal, log: { level: 'info' }, ...opts.serverConfig };
      const proc = await startServerProcess({ dir, config });
      servers.push({ index: i, name: String.fromCharCode(65 + i), url: proc.url, dir, config, proc, stopped: false });
      creds ??= await setUp(proc.url);
    }
    for (const s of servers.slice(1)) await waitFor(async () => ((await api(s.url, 'GET', '/v1/sys/health')).status === 200 ? true : undefined), `server ${s.name} to unseal`);
    if (!creds) throw new Error('a cluster needs at least one server');
    const apiKeyFile = join(dirOf('apikey'), 'api.key');
    writeFileSync(apiKeyFile, `${creds.appKey}\n`, { mode: 0o600 });
    for (const spec of opts.plugins) {
      const dir = dirOf(`plugin-${spec.name}`);
      const config = join(dir, 'plugin.yaml');
      writeFileSync(
        config,
        toYaml({
          provider: {
            type: 'keyhaven',
            servers: spec.order.map((i) => servers[i]!.url),
            key: HA_KEY,
            cluster: `ha-${spec.name}`,
            apiKeyFile,
            localKek: { enabled: spec.localKek },
            ...opts.provider,
          },
        }),
        { mode: 0o600 },
      );
      const socket = join(dir, 'kms.sock');
      const proc = await startPlugin({
        dataDir: dir,
        socketPath: socket,
        command: ['plugin', '--config', config, '--socket', `unix://${socket}`, '--health-addr', '127.0.0.1:0', '--log-level', 'info', '--status-cache-ttl', '100ms'],
      });
      plugins.push({ spec, proc, clients: kmsClients(socket) });
    }
    const slot = (i: number) => servers[i]!;
    let admin: pg.Client | undefined;
    return {
      db,
      servers,
      plugins,
      keyAdmin: creds.keyAdmin,
      async kill(i) {
        const s = slot(i);
        s.proc.child.kill('SIGKILL');
        if (s.stopped) s.proc.child.kill('SIGCONT');
        s.stopped = false;
        await s.proc.exited;
      },
      async restart(i) {
        const s = slot(i);
        s.proc = await startServerProcess({ dir: s.dir, config: s.config });
        if (s.proc.url !== s.url) throw new Error(`server ${s.name} came back at ${s.proc.url}, not ${s.url}`);
      },
      pause(i) {
        const s = slot(i);
        s.stopped = true;
        s.proc.child.kill('SIGSTOP');
      },
      resume(i) {
        const s = slot(i);
        s.proc.child.kill('SIGCONT');
        s.stopped = false;
      },
      async healthy(i) {
        try {
          return (await api(slot(i).url, 'GET', '/v1/sys/health')).status === 200;
        } catch {
          return false;
        }
      },
      serverUp: (p, i) => metric(p.proc, 'keyhaven_plugin_key_server_up', { server: slot(i).url }),
      async openTransactionsSince(at) {
        if (!admin) {
          admin = new pg.Client({ connectionString: db.url });
          admin.on('error', () => {});
          await admin.connect();
        }
        const r = await admin.query('select count(*)::int as n from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid() and xact_start < $1', [at]);
        return r.rows[0].n as number;
      },
      async close() {
        await admin?.end().catch(() => {});
        admin = undefined;
        await close();
      },
    };
  } catch (e) {
    await close();
    throw e;
  }
}

async function stopHard(child: import('node:child_process').ChildProcess, exited: Promise<unknown>): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(t);
}

/** Init, the key (as the key-admin), the app and its encrypt/decrypt grant. */
async function setUp(url: string): Promise<{ keyAdmin: string; appKey: string }> {
  const init = await initServer(url);
  const admin = await login(url, init.admin.name, init.admin.password);
  const keyAdmin = await login(url, init.keyAdmin.name, init.keyAdmin.password);
  const must = async (what: string, p: Promise<ApiResult>) => {
    const r = await p;
    if (r.status >= 300) throw new Error(`${what} failed: ${r.status} ${r.text}`);
    return r;
  };
  await must('create key', api(url, 'POST', '/v1/keys', { token: keyAdmin, body: { name: HA_KEY } }));
  const app = await must('create app', api(url, 'POST', '/v1/apps', { token: admin, body: { name: HA_APP } }));
  await must('grant', api(url, 'PUT', `/v1/apps/${HA_APP}/grants/${HA_KEY}`, { token: keyAdmin, body: { operations: ['encrypt', 'decrypt'] } }));
  return { keyAdmin, appKey: app.body.apiKey as string };
}

// ---------------------------------------------------------------- load

export interface CallRecord {
  readonly plugin: number;
  readonly op: 'Encrypt' | 'Decrypt' | 'Status';
  readonly start: number;
  readonly end: number;
  readonly ok: boolean;
  readonly err?: string;
  /** Key version of the key_id an Encrypt or Status answered. */
  readonly version?: number;
}

/** A fault on the timeline: from `at` (the signal) to `until` (SIGCONT or restart done; Infinity while open). */
export interface Fault {
  readonly kind: 'kill' | 'stop';
  readonly server: number;
  readonly at: number;
  until: number;
}

type Method = (req: unknown, meta: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: any) => void) => void;

function rpc<T = any>(client: Record<string, Method>, method: string, req: unknown): Promise<T> {
  return new Promise((resolve, reject) => {
    client[method]!(req, new grpc.Metadata(), { deadline: Date.now() + CALLER_DEADLINE_MS }, (err, res) => (err ? reject(err) : resolve(res as T)));
  });
}

/**
 * K concurrent callers spread over the plugins, each alternating a v2 Encrypt
 * of a fresh seed and a Decrypt of its last ciphertext (plaintext checked),
 * plus one Status poller per plugin (as the apiserver polls it). Every call
 * is recorded.
 */
export class KmsLoad {
  readonly records: CallRecord[] = [];
  /** Wrong answers (a Decrypt returning another plaintext): never allowed. */
  readonly wrong: string[] = [];
  private running = false;
  private loops: Promise<void>[] = [];

  constructor(
    private readonly plugins: readonly HaPlugin[],
    private readonly callers: number,
    private readonly statusEveryMs = 250,
  ) {}

  start(): void {
    this.running = true;
    for (let w = 0; w < this.callers; w++) this.loops.push(this.caller(w));
    this.plugins.forEach((_, p) => this.loops.push(this.poller(p)));
  }

  async stop(): Promise<void> {
    this.running = false;
    await Promise.all(this.loops);
    this.loops = [];
  }

  /** Resolves once `n` more calls have succeeded (the load is flowing). */
  async okCalls(n: number, what: string, ms = 20_000): Promise<void> {
    const target = this.records.filter((r) => r.ok).length + n;
    await waitFor(() => (this.records.filter((r) => r.ok).length >= target ? true : undefined), what, ms);
  }

  private async timed(plugin: number, op: CallRecord['op'], fn: () => Promise<number | undefined>): Promise<boolean> {
    const start = Date.now();
    try {
      const version = await fn();
      this.records.push({ plugin, op, start, end: Date.now(), ok: true, ...(version !== undefined ? { version } : {}) });
      return true;
    } catch (e) {
      const g = e as grpc.ServiceError;
      this.records.push({ plugin, op, start, end: Date.now(), ok: false, err: `${g.code ?? ''} ${g.message}` });
      return false;
    }
  }

  private async caller(w: number): Promise<void> {
    const p = w % this.plugins.length;
    const c = this.plugins[p]!.clients.v2 as unknown as Record<string, Method>;
    let last: { seed: Buffer; e: { ciphertext: Buffer; key_id: string; annotations: Record<string, Buffer> } } | undefined;
    for (let i = 0; this.running; i++) {
      const seed = randomBytes(32);
      await this.timed(p, 'Encrypt', async () => {
        const e = await rpc(c, 'Encrypt', { plaintext: seed, uid: randomUUID() });
        last = { seed, e };
        return versionOf(e.key_id);
      });
      if (!last || !this.running) continue;
      const mine = last;
      await this.timed(p, 'Decrypt', async () => {
        const d = await rpc(c, 'Decrypt', { ciphertext: mine.e.ciphertext, uid: randomUUID(), key_id: mine.e.key_id, annotations: mine.e.annotations });
        if (!Buffer.from(d.plaintext).equals(mine.seed)) this.wrong.push(`caller ${w} call ${i}: Decrypt returned another plaintext`);
        return undefined;
      });
    }
  }

  private async poller(p: number): Promise<void> {
    const c = this.plugins[p]!.clients.v2 as unknown as Record<string, Method>;
    while (this.running) {
      await this.timed(p, 'Status', async () => {
        const s = await rpc(c, 'Status', {});
        if (s.healthz !== 'ok') throw new Error(`healthz ${s.healthz}`);
        return versionOf(s.key_id);
      });
      await new Promise((r) => setTimeout(r, this.statusEveryMs));
    }
  }
}

// ---------------------------------------------------------------- counting

export interface Counts {
  calls: number;
  failed: number;
  /** Succeeded, but slower than the apiserver's 3 s deadline (it would have given up). */
  over3s: number;
  maxMs: number;
}

export function count(recs: readonly CallRecord[]): Counts {
  let failed = 0;
  let over3s = 0;
  let maxMs = 0;
  for (const r of recs) {
    const ms = r.end - r.start;
    if (!r.ok) failed += 1;
    else if (ms > APISERVER_DEADLINE_MS) over3s += 1;
    maxMs = Math.max(maxMs, ms);
  }
  return { calls: recs.length, failed, over3s, maxMs };
}

/** A call that was in flight when a fault hit its server (sent before the signal, answered after it). */
export const inFlightAt = (r: CallRecord, faults: readonly Fault[]): boolean => faults.some((f) => r.start < f.at && r.end > f.at);

export const fmtCounts = (c: Counts): string => `${c.calls} calls, ${c.failed} failed, ${c.over3s} over 3 s, max ${c.maxMs} ms`;

/** The first few distinct error texts, for an assertion message. */
export function errorSample(recs: readonly CallRecord[], n = 8): string {
  const byErr = new Map<string, number>();
  for (const r of recs) if (!r.ok) byErr.set(`${r.op}: ${r.err}`, (byErr.get(`${r.op}: ${r.err}`) ?? 0) + 1);
  return [...byErr].slice(0, n).map(([e, k]) => `  ${k}× ${e}`).join('\n');
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** A positive integer from the environment, or the default. */
export function envInt(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const v = Number(raw);
  if (!Number.isInteger(v) || v <= 0) throw new Error(`${name} must be a positive integer, got ${JSON.stringify(raw)}`);
  return v;
}
