import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, lstatSync, readFileSync, realpathSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { parse as parseYaml } from 'yaml';
import { BIN, call, callError, cli, httpGet, initStore, kmsClients, logLines, removeDir, tempDir, waitFor, type CliResult, type KmsClients } from './helpers.js';
import { spawnOwned } from './reaper.js';
import { api, login } from './server-helpers.js';

// `keyhaven dev` (what `npm start` runs) in a fresh folder: it creates
// ./.keyhaven, starts the key server and the plugin wired to it, serves
// ./.keyhaven/kms.sock, prints a usable EncryptionConfiguration and the dev
// admin's credentials once, works with the CLI, stops cleanly on Ctrl-C and
// picks up its state again on the next run.

interface DevProcess {
  readonly child: ChildProcess;
  stdout(): string;
  stderr(): string;
  readonly exited: Promise<number | null>;
}

/** The environment without KEYHAVEN_DATA_DIR, so ./.keyhaven is the default. */
function devEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.KEYHAVEN_DATA_DIR;
  return env;
}

async function startDev(cwd: string, extra: string[] = []): Promise<DevProcess> {
  // Never the default health address (127.0.0.1:8787): tests run side by side.
  const child = spawnOwned(process.execPath, [BIN, 'dev', '--health-addr', '127.0.0.1:0', '--listen', '127.0.0.1:0', '--log-format', 'json', ...extra], { cwd, env: devEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (code, sig) => r(code ?? (sig ? 128 : null))));
  const dev: DevProcess = { child, stdout: () => out, stderr: () => err, exited };
  try {
    await waitFor(() => {
      if (child.exitCode !== null) throw new Error(`dev exited with ${child.exitCode}:\n${out}\n${err}`);
      return err.includes('Press Ctrl-C to stop.') && logLines(out).some((l) => l.msg === 'kms plugin listening') ? true : undefined;
    }, 'keyhaven dev to print its banner and listen', 30_000);
  } catch (e) {
    child.kill('SIGKILL');
    throw new Error(`${String(e)}\nstdout:\n${out}\nstderr:\n${err}`);
  }
  return dev;
}

let server = '';
let token = '';

/** The CLI against the dev key server, as the dev admin. */
function kh(args: string[], cwd: string): CliResult {
  return cli(args, { cwd, env: { KEYHAVEN_DATA_DIR: '', KEYHAVEN_ADDR: server, KEYHAVEN_TOKEN: token } });
}

function serverUrl(stderr: string): string {
  const m = /key server on (http:\/\/127\.0\.0\.1:\d+)/.exec(stderr);
  assert.ok(m, `server URL in banner:\n${stderr}`);
  return m[1]!;
}

function keyList(stdout: string): Array<{ name: string; currentVersion: number }> {
  const j = JSON.parse(stdout) as unknown;
  return (Array.isArray(j) ? j : (j as { keys: [] }).keys) as Array<{ name: string; currentVersion: number }>;
}

/** The YAML document between the banner's heading and "Press Ctrl-C to stop.". */
function bannerYaml(stderr: string): string {
  const head = 'EncryptionConfiguration for kube-apiserver (--encryption-provider-config):';
  const start = stderr.indexOf(head);
  const end = stderr.indexOf('Press Ctrl-C to stop.');
  assert.ok(start >= 0 && end > start, `banner layout:\n${stderr}`);
  return stderr.slice(start + head.length, end);
}

describe('keyhaven dev in a fresh folder (npm start)', () => {
  let cwd: string;
  let state: string;
  let dev: DevProcess;
  let c: KmsClients | undefined;
  let socket: string;
  let healthBase: string;
  let firstRun: { seed: Buffer; ciphertext: Buffer; keyId: string; annotations: Record<string, Buffer> } | undefined;
  let rotatedKeyId: string | undefined;
  let rootKey: Buffer;
  let firstBanner = '';

  before(async () => {
    cwd = realpathSync(tempDir('kh-dev-'));
    state = join(cwd, '.keyhaven');
    socket = join(state, 'kms.sock');
    dev = await startDev(cwd);
    firstBanner = dev.stderr();
  });

  after(async () => {
    c?.close();
    if (dev && dev.child.exitCode === null && dev.child.signalCode === null) {
      dev.child.kill('SIGKILL');
      await dev.exited;
    }
    removeDir(cwd);
  });

  it('creates ./.keyhaven (0700) with root.key (0600, 32 bytes), keyhaven.db and kms.sock', () => {
    assert.ok(lstatSync(state).isDirectory());
    assert.equal(lstatSync(state).mode & 0o777, 0o700);
    const rk = lstatSync(join(state, 'root.key'));
    assert.ok(rk.isFile());
    assert.equal(rk.mode & 0o777, 0o600);
    assert.equal(rk.size, 32);
    rootKey = readFileSync(join(state, 'root.key'));
    assert.ok(lstatSync(join(state, 'keyhaven.db')).isFile());
    assert.equal(lstatSync(join(state, 'keyhaven.db')).mode & 0o777, 0o600);
    assert.ok(lstatSync(socket).isSocket());
    assert.equal(lstatSync(socket).mode & 0o777, 0o600);
    assert.match(dev.stderr(), /created now/);
  });

  it('the banner holds a valid EncryptionConfiguration for ./.keyhaven/kms.sock', () => {
    const doc = parseYaml(bannerYaml(dev.stderr())) as any;
    assert.equal(doc.apiVersion, 'apiserver.config.k8s.io/v1');
    assert.equal(doc.kind, 'EncryptionConfiguration');
    assert.equal(doc.resources.length, 1);
    const r = doc.resources[0];
    assert.deepEqual(r.resources, ['secrets']);
    assert.ok(r.providers.length >= 2);
    const kms = r.providers[0].kms;
    assert.equal(kms.apiVersion, 'v2');
    assert.equal(typeof kms.name, 'string');
    assert.ok(kms.name.length > 0 && !kms.name.includes(':'));
    assert.equal(kms.endpoint, `unix://${socket}`);
    assert.match(kms.timeout, /^\d+(ms|s|m)$/);
    assert.deepEqual(r.providers[r.providers.length - 1], { identity: {} });
  });

  it('the banner names the health and metrics URLs, and they answer', async () => {
    const m = /plugin:\s+(http:\/\/127\.0\.0\.1:(\d+))\/healthz\b/.exec(dev.stderr());
    assert.ok(m, `health URL in banner:\n${dev.stderr()}`);
    healthBase = m[1]!;
    assert.notEqual(Number(m[2]), 8787, 'the test asked for an ephemeral port');
    assert.ok(dev.stderr().includes(`${healthBase}/metrics`), 'metrics URL in the banner');
    assert.ok(dev.stderr().includes(`${healthBase}/livez`), 'liveness URL in the banner');
    const port = Number(m[2]);
    const h = await waitFor(async () => {
      const r = await httpGet(port, '/healthz');
      return r.status === 200 ? r : undefined;
    }, '/healthz 200');
    assert.match(h.body, /^ok/);
    const metrics = await httpGet(port, '/metrics');
    assert.equal(metrics.status, 200);
    assert.match(metrics.body, /keyhaven_plugin_key_info\{key_id="kh1:/);
  });

  it('Encrypt and Decrypt work over ./.keyhaven/kms.sock', async () => {
    c = kmsClients(socket);
    const s = await call(c.v2, 'Status', {});
    assert.equal(s.healthz, 'ok');
    const seed = randomBytes(32);
    const e = await call(c.v2, 'Encrypt', { plaintext: seed, uid: 'dev-1' });
    assert.equal(e.key_id, s.key_id);
    const d = await call(c.v2, 'Decrypt', { ciphertext: e.ciphertext, uid: 'dev-1-d', key_id: e.key_id, annotations: e.annotations });
    assert.deepEqual(d.plaintext, seed);
    firstRun = { seed, ciphertext: e.ciphertext, keyId: e.key_id, annotations: e.annotations };
  });

  it('prints the dev admin\'s credentials once; they log in with all three admin roles', async () => {
    const m = /admin:\s+dev-admin \/ (\S+)\s+\(shown once/.exec(dev.stderr());
    assert.ok(m, `admin credentials in banner:\n${dev.stderr()}`);
    server = serverUrl(dev.stderr());
    token = await login(server, 'dev-admin', m[1]!);
    const who = await api(server, 'GET', '/v1/auth/whoami', { token });
    assert.deepEqual(who.body.roles, ['auditor', 'key-admin', 'security-admin']);
    assert.doesNotMatch(dev.stdout(), new RegExp(m[1]!), 'the password is not in the log');
    const apps = await api(server, 'GET', '/v1/apps', { token });
    const plugin = apps.body.apps.find((a: { name: string }) => a.name === 'dev-plugin');
    assert.deepEqual(plugin.grants.map((g: { key: string; operations: string[] }) => [g.key, g.operations]), [['kubernetes-secrets', ['decrypt', 'encrypt']]]);
    // Only keyhaven dev lets one person hold both admin roles, and lifts the approval floor.
    const both = await api(server, 'POST', '/v1/users', { token, body: { name: 'dev-both', password: 'dev-both-password', roles: ['security-admin', 'key-admin'] } });
    assert.equal(both.status, 200, both.text);
    assert.deepEqual(both.body.roles, ['key-admin', 'security-admin']);
    // The key-admin init makes on every server is shown too.
    assert.match(dev.stderr(), /also:\s+keyadmin \/ \S+\s+\(key-admin/);
  });

  it('the plugin acts as app dev-plugin: revoking its grant fails Status, granting again restores it', async () => {
    assert.ok(c, 'the Encrypt test ran');
    assert.equal((await api(server, 'DELETE', '/v1/apps/dev-plugin/grants/kubernetes-secrets', { token })).status, 200);
    const err = await waitFor(async () => {
      try {
        await call(c!.v2, 'Status', {});
        return undefined;
      } catch (e) {
        return e as { code: number; details: string };
      }
    }, 'Status to fail once the grant is gone', 15_000);
    assert.match(err.details, /no encrypt grant on key "kubernetes-secrets"/);
    await callError(c.v2, 'Encrypt', { plaintext: randomBytes(32), uid: 'dev-revoked' });
    assert.equal((await api(server, 'PUT', '/v1/apps/dev-plugin/grants/kubernetes-secrets', { token, body: { operations: ['encrypt', 'decrypt'] } })).status, 200);
    await waitFor(async () => ((await call(c!.v2, 'Status', {}).catch(() => undefined))?.healthz === 'ok' ? true : undefined), 'Status ok again', 15_000);
  });

  it('`keyhaven key list` against the dev server lists kubernetes-secrets', () => {
    const r = kh(['key', 'list'], cwd);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /kubernetes-secrets\s+enabled\s+1\b/m);
    const j = kh(['key', 'list', '-o', 'json'], cwd);
    assert.equal(j.code, 0, j.stderr);
    assert.deepEqual(keyList(j.stdout).map((k) => k.name), ['kubernetes-secrets']);
  });

  it('`keyhaven key rotate kubernetes-secrets` in the same folder changes the running instance\'s key_id', async () => {
    assert.ok(c && firstRun, 'the Encrypt test ran');
    const r = kh(['key', 'rotate', 'kubernetes-secrets'], cwd);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /version 2/);
    const s = await waitFor(async () => {
      const x = await call(c!.v2, 'Status', {});
      return x.key_id !== firstRun!.keyId ? x : undefined;
    }, 'the rotated key_id', 30_000);
    assert.match(s.key_id, /:2:[0-9a-f]{16}$/);
    rotatedKeyId = s.key_id;
    assert.deepEqual((await call(c.v2, 'Decrypt', { ciphertext: firstRun.ciphertext, uid: 'dev-old', key_id: firstRun.keyId, annotations: firstRun.annotations })).plaintext, firstRun.seed);
  });

  it('SIGINT stops it with exit 0 and removes the socket', async () => {
    c?.close();
    c = undefined;
    dev.child.kill('SIGINT');
    assert.equal(await dev.exited, 0, `stdout:\n${dev.stdout()}\nstderr:\n${dev.stderr()}`);
    assert.equal(existsSync(socket), false, 'socket removed');
    assert.ok(existsSync(join(state, 'keyhaven.db')));
  });

  it('a second run in the same folder reuses the state: same key_id as after the rotation, old ciphertexts decrypt', async () => {
    assert.ok(firstRun && rotatedKeyId, 'the first run encrypted and rotated');
    dev = await startDev(cwd);
    assert.match(dev.stderr(), /reused/);
    assert.doesNotMatch(dev.stderr(), /created now/);
    assert.doesNotMatch(dev.stderr(), /shown once/, 'the password is shown only on the first run');
    server = serverUrl(dev.stderr());
    assert.deepEqual(readFileSync(join(state, 'root.key')), rootKey, 'the root key file is the same');
    c = kmsClients(socket);
    // As kube-apiserver does: poll Status until healthy (a cold start on a busy machine may miss the first probe's deadline).
    const s = await waitFor(async () => {
      const x = await call(c!.v2, 'Status', {}).catch(() => undefined);
      return x?.healthz === 'ok' ? x : undefined;
    }, 'Status ok after the restart', 30_000);
    assert.equal(s.key_id, rotatedKeyId);
    const d = await call(c.v2, 'Decrypt', { ciphertext: firstRun.ciphertext, uid: 'dev-2-d', key_id: firstRun.keyId, annotations: firstRun.annotations });
    assert.deepEqual(d.plaintext, firstRun.seed);
    const keys = keyList(kh(['key', 'list', '-o', 'json'], cwd).stdout);
    assert.deepEqual(keys.map((k) => [k.name, k.currentVersion]), [['kubernetes-secrets', 2]]);
    c.close();
    c = undefined;
    dev.child.kill('SIGINT');
    assert.equal(await dev.exited, 0);
    assert.equal(existsSync(socket), false);
  });

  it('--reset-admin-password on a later run: a new password, shown once; the old one and its sessions stop working', async () => {
    const oldPassword = /admin:\s+dev-admin \/ (\S+)\s+\(shown once/.exec(firstBanner)?.[1];
    assert.ok(oldPassword, 'the first run showed a password');
    dev = await startDev(cwd, ['--reset-admin-password']);
    assert.match(dev.stderr(), /reused/);
    const m = /admin:\s+dev-admin \/ (\S+)\s+\(shown once/.exec(dev.stderr());
    assert.ok(m, `the new password in the banner:\n${dev.stderr()}`);
    assert.notEqual(m[1], oldPassword);
    assert.doesNotMatch(dev.stdout(), new RegExp(m[1]!), 'the password is not in the log');
    server = serverUrl(dev.stderr());
    assert.equal((await api(server, 'GET', '/v1/auth/whoami', { token })).status, 401, 'the sessions of the old password end');
    assert.equal((await api(server, 'POST', '/v1/auth/login', { body: { name: 'dev-admin', password: oldPassword } })).status, 401);
    token = await login(server, 'dev-admin', m[1]!);
    assert.deepEqual((await api(server, 'GET', '/v1/auth/whoami', { token })).body.roles, ['auditor', 'key-admin', 'security-admin']);
    dev.child.kill('SIGINT');
    assert.equal(await dev.exited, 0);
  });
});

describe('keyhaven dev --reset-admin-password on a store keyhaven dev did not make', () => {
  it('is refused, and the store gets no dev admin', async () => {
    const dir = tempDir('kh-dev-nodev-');
    try {
      initStore(join(dir, 's'));
      const r = cli(['dev', '--data-dir', join(dir, 's'), '--listen', '127.0.0.1:0', '--health-addr', '127.0.0.1:0', '--log-format', 'json', '--reset-admin-password'], { cwd: dir, env: devEnv() });
      assert.equal(r.code, 4, r.stderr);
      assert.match(r.stderr, /--reset-admin-password works only on a store made by keyhaven dev/);
      const db = new Database(join(dir, 's', 'keyhaven.db'), { readonly: true });
      try {
        const names = (db.prepare('SELECT name FROM principals').all() as Array<{ name: string }>).map((p) => p.name);
        assert.ok(!names.includes('dev-admin') && !names.includes('dev-plugin'), names.join(', '));
      } finally {
        db.close();
      }
    } finally {
      removeDir(dir);
    }
  });
});
