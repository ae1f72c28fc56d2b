import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance, InjectOptions, LightMyRequestResponse } from 'fastify';
import { SYSTEM } from '../access/access.js';
import { createLogger } from '../log/logger.js';
import { keyFileSeal } from '../seal/keyfile.js';
import { openStore } from '../storage/open-store.js';
import type { Store } from '../storage/store.js';
import { buildApp } from './app.js';
import { openServerCore, type ServerCore } from './core.js';
import { createServerMetrics } from './metrics.js';

// In-process harness for route tests (tests only; not part of the package's
// surface): a real SQLite file and key file in a temp folder, the real server
// core and the real fastify app, driven with app.inject(). No port, no
// process: a test file opens one and closes it in `after`.

export interface TestApp {
  readonly app: FastifyInstance;
  readonly core: ServerCore;
  readonly store: Store;
  readonly dir: string;
  readonly dbPath: string;
  /** Bearer tokens: security-admin, key-admin, auditor sessions; apps' API keys. */
  readonly tokens: {
    readonly admin: string;
    readonly keyAdmin: string;
    readonly auditor: string;
    /** App "granted": encrypt and decrypt on key "k1". */
    readonly granted: string;
    /** App "stranger": no grant on any key. */
    readonly stranger: string;
  };
  /** Every log line the server wrote (JSON). */
  logs(): string[];
  inject(opts: InjectOptions): Promise<LightMyRequestResponse>;
  close(): Promise<void>;
}

export interface TestAppOptions {
  /** Request body limit in bytes (default 64 KiB). */
  readonly bodyLimit?: number;
}

/** Opens an initialised, unsealed server with keys k1, k2 and the cast above. */
export async function openTestApp(opts: TestAppOptions = {}): Promise<TestApp> {
  const dir = mkdtempSync(join(tmpdir(), 'kh-app-'));
  const dbPath = join(dir, 'keyhaven.db');
  const lines: string[] = [];
  let store: Store | undefined;
  let core: ServerCore | undefined;
  let app: FastifyInstance | undefined;
  try {
    store = await openStore({ sqlite: { path: dbPath, create: true } });
    core = await openServerCore({ store, seal: keyFileSeal(join(dir, 'root.key')), auditFsync: false });
    const init = await core.init({ confirmed: true });
    const s = core.services();
    await s.access.createUser(SYSTEM, { name: 'auditor', password: init.admin.password, roles: ['auditor'] });
    await s.keys.create('k1', 'system');
    await s.keys.create('k2', 'system');
    const granted = await s.access.createApp(SYSTEM, { name: 'granted' });
    const stranger = await s.access.createApp(SYSTEM, { name: 'stranger' });
    await s.access.setGrant(SYSTEM, 'granted', 'k1', ['encrypt', 'decrypt']);
    const session = async (name: string, password: string) => (await s.access.login(name, password, '127.0.0.1')).token;
    const tokens = {
      admin: await session(init.admin.name, init.admin.password),
      keyAdmin: await session(init.keyAdmin.name, init.keyAdmin.password),
      auditor: await session('auditor', init.admin.password),
      granted: granted.apiKey,
      stranger: stranger.apiKey,
    };
    const logger = createLogger({ level: 'info', destination: { write: (line: string) => void lines.push(line) } });
    const c = core;
    const metrics = createServerMetrics({ keyNames: false, keyId: (name) => c.services().keys.idOf(name) });
    app = await buildApp({ core, logger, metrics, bodyLimit: opts.bodyLimit ?? 64 * 1024, destroyPendingS: 86_400 });
    await app.ready();
    const [a, st] = [app, store];
    return {
      app: a,
      core: c,
      store: st,
      dir,
      dbPath,
      tokens,
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
