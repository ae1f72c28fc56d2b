import { rmSync } from 'node:fs';
import { join } from 'node:path';
import type { FastifyInstance, InjectOptions, LightMyRequestResponse } from 'fastify';
import { SYSTEM } from '../src/access/access.js';
import { DEFAULT_PASSWORD_POOL } from '../src/access/password-pool.js';
import { configurePasswordHashing } from '../src/access/secrets.js';
import { createLogger } from '../src/log/logger.js';
import { keyFileSeal } from '../src/seal/keyfile.js';
import { openStore } from '../src/storage/open-store.js';
import type { Store } from '../src/storage/store.js';
import { buildApp } from '../src/server/app.js';
import { openServerCore, type ServerCore } from '../src/server/core.js';
import { createServerMetrics } from '../src/server/metrics.js';
import { ownedTempDir } from './reaper.js';
import { jsonRequest } from './server-helpers.js';

// In-process harness for route tests (tests only; not part of the package's
// surface): a real SQLite file and key file in a temp folder, the real server
// core and the real fastify app, driven with app.inject(). No port, no
// process: a test file opens one and closes it in `after`.

/** A server as `keyhaven server` runs it, not initialised yet. */
export interface BareTestApp {
  readonly app: FastifyInstance;
  readonly core: ServerCore;
  readonly store: Store;
  readonly dir: string;
  readonly dbPath: string;
  /** Every log line the server wrote (JSON). */
  logs(): string[];
  inject(opts: InjectOptions): Promise<LightMyRequestResponse>;
  close(): Promise<void>;
}

export interface TestApp extends BareTestApp {
  /** Bearer tokens: security-admin, key-admin, auditor sessions; apps' API keys. */
  readonly tokens: {
    readonly admin: string;
    readonly keyAdmin: string;
    readonly auditor: string;
    /** App "granted": encrypt, decrypt, rewrap and datakey on key "k1". */
    readonly granted: string;
    /** App "stranger": no grant on any key. */
    readonly stranger: string;
  };
}

interface TestAppOptions {
  /** Request body limit in bytes (default 64 KiB). */
  readonly bodyLimit?: number;
}

/** Opens a server on a new SQLite file and key file, not initialised (POST /v1/sys/init is the test's). */
export async function openBareTestApp(opts: TestAppOptions = {}): Promise<BareTestApp> {
  // Tests sign in and create users often: the lowest scrypt cost the
  // config allows (auth.hashing.scryptN), as test/server-helpers.ts sets it.
  configurePasswordHashing({ ...DEFAULT_PASSWORD_POOL, scryptN: 1024 });
  const dir = ownedTempDir('kh-app-');
  const dbPath = join(dir, 'keyhaven.db');
  const lines: string[] = [];
  let store: Store | undefined;
  let core: ServerCore | undefined;
  let app: FastifyInstance | undefined;
  try {
    store = await openStore({ sqlite: { path: dbPath, create: true } });
    core = await openServerCore({ store, seal: keyFileSeal(join(dir, 'root.key')), auditFsync: false });
    const logger = createLogger({ level: 'info', destination: { write: (line: string) => void lines.push(line) } });
    const c = core;
    const metrics = createServerMetrics({
      keyNames: false,
      keyId: (name) => {
        try {
          return c.services().keys.idOf(name);
        } catch {
          return undefined; // sealed
        }
      },
    });
    // Tests sign in often from one address; the sign-in rate limit has tests of its own.
    app = await buildApp({ core, logger, metrics, bodyLimit: opts.bodyLimit ?? 64 * 1024, destroyPendingS: 86_400, signInRateLimit: { max: 100_000, windowMs: 60_000 } });
    await app.ready();
    const [a, st] = [app, store];
    return {
      app: a,
      core: c,
      store: st,
      dir,
      dbPath,
      logs: () => [...lines],
      inject: (o) => a.inject(o),
      close: async () => {
        await a.close();
        await c.close();
        await st.close();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (e) {
    await app?.close().catch(() => {});
    await core?.close().catch(() => {});
    await store?.close().catch(() => {});
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

/** Opens an initialised, unsealed server with keys k1, k2 and the cast of `tokens`. */
export async function openTestApp(opts: TestAppOptions = {}): Promise<TestApp> {
  const bare = await openBareTestApp(opts);
  try {
    const init = await bare.core.init({ confirmed: true });
    const s = bare.core.services();
    await s.access.createUser(SYSTEM, { name: 'auditor', password: init.admin.password, roles: ['auditor'] });
    await s.keys.create('k1', 'system');
    await s.keys.create('k2', 'system');
    const granted = await s.access.createApp(SYSTEM, { name: 'granted' });
    const stranger = await s.access.createApp(SYSTEM, { name: 'stranger' });
    await s.access.setGrant(SYSTEM, 'granted', 'k1', ['encrypt', 'decrypt', 'rewrap', 'datakey']);
    const session = async (name: string, password: string) => (await s.access.login(name, password, '127.0.0.1')).token;
    const tokens = {
      admin: await session(init.admin.name, init.admin.password),
      keyAdmin: await session(init.keyAdmin.name, init.keyAdmin.password),
      auditor: await session('auditor', init.admin.password),
      granted: granted.apiKey,
      stranger: stranger.apiKey,
    };
    return { ...bare, tokens };
  } catch (e) {
    await bare.close();
    throw e;
  }
}

/** An answer as the end-to-end tests' `api()` gives it (test/server-helpers.ts), from app.inject. */
export interface InjectedResult<T = any> {
  status: number;
  body: T;
  text: string;
  headers: Headers;
}

/** A JSON call through app.inject, with an optional bearer token. */
export async function injectApi<T = any>(t: Pick<BareTestApp, 'inject'>, method: string, path: string, opts: { token?: string | undefined; body?: unknown; headers?: Record<string, string> } = {}): Promise<InjectedResult<T>> {
  const { headers, body: payload } = jsonRequest(opts);
  const res = await t.inject({ method: method as 'GET', url: path, headers, ...(payload !== undefined ? { payload } : {}) });
  let parsed: unknown = res.body;
  try {
    parsed = JSON.parse(res.body);
  } catch {
    // not JSON (JSON lines, metrics)
  }
  const h = new Headers();
  for (const [k, v] of Object.entries(res.headers)) {
    if (v === undefined) continue;
    for (const one of Array.isArray(v) ? v : [v]) h.append(k, String(one));
  }
  return { status: res.statusCode, body: parsed as T, text: res.body, headers: h };
}
