import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { lstatSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { auditRecords, call, callError, cli, grpc, httpGet, initStore, kmsClients, logLines, removeDir, ROOT, startPlugin, tempDir, waitFor, waitForError, withStore, type KmsClients, type PluginProcess } from './helpers.js';
import { spawnOwned } from './reaper.js';

// The Kubernetes KMS contract, checked over a real unix socket against a real
// plugin process on a real SQLite store.
describe('KMS plugin contract (real process, real unix socket)', () => {
  let dir: string;
  let plugin: PluginProcess;
  let c: KmsClients;

  before(async () => {
    dir = tempDir();
    initStore(dir);
    plugin = await startPlugin({ dataDir: dir });
    c = kmsClients(plugin.socket);
  });

  after(async () => {
    c?.close();
    await plugin?.stop();
    removeDir(dir);
  });

  it('Status answers version v2, healthz ok and a key_id of at most 1024 bytes', async () => {
    const s = await call(c.v2, 'Status', {});
    assert.equal(s.version, 'v2');
    assert.equal(s.healthz, 'ok');
    assert.match(s.key_id, /^kh1:[0-9a-f]{16}:[0-9a-f]{16}:1:[0-9a-f]{16}$/);
    assert.ok(Buffer.byteLength(s.key_id) <= 1024);
  });

  it('the socket file has mode 0600 by default', () => {
    assert.equal(lstatSync(plugin.socket).mode & 0o777, 0o600);
  });

  it('Encrypt wraps a 32-byte seed: ciphertext <= 1024 bytes, key_id equal to Status, annotations valid', async () => {
    const seed = randomBytes(32);
    const s = await call(c.v2, 'Status', {});
    const e = await call(c.v2, 'Encrypt', { plaintext: seed, uid: 'uid-enc-1' });
    assert.ok(e.ciphertext.length > 0 && e.ciphertext.length <= 1024);
    assert.equal(e.ciphertext.length, 73);
    assert.equal(e.key_id, s.key_id);
    for (const k of Object.keys(e.annotations ?? {})) assert.doesNotMatch(k, /\//);
    assert.ok(!e.ciphertext.includes(seed), 'ciphertext must not contain the seed');
    const d = await call(c.v2, 'Decrypt', { ciphertext: e.ciphertext, uid: 'uid-dec-1', key_id: e.key_id, annotations: e.annotations });
    assert.deepEqual(d.plaintext, seed);
  });

  it('two encryptions of the same seed differ (random nonces)', async () => {
    const seed = randomBytes(32);
    const a = await call(c.v2, 'Encrypt', { plaintext: seed, uid: 'u-a' });
    const b = await call(c.v2, 'Encrypt', { plaintext: seed, uid: 'u-b' });
    assert.notDeepEqual(a.ciphertext, b.ciphertext);
  });

  it('v1beta1 on the same socket: Version, Encrypt, Decrypt', async () => {
    const v = await call(c.v1, 'Version', { version: 'v1beta1' });
    assert.equal(v.version, 'v1beta1');
    assert.equal(v.runtime_name, 'keyhaven');
    assert.ok(v.runtime_version.length > 0);
    const dek = randomBytes(32);
    const e = await call(c.v1, 'Encrypt', { version: 'v1beta1', plain: dek });
    assert.ok(e.cipher.length <= 1024);
    const d = await call(c.v1, 'Decrypt', { version: 'v1beta1', cipher: e.cipher });
    assert.deepEqual(d.plain, dek);
    const err = await callError(c.v1, 'Version', { version: 'v2' });
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
  });

  it('many concurrent calls all succeed and round-trip', async () => {
    const seeds = Array.from({ length: 200 }, () => randomBytes(32));
    const enc = await Promise.all(seeds.map((p, i) => call(c.v2, 'Encrypt', { plaintext: p, uid: `conc-${i}` })));
    const dec = await Promise.all(enc.map((e, i) => call(c.v2, 'Decrypt', { ciphertext: e.ciphertext, uid: `conc-d-${i}`, key_id: e.key_id })));
    dec.forEach((d, i) => assert.deepEqual(d.plaintext, seeds[i]));
  });

  it('identical Decrypts sent at once (apiserver restart) each get the answer', async () => {
    const seed = randomBytes(32);
    const e = await call(c.v2, 'Encrypt', { plaintext: seed, uid: 'dup' });
    const all = await Promise.all(Array.from({ length: 20 }, (_, i) => call(c.v2, 'Decrypt', { ciphertext: e.ciphertext, uid: `dup-${i}`, key_id: e.key_id })));
    for (const d of all) assert.deepEqual(d.plaintext, seed);
  });

  it('rotation: key_id changes within one Status poll; every earlier version still decrypts', async () => {
    const before = await call(c.v2, 'Status', {});
    const seed1 = randomBytes(32);
    const e1 = await call(c.v2, 'Encrypt', { plaintext: seed1, uid: 'rot-1' });
    const r = cli(['key', 'rotate', 'kubernetes-secrets', '--data-dir', dir]);
    assert.equal(r.code, 0, r.stderr);
    const after = await waitFor(async () => {
      const s = await call(c.v2, 'Status', {});
      return s.key_id !== before.key_id ? s : undefined;
    }, 'a new key_id');
    assert.match(after.key_id, /:2:[0-9a-f]{16}$/);
    const seed2 = randomBytes(32);
    const e2 = await call(c.v2, 'Encrypt', { plaintext: seed2, uid: 'rot-2' });
    assert.equal(e2.key_id, after.key_id);
    assert.deepEqual((await call(c.v2, 'Decrypt', { ciphertext: e1.ciphertext, uid: 'rot-d1', key_id: e1.key_id })).plaintext, seed1);
    assert.deepEqual((await call(c.v2, 'Decrypt', { ciphertext: e2.ciphertext, uid: 'rot-d2', key_id: e2.key_id })).plaintext, seed2);
  });

  it('a destroyed version is refused with a clear error; newer ones still work', async () => {
    const s = await call(c.v2, 'Status', {});
    const seedOld = randomBytes(32);
    const old = await call(c.v2, 'Encrypt', { plaintext: seedOld, uid: 'destroy-old' });
    const oldVersion = Number(old.key_id.split(':')[3]);
    assert.equal(cli(['key', 'rotate', 'kubernetes-secrets', '--data-dir', dir]).code, 0);
    await waitFor(async () => ((await call(c.v2, 'Status', {})).key_id !== s.key_id ? true : undefined), 'rotation');
    const r = cli(['key', 'destroy-version', 'kubernetes-secrets', String(oldVersion), '--yes', '--data-dir', dir]);
    assert.equal(r.code, 0, r.stderr);
    const err = await waitForError(c.v2, 'Decrypt', { ciphertext: old.ciphertext, uid: 'destroyed', key_id: old.key_id }, 'decrypt of a destroyed version to fail');
    assert.equal(err.code, grpc.status.FAILED_PRECONDITION);
    assert.match(err.details, /destroyed/);
    const fresh = randomBytes(32);
    const e = await call(c.v2, 'Encrypt', { plaintext: fresh, uid: 'after-destroy' });
    assert.deepEqual((await call(c.v2, 'Decrypt', { ciphertext: e.ciphertext, uid: 'after-destroy-d', key_id: e.key_id })).plaintext, fresh);
  });

  it('a disabled key makes Status fail (not just unhealthy) and refuses Encrypt, still decrypts; enable restores', async () => {
    const seed = randomBytes(32);
    const e = await call(c.v2, 'Encrypt', { plaintext: seed, uid: 'pre-disable' });
    assert.equal(cli(['key', 'disable', 'kubernetes-secrets', '--data-dir', dir]).code, 0);
    const err = await waitForError(c.v2, 'Status', {}, 'Status to fail');
    assert.equal(err.code, grpc.status.FAILED_PRECONDITION);
    assert.match(err.details, /disabled/);
    const encErr = await callError(c.v2, 'Encrypt', { plaintext: randomBytes(32), uid: 'while-disabled' });
    assert.equal(encErr.code, grpc.status.FAILED_PRECONDITION);
    // Data already written stays readable: disabling stops writes, not reads.
    assert.deepEqual((await call(c.v2, 'Decrypt', { ciphertext: e.ciphertext, uid: 'while-disabled-d', key_id: e.key_id })).plaintext, seed);
    const h = await httpGet(plugin.healthPort!, '/healthz');
    assert.equal(h.status, 503);
    assert.equal(cli(['key', 'enable', 'kubernetes-secrets', '--data-dir', dir]).code, 0);
    const s = await waitFor<any>(async () => call(c.v2, 'Status', {}), 'Status to recover');
    assert.equal(s.healthz, 'ok');
    assert.deepEqual((await call(c.v2, 'Decrypt', { ciphertext: e.ciphertext, uid: 'post-enable', key_id: e.key_id })).plaintext, seed);
  });

  it('health: /livez, /healthz and /metrics with calls by method and code and the key_id info metric', async () => {
    assert.equal((await httpGet(plugin.healthPort!, '/livez')).status, 200);
    const h = await waitFor(async () => {
      const r = await httpGet(plugin.healthPort!, '/healthz');
      return r.status === 200 ? r : undefined;
    }, 'healthz 200');
    assert.match(h.body, /^ok/);
    const s = await call(c.v2, 'Status', {});
    const m = await httpGet(plugin.healthPort!, '/metrics');
    assert.equal(m.status, 200);
    assert.match(m.body, /keyhaven_plugin_grpc_requests_total\{method="v2.Encrypt",code="OK"\} \d+/);
    assert.match(m.body, /keyhaven_plugin_grpc_requests_total\{method="v2.Encrypt",code="FAILED_PRECONDITION"\} \d+/);
    assert.match(m.body, /keyhaven_plugin_grpc_requests_total\{method="v2.Status",code="FAILED_PRECONDITION"\} \d+/);
    assert.match(m.body, /keyhaven_plugin_grpc_request_duration_seconds_bucket\{le="[^"]+",method="v2.Decrypt",code="OK"\}/);
    assert.match(m.body, /keyhaven_plugin_provider_duration_seconds_count\{operation="encrypt"\} \d+/);
    assert.ok(m.body.includes(`keyhaven_plugin_key_info{key_id="${s.key_id}",provider="embedded"} 1`), 'key_info carries the current key_id');
    assert.equal((await httpGet(plugin.healthPort!, '/nope')).status, 404);
  });

  it('logs carry each request uid; audit has a record per Encrypt/Decrypt with uid, key and version', async () => {
    const uid = `audit-uid-${randomBytes(4).toString('hex')}`;
    const e = await call(c.v2, 'Encrypt', { plaintext: randomBytes(32), uid });
    await call(c.v2, 'Decrypt', { ciphertext: e.ciphertext, uid: `${uid}-d`, key_id: e.key_id });
    await callError(c.v2, 'Decrypt', { ciphertext: Buffer.from([1, 2, 3]), uid: `${uid}-bad`, key_id: e.key_id });
    await waitFor(() => (plugin.output().includes(`${uid}-bad`) ? true : undefined), 'log lines');
    const lines = logLines(plugin.output());
    const encLine = lines.find((l) => l.uid === uid);
    assert.equal(encLine?.method, 'v2.Encrypt');
    assert.equal(encLine?.keyId, e.key_id);
    const recs = auditRecords(dir);
    const enc = recs.find((r) => r.request_id === uid)!;
    assert.equal(enc.operation, 'v2.Encrypt');
    assert.equal(enc.result, 'ok');
    assert.equal(enc.key_name, 'kubernetes-secrets');
    assert.equal(typeof enc.key_version, 'number');
    const dec = recs.find((r) => r.request_id === `${uid}-d`)!;
    assert.equal(dec.operation, 'v2.Decrypt');
    const bad = recs.find((r) => r.request_id === `${uid}-bad`)!;
    assert.notEqual(bad.result, 'ok');
    const v = cli(['audit', 'verify', '--data-dir', dir]);
    assert.equal(v.code, 0, v.stdout + v.stderr);
    assert.match(v.stdout, /intact/);
  });
  it('an oversized uid is served, and logged and audited only in part', async () => {
    const uid = `long-${'x'.repeat(10_000)}`;
    const e = await call(c.v2, 'Encrypt', { plaintext: randomBytes(32), uid });
    assert.ok(e.ciphertext.length > 0);
    const kept = `${uid.slice(0, 128)}...(${uid.length} chars)`;
    await waitFor(() => (plugin.output().includes(kept) ? true : undefined), 'the log line');
    assert.ok(!plugin.output().includes(uid.slice(0, 200)), 'the log holds no more than 128 characters of the uid');
    assert.ok(auditRecords(dir).some((r) => r.request_id === kept));
  });
});

describe('plugin lifecycle (real processes)', () => {
  it('a new process decrypts what the old one encrypted (both API versions)', async () => {
    await withStore(async (dir) => {
    let p = await startPlugin({ dataDir: dir });
    let c = kmsClients(p.socket);
    const seed = randomBytes(32);
    const e = await call(c.v2, 'Encrypt', { plaintext: seed, uid: 'restart' });
    const e1 = await call(c.v1, 'Encrypt', { version: 'v1beta1', plain: seed });
    c.close();
    assert.equal(await p.stop('SIGTERM'), 0);
    p = await startPlugin({ dataDir: dir });
    c = kmsClients(p.socket);
    assert.deepEqual((await call(c.v2, 'Decrypt', { ciphertext: e.ciphertext, uid: 'restart-d', key_id: e.key_id })).plaintext, seed);
    assert.deepEqual((await call(c.v1, 'Decrypt', { version: 'v1beta1', cipher: e1.cipher })).plain, seed);
    assert.equal((await call(c.v2, 'Status', {})).key_id, e.key_id);
    c.close();
    await p.stop();
    });
  });

  it('SIGTERM stops gracefully and removes the socket; a stale socket left by kill -9 is removed at start', async () => {
    await withStore(async (dir) => {
    const p = await startPlugin({ dataDir: dir });
    const c = kmsClients(p.socket);
    const seed = randomBytes(32);
    const e = await call(c.v2, 'Encrypt', { plaintext: seed, uid: 'before-kill' });
    c.close();
    await p.stop('SIGKILL');
    assert.ok(lstatSync(p.socket).isSocket(), 'kill -9 leaves the socket file behind');
    const p2 = await startPlugin({ dataDir: dir });
    assert.match(p2.output(), /removed a stale socket/);
    const c2 = kmsClients(p2.socket);
    // The write acknowledged before kill -9 is still there: its audit record and its key.
    assert.deepEqual((await call(c2.v2, 'Decrypt', { ciphertext: e.ciphertext, uid: 'after-kill', key_id: e.key_id })).plaintext, seed);
    c2.close();
    assert.equal(await p2.stop('SIGTERM'), 0);
    assert.throws(() => lstatSync(p2.socket), /ENOENT/);
    assert.ok(auditRecords(dir).some((r) => r.request_id === 'before-kill'));
    });
  });

  it('--socket-group and --socket-mode give the socket that group and mode; an unknown group is refused', async () => {
    await withStore(async (dir) => {
    // gid 1 (daemon on Debian) exists on any Linux; root may give the socket to it.
    const p = await startPlugin({ dataDir: dir, extraArgs: ['--socket-group', '1', '--socket-mode', '0660'] });
    const st = lstatSync(p.socket);
    assert.equal(st.gid, 1);
    assert.equal(st.mode & 0o777, 0o660);
    assert.equal(await p.stop(), 0);
    const bad = await startPlugin({ dataDir: dir, extraArgs: ['--socket-group', 'no-such-group-keyhaven'], waitReady: false });
    assert.equal(await bad.exited, 78, bad.output());
    assert.match(bad.output(), /socket group "no-such-group-keyhaven" does not exist/);
    });
  });

  it('Encrypt always answers the key_id Status last reported, also after the store loaded a newer version', async () => {
    await withStore(async (dir) => {
    // A Status cache longer than the test: Status keeps reporting version 1
    // until the end, so whatever happens below, the window is open.
    const a = await startPlugin({ dataDir: dir, socketPath: join(dir, 'a.sock'), extraArgs: ['--status-cache-ttl', '1h'] });
    const ca = kmsClients(a.socket);
    let b: PluginProcess | undefined;
    let cb: KmsClients | undefined;
    try {
      const first = (await call(ca.v2, 'Status', {})).key_id;
      assert.equal(cli(['key', 'rotate', 'kubernetes-secrets', '--data-dir', dir]).code, 0);
      // A second plugin started after the rotation encrypts under version 2 ...
      b = await startPlugin({ dataDir: dir, socketPath: join(dir, 'b.sock') });
      cb = kmsClients(b.socket);
      const seed = randomBytes(32);
      const newer = await call(cb.v2, 'Encrypt', { plaintext: seed, uid: 'newer' });
      assert.notEqual(newer.key_id, first);
      // ... and decrypting that in the first plugin makes its key store load version 2.
      assert.deepEqual((await call(ca.v2, 'Decrypt', { ciphertext: newer.ciphertext, uid: 'load-v2', key_id: newer.key_id })).plaintext, seed);
      const s = await call(ca.v2, 'Status', {});
      assert.equal(s.key_id, first, 'Status is still answered from its cache');
      const e = await call(ca.v2, 'Encrypt', { plaintext: randomBytes(32), uid: 'after-load' });
      assert.equal(e.key_id, s.key_id, "Encrypt's key_id differs from Status's");
    } finally {
      ca.close();
      cb?.close();
      await a.stop('SIGKILL');
      await b?.stop('SIGKILL');
    }
    });
  });

  it('every call answered before kill -9 has its audit record after the restart', async () => {
    await withStore(async (dir) => {
    const p = await startPlugin({ dataDir: dir });
    const c = kmsClients(p.socket);
    const n = 300;
    await Promise.all(Array.from({ length: n }, (_, i) => call(c.v2, 'Encrypt', { plaintext: randomBytes(32), uid: `acked-${i}` })));
    c.close();
    await p.stop('SIGKILL');
    const uids = new Set(auditRecords(dir).map((r) => r.request_id));
    for (let i = 0; i < n; i++) assert.ok(uids.has(`acked-${i}`), `record of acked-${i}`);
    const v = cli(['audit', 'verify', '--data-dir', dir]);
    assert.equal(v.code, 0, v.stdout);
    });
  });

  it('audit fails closed: while another process holds the write lock, Encrypt is refused (UNAVAILABLE), then works again', async () => {
    await withStore(async (dir) => {
    const p = await startPlugin({ dataDir: dir });
    const c = kmsClients(p.socket);
    const seed = randomBytes(32);
    const before = await call(c.v2, 'Encrypt', { plaintext: seed, uid: 'before-lock' });
    // A second process takes SQLite's write lock and holds it past the plugin's 2 s busy timeout.
    const locker = spawnOwned(process.execPath, ['-e', `
      const D = require(${JSON.stringify(join(ROOT, 'node_modules', 'better-sqlite3'))});
      const db = new D(process.argv[1]);
      db.exec('begin immediate');
      process.stdout.write('locked\\n');
      process.stdin.once('data', () => { db.exec('commit'); process.stdout.write('released\\n'); process.exit(0); });
    `, join(dir, 'keyhaven.db')], { stdio: ['pipe', 'pipe', 'inherit'] });
    try {
      await new Promise<void>((resolve) => locker.stdout!.once('data', () => resolve()));
      const err = await callError(c.v2, 'Encrypt', { plaintext: randomBytes(32), uid: 'while-locked' });
      assert.equal(err.code, grpc.status.UNAVAILABLE);
      assert.match(err.details, /audit record could not be written/);
    } finally {
      locker.stdin!.write('go\n');
      await new Promise((r) => locker.once('exit', r));
    }
    const after = await call(c.v2, 'Encrypt', { plaintext: randomBytes(32), uid: 'after-lock' });
    assert.equal(after.key_id, before.key_id);
    assert.deepEqual((await call(c.v2, 'Decrypt', { ciphertext: before.ciphertext, uid: 'after-lock-d', key_id: before.key_id })).plaintext, seed);
    const uids = auditRecords(dir).map((r) => r.request_id);
    assert.ok(uids.includes('after-lock') && uids.includes('before-lock'));
    assert.ok(!uids.includes('while-locked'), 'the refused call has no success record');
    c.close();
    assert.equal(await p.stop(), 0);
    });
  });
});
