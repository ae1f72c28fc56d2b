import { describe, it, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { cleanCliEnv, removeDir, runCli, tempDir, waitFor } from './helpers.js';
import { freshPostgresDatabase, postgresAvailable, POSTGRES_REASON } from './pg.js';
import { requireDependency } from './require.js';
import { api, initServer, login, setupCast, startServerProcess, type ApiResult, type ServerProcess } from './server-helpers.js';

// Two real server processes on one PostgreSQL database: a server that has not
// yet noticed the other's init catches up when asked, and key changes made
// through one server reach the other without waiting for its scheduler.

const available = await postgresAvailable();
const b64 = (s: string) => Buffer.from(s).toString('base64');
// Far beyond any test here: whatever these tests see happens without the scheduler tick.
const NO_TICK = { interval: '10m' };

/** A fresh database, two folders, and cleanup that leaves no process, database or folder behind. */
async function pair(t: TestContext) {
  const db = (await freshPostgresDatabase())!;
  const dirs = [tempDir('kh-ha-a-'), tempDir('kh-ha-b-')] as const;
  const servers: ServerProcess[] = [];
  t.after(async () => {
    await Promise.all(servers.map((s) => s.stop()));
    await db.drop();
    for (const d of dirs) removeDir(d);
  });
  const start = async (i: 0 | 1, seal: Record<string, unknown>) => {
    const s = await startServerProcess({ dir: dirs[i], config: { storage: { postgres: { url: db.url, poolSize: 2 } }, seal, scheduler: NO_TICK } });
    servers.push(s);
    return s;
  };
  return { dirs, start };
}

/** The start-up log line says the server found no init. */
function startedUninitialised(s: ServerProcess): void {
  assert.match(s.output(), /"initialized":false[^\n]*"msg":"keyhaven server listening"/, 'the server started before the init');
}

/** Two servers started together before any init, each with the seal `sealOf` gives for its folder (A's by default for both). */
async function startedBeforeInit(t: TestContext, sealOf: (dirs: readonly [string, string], i: 0 | 1) => Record<string, unknown>) {
  const { dirs, start } = await pair(t);
  const [a, b] = await Promise.all([start(0, sealOf(dirs, 0)), start(1, sealOf(dirs, 1))]);
  startedUninitialised(b);
  return { dirs, a, b };
}

const sharedKeyFile = (dirs: readonly [string, string]) => ({ keyfile: { path: join(dirs[0], 'root.key') } });

function cliEnv(dir: string): NodeJS.ProcessEnv {
  return { ...cleanCliEnv(), XDG_CONFIG_HOME: join(dir, 'cli') };
}

describe('a server started before another one ran init (PostgreSQL)', () => {
  it('keyfile: keyhaven operator unseal --server B unseals B at once', async (t) => {
    if (!requireDependency(t, available, POSTGRES_REASON)) return;
    const { dirs, a, b } = await startedBeforeInit(t, sharedKeyFile);
    // Before any init the server itself answers (the CLI does not decide on its own): it names the way in.
    const early = await runCli(['operator', 'unseal', '--server', b.url], { env: cliEnv(dirs[1]) });
    assert.notEqual(early.code, 0);
    assert.match(early.stderr, /not initialised; run keyhaven operator init \(request [^)]+\)/, 'the refusal comes from the server');
    const init = await initServer(a.url);
    await login(a.url, init.admin.name, init.admin.password);
    // A server that found no init reads the store again after a second at the earliest.
    await new Promise((r) => setTimeout(r, 1100));

    // No name, no password, no saved session: nothing to prove for a start-up unseal.
    const r = await runCli(['operator', 'unseal', '--server', b.url, '-o', 'json'], { env: cliEnv(dirs[1]) });
    assert.equal(r.code, 0, `stdout: ${r.stdout}\nstderr: ${r.stderr}`);
    const st = JSON.parse(r.stdout);
    assert.deepEqual([st.initialized, st.sealed, st.kind], [true, false, 'keyfile']);
    assert.equal((await api(b.url, 'GET', '/v1/sys/health')).status, 200);
    const tok = await login(b.url, init.admin.name, init.admin.password);
    assert.equal((await api(b.url, 'GET', '/v1/auth/whoami', { token: tok })).status, 200);
  });

  it('keyfile: the first request of any kind lets B catch up (a sign-in, with no status call before it)', async (t) => {
    if (!requireDependency(t, available, POSTGRES_REASON)) return;
    const { a, b } = await startedBeforeInit(t, sharedKeyFile);
    const init = await initServer(a.url);
    const tok = await login(b.url, init.admin.name, init.admin.password);
    assert.equal((await api(b.url, 'GET', '/v1/auth/whoami', { token: tok })).status, 200);
  });

  it('keyfile: the status call alone lets B catch up; an operator seal set meanwhile still needs a security-admin', async (t) => {
    if (!requireDependency(t, available, POSTGRES_REASON)) return;
    const { dirs, a, b } = await startedBeforeInit(t, sharedKeyFile);
    const init = await initServer(a.url);
    const admin = await login(a.url, init.admin.name, init.admin.password);
    const sealed = await api(a.url, 'POST', '/v1/sys/seal', { token: admin });
    assert.equal(sealed.status, 200, sealed.text);

    // B learns of the init and of the seal from its first status call, and stays sealed.
    const st = await api(b.url, 'GET', '/v1/sys/seal-status');
    assert.equal(st.status, 200, st.text);
    assert.deepEqual([st.body.initialized, st.body.sealed, st.body.sealedBy], [true, true, 'operator']);
    const anon: ApiResult = await api(b.url, 'POST', '/v1/sys/unseal', { body: {} });
    assert.equal(anon.status, 401, anon.text);
    const cliAnon = await runCli(['operator', 'unseal', '--server', b.url], { env: cliEnv(dirs[1]) });
    assert.notEqual(cliAnon.code, 0, 'no credentials, no unseal');
    assert.equal((await api(b.url, 'GET', '/v1/sys/health')).status, 503, 'still sealed');

    const lifted = await runCli(['operator', 'unseal', '--server', b.url, '--name', init.admin.name, '--password-stdin', '-o', 'json'], { env: cliEnv(dirs[1]), input: `${init.admin.password}\n` });
    assert.equal(lifted.code, 0, lifted.stderr);
    assert.equal(JSON.parse(lifted.stdout).sealed, false);
    assert.equal((await api(b.url, 'GET', '/v1/sys/health')).status, 200);
  });

  it('keyfile: a server whose own unseal failed stays shut by an operator seal made meanwhile, whatever anonymous requests it gets', async (t) => {
    if (!requireDependency(t, available, POSTGRES_REASON)) return;
    // B's own key file is absent until copied below.
    const { dirs, a, b } = await startedBeforeInit(t, (d, i) => ({ keyfile: { path: join(d[i], 'root.key') } }));
    const keyA = join(dirs[0], 'root.key');
    const keyB = join(dirs[1], 'root.key');
    const init = await initServer(a.url);
    // B learns of the init but cannot unseal: its key file is missing.
    assert.equal((await api(b.url, 'GET', '/v1/sys/health')).status, 503);
    const admin = await login(a.url, init.admin.name, init.admin.password);
    const sealed = await api(a.url, 'POST', '/v1/sys/seal', { token: admin });
    assert.equal(sealed.status, 200, sealed.text);
    copyFileSync(keyA, keyB);
    chmodSync(keyB, 0o600);
    // Past the one-check-a-second limit, so the anonymous calls below do reach the store.
    await new Promise((r) => setTimeout(r, 1100));
    for (let i = 0; i < 3; i++) {
      const h = await api(b.url, 'GET', '/v1/sys/health');
      assert.equal(h.status, 503, `B must stay sealed: ${h.text}`);
      await new Promise((r) => setTimeout(r, 600));
    }
    const st = await api(b.url, 'GET', '/v1/sys/seal-status');
    assert.deepEqual([st.body.sealed, st.body.sealedBy], [true, 'operator']);
  });

  it('shamir: keyhaven operator unseal --server B asks B for shares at once and they unseal it', async (t) => {
    if (!requireDependency(t, available, POSTGRES_REASON)) return;
    const { dirs, a, b } = await startedBeforeInit(t, () => ({ shamir: {} }));
    const init = await initServer(a.url, { shares: 3, threshold: 2 });
    assert.equal(init.shares?.length, 3);

    const r = await runCli(['operator', 'unseal', '--server', b.url, '--share-stdin', '-o', 'json'], { env: cliEnv(dirs[1]), input: `${init.shares![0]}\n${init.shares![2]}\n` });
    assert.equal(r.code, 0, `stdout: ${r.stdout}\nstderr: ${r.stderr}`);
    const st = JSON.parse(r.stdout);
    assert.deepEqual([st.initialized, st.sealed, st.kind], [true, false, 'shamir']);
    assert.equal((await api(b.url, 'GET', '/v1/sys/health')).status, 200);
    // A was not unsealed by B's shares: each server takes its own.
    assert.equal((await api(a.url, 'GET', '/v1/sys/health')).status, 503);
  });
});

describe('key changes made through one server reach the other without its tick (PostgreSQL)', () => {
  it('rotate, disable and enable through A: Encrypt through B follows', async (t) => {
    if (!requireDependency(t, available, POSTGRES_REASON)) return;
    const { dirs, start } = await pair(t);
    const seal = { keyfile: { path: join(dirs[0], 'root.key') } };
    const a = await start(0, seal);
    const cast = await setupCast(a.url);
    const b = await start(1, seal);
    const encryptB = (pt: string) => api(b.url, 'POST', `/v1/keys/${cast.key}/encrypt`, { token: cast.appKey, body: { plaintext: b64(pt) } });

    const first = await encryptB('before');
    assert.equal(first.status, 200, first.text);
    assert.equal(first.body.version, 1, 'B holds the key in its cache');

    const rot = await api(a.url, 'POST', `/v1/keys/${cast.key}/rotate`, { token: cast.keyAdmin, body: {} });
    assert.equal(rot.status, 200, rot.text);
    assert.equal(rot.body.currentVersion, 2);
    // A generous bound (the poll runs every second): success, not speed, is asserted.
    const v2 = await waitFor(async () => {
      const r = await encryptB('after rotate');
      assert.equal(r.status, 200, r.text);
      return r.body.version === 2 ? r : undefined;
    }, 'Encrypt through B to use version 2', 10_000);
    const dec = await api(a.url, 'POST', `/v1/keys/${cast.key}/decrypt`, { token: cast.appKey, body: { ciphertext: v2.body.ciphertext } });
    assert.equal(dec.status, 200, dec.text);
    assert.equal(dec.body.plaintext, b64('after rotate'));

    const dis = await api(a.url, 'POST', `/v1/keys/${cast.key}/disable`, { token: cast.keyAdmin, body: {} });
    assert.equal(dis.status, 200, dis.text);
    const refused = await waitFor(async () => {
      const r = await encryptB('while disabled');
      return r.status === 200 ? undefined : r;
    }, 'Encrypt through B to be refused', 10_000);
    assert.equal(refused.body.error.code, 'key_disabled', refused.text);
    // Data written before stays readable through B.
    const decB = await api(b.url, 'POST', `/v1/keys/${cast.key}/decrypt`, { token: cast.appKey, body: { ciphertext: first.body.ciphertext } });
    assert.equal(decB.status, 200, decB.text);

    const en = await api(a.url, 'POST', `/v1/keys/${cast.key}/enable`, { token: cast.keyAdmin, body: {} });
    assert.equal(en.status, 200, en.text);
    const back = await waitFor(async () => {
      const r = await encryptB('enabled again');
      return r.status === 200 ? r : undefined;
    }, 'Encrypt through B to work again', 10_000);
    assert.equal(back.body.version, 2);
  });
});
