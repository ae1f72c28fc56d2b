import assert from 'node:assert/strict';
import { existsSync, lstatSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { call, callError, cli, grpc, httpGet, kmsClients, removeDir, startPlugin, tempDir, waitFor, waitForError, type CliResult, type KmsClients, type PluginProcess } from './helpers.js';
import { byteForms as forms } from './secret-forms.js';

// Plant known secrets (the root key, the plaintexts), run every flow, then
// look for them everywhere keyhaven writes: logs at trace level, CLI output,
// the audit export, /metrics and the raw database files.

/** A distinctive 32-byte value; ASCII so a raw hit is also readable in text. */
function known(label: string): Buffer {
  const b = Buffer.from(`KH-${label}-`.padEnd(32, 'Z').slice(0, 32), 'ascii');
  assert.equal(b.length, 32);
  return b;
}

const ROOT_KEY = known('ROOT-KEY-planted-by-test');
const PLAINTEXTS = {
  v2: known('PT-v2-apiserver-seed'),
  v1beta1: known('PT-v1beta1-dek'),
  afterRotate: known('PT-after-rotation'),
  whileDisabled: known('PT-while-disabled'),
  tampered: known('PT-tampered-later'),
  wrongKeyId: known('PT-wrong-key-id'),
  oversized: known('PT-inside-oversized'),
  afterEnable: known('PT-after-enable'),
};
const SECRETS: Record<string, Buffer> = { rootKey: ROOT_KEY, ...Object.fromEntries(Object.entries(PLAINTEXTS).map(([k, v]) => [`plaintext.${k}`, v])) };


function assertNoSecrets(where: string, haystack: Buffer | string): void {
  const hay = typeof haystack === 'string' ? Buffer.from(haystack) : haystack;
  for (const [name, secret] of Object.entries(SECRETS)) {
    for (const [form, needle] of Object.entries(forms(secret))) {
      assert.equal(hay.includes(needle), false, `${where} contains ${name} (${form})`);
    }
  }
}

describe('secrets hygiene: no root key or plaintext in logs, CLI output, audit, metrics or the database', () => {
  let dir: string;
  let plugin: PluginProcess;
  let c: KmsClients;
  const cliOutputs: Array<[string, CliResult]> = [];
  let metricsBody = '';
  let exitCode: number | null = null;

  const kh = (args: string[]): CliResult => {
    const r = cli([...args, '--data-dir', dir]);
    cliOutputs.push([args.join(' '), r]);
    return r;
  };

  const statusError = () => waitForError(c.v2, 'Status', {}, 'Status to fail');

  before(async () => {
    dir = tempDir('kh-hygiene-');
    // The planted root key; init keeps an existing root key file when there is no database yet.
    writeFileSync(join(dir, 'root.key'), ROOT_KEY, { mode: 0o600 });
    const init = kh(['init']);
    assert.equal(init.code, 0, init.stderr);
    assert.match(init.stdout, /created key store/);
    assert.deepEqual(readFileSync(join(dir, 'root.key')), ROOT_KEY, 'init kept the planted root key');

    plugin = await startPlugin({ dataDir: dir, extraArgs: ['--log-level', 'trace'] });
    c = kmsClients(plugin.socket);

    // v2 and v1beta1 round trips.
    const e1 = await call(c.v2, 'Encrypt', { plaintext: PLAINTEXTS.v2, uid: 'hyg-v2' });
    assert.deepEqual((await call(c.v2, 'Decrypt', { ciphertext: e1.ciphertext, uid: 'hyg-v2-d', key_id: e1.key_id })).plaintext, PLAINTEXTS.v2);
    const v1 = await call(c.v1, 'Encrypt', { version: 'v1beta1', plain: PLAINTEXTS.v1beta1 });
    assert.deepEqual((await call(c.v1, 'Decrypt', { version: 'v1beta1', cipher: v1.cipher })).plain, PLAINTEXTS.v1beta1);

    // Rotation.
    assert.equal(kh(['key', 'rotate', 'kubernetes-secrets']).code, 0);
    const rotated = await waitFor(async () => {
      const s = await call(c.v2, 'Status', {});
      return s.key_id !== e1.key_id ? s : undefined;
    }, 'the rotated key_id');
    const e2 = await call(c.v2, 'Encrypt', { plaintext: PLAINTEXTS.afterRotate, uid: 'hyg-rot' });
    assert.equal(e2.key_id, rotated.key_id);
    assert.deepEqual((await call(c.v2, 'Decrypt', { ciphertext: e2.ciphertext, uid: 'hyg-rot-d', key_id: e2.key_id })).plaintext, PLAINTEXTS.afterRotate);
    assert.deepEqual((await call(c.v2, 'Decrypt', { ciphertext: e1.ciphertext, uid: 'hyg-old-d', key_id: e1.key_id })).plaintext, PLAINTEXTS.v2);

    // Disable: Status and Encrypt (with a known plaintext) fail, Decrypt still works; enable restores.
    assert.equal(kh(['key', 'disable', 'kubernetes-secrets']).code, 0);
    assert.equal((await statusError()).code, grpc.status.FAILED_PRECONDITION);
    assert.equal((await callError(c.v2, 'Encrypt', { plaintext: PLAINTEXTS.whileDisabled, uid: 'hyg-disabled-e' })).code, grpc.status.FAILED_PRECONDITION);
    assert.equal((await callError(c.v1, 'Encrypt', { version: 'v1beta1', plain: PLAINTEXTS.whileDisabled })).code, grpc.status.FAILED_PRECONDITION);
    assert.deepEqual((await call(c.v2, 'Decrypt', { ciphertext: e1.ciphertext, uid: 'hyg-disabled-d', key_id: e1.key_id })).plaintext, PLAINTEXTS.v2);
    assert.equal(kh(['key', 'enable', 'kubernetes-secrets']).code, 0);
    await waitFor(async () => call(c.v2, 'Status', {}), 'Status to recover');
    const e3 = await call(c.v2, 'Encrypt', { plaintext: PLAINTEXTS.afterEnable, uid: 'hyg-enabled' });
    assert.deepEqual((await call(c.v2, 'Decrypt', { ciphertext: e3.ciphertext, uid: 'hyg-enabled-d', key_id: e3.key_id })).plaintext, PLAINTEXTS.afterEnable);

    // Failing requests that carry known plaintexts.
    const t = await call(c.v2, 'Encrypt', { plaintext: PLAINTEXTS.tampered, uid: 'hyg-tamper' });
    const bad = Buffer.from(t.ciphertext);
    bad[30] = bad[30]! ^ 0x01;
    assert.equal((await callError(c.v2, 'Decrypt', { ciphertext: bad, uid: 'hyg-tamper-d', key_id: t.key_id })).code, grpc.status.INVALID_ARGUMENT);
    assert.equal((await callError(c.v1, 'Decrypt', { version: 'v1beta1', cipher: bad })).code, grpc.status.INVALID_ARGUMENT);
    const w = await call(c.v2, 'Encrypt', { plaintext: PLAINTEXTS.wrongKeyId, uid: 'hyg-wrong' });
    assert.equal((await callError(c.v2, 'Decrypt', { ciphertext: w.ciphertext, uid: 'hyg-wrong-d', key_id: e1.key_id })).code, grpc.status.INVALID_ARGUMENT);
    const oversized = Buffer.concat(Array.from({ length: 40 }, () => PLAINTEXTS.oversized));
    assert.equal((await callError(c.v2, 'Encrypt', { plaintext: oversized, uid: 'hyg-oversized' })).code, grpc.status.INVALID_ARGUMENT);

    const m = await httpGet(plugin.healthPort!, '/metrics');
    assert.equal(m.status, 200);
    metricsBody = m.body;
    assert.match(metricsBody, /keyhaven_plugin_grpc_requests_total/);

    c.close();
    exitCode = await plugin.stop('SIGTERM');

    // CLI reads after the plugin stopped.
    for (const args of [['key', 'list'], ['key', 'list', '-o', 'json'], ['key', 'show', 'kubernetes-secrets'], ['key', 'show', 'kubernetes-secrets', '-o', 'json'], ['audit', 'verify'], ['audit', 'export']]) {
      const r = kh(args);
      assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
    }
  });

  after(() => {
    c?.close();
    if (plugin && plugin.child.exitCode === null) plugin.child.kill('SIGKILL');
    removeDir(dir);
  });

  it('the planted root key is the one in use (the flows above ran on it)', () => {
    assert.deepEqual(readFileSync(join(dir, 'root.key')), ROOT_KEY);
    const other = tempDir('kh-hygiene-other-');
    try {
      // A store is bound to its root key: another key is refused, so the planted one is what protects this store.
      writeFileSync(join(other, 'root.key'), Buffer.alloc(32, 7), { mode: 0o600 });
      const r = cli(['key', 'list', '--data-dir', dir, '--root-key-file', join(other, 'root.key')]);
      assert.equal(r.code, 78, r.stderr);
      assert.match(r.stderr, /does not match/);
    } finally {
      removeDir(other);
    }
  });

  it('SIGTERM stopped the plugin with exit 0', () => {
    assert.equal(exitCode, 0, plugin.output());
  });

  it('the plugin\'s stdout and stderr (log level trace) hold no secret, but do hold the request uids', () => {
    const out = plugin.output();
    assert.match(out, /"level":"trace"|"level":"debug"/, 'verbose logging was on');
    assert.match(out, /hyg-tamper-d/, 'the failed request is logged');
    assert.match(out, /hyg-oversized/);
    assertNoSecrets('plugin output', out);
  });

  it('no CLI output holds a secret', () => {
    assert.ok(cliOutputs.length >= 10);
    for (const [args, r] of cliOutputs) {
      assertNoSecrets(`keyhaven ${args} stdout`, r.stdout);
      assertNoSecrets(`keyhaven ${args} stderr`, r.stderr);
    }
  });

  it('the audit export holds every request but no secret', () => {
    const ex = cliOutputs.find(([a]) => a === 'audit export')![1];
    const recs = ex.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    for (const uid of ['hyg-v2', 'hyg-v2-d', 'hyg-rot', 'hyg-disabled-e', 'hyg-tamper-d', 'hyg-wrong-d']) {
      assert.ok(recs.some((r) => r.request_id === uid), `audit record for ${uid}`);
    }
    assertNoSecrets('audit export', ex.stdout);
  });

  it('/metrics holds no secret', () => {
    assertNoSecrets('/metrics', metricsBody);
  });

  it('the raw database files (keyhaven.db, -wal, -shm) hold no secret', () => {
    const files = ['keyhaven.db', 'keyhaven.db-wal', 'keyhaven.db-shm'].map((f) => join(dir, f)).filter((f) => existsSync(f));
    assert.ok(files.includes(join(dir, 'keyhaven.db')));
    for (const f of files) assertNoSecrets(f, readFileSync(f));
  });

  it('file modes: root.key 0600, keyhaven.db (and -wal/-shm) 0600, data dir 0700, socket 0600', async () => {
    assert.equal(lstatSync(join(dir, 'root.key')).mode & 0o777, 0o600);
    for (const f of ['keyhaven.db', 'keyhaven.db-wal', 'keyhaven.db-shm']) {
      if (existsSync(join(dir, f))) assert.equal(lstatSync(join(dir, f)).mode & 0o777, 0o600, f);
    }
    assert.equal(lstatSync(dir).mode & 0o777, 0o700);
    const p = await startPlugin({ dataDir: dir, socketPath: join(dir, 'modes.sock') });
    try {
      assert.equal(lstatSync(p.socket).mode & 0o777, 0o600);
      for (const f of ['keyhaven.db-wal', 'keyhaven.db-shm']) {
        if (existsSync(join(dir, f))) assert.equal(lstatSync(join(dir, f)).mode & 0o777, 0o600, `${f} while the plugin runs`);
      }
    } finally {
      await p.stop();
    }
  });

  it('--socket-mode 0660 gives the socket mode 0660', async () => {
    const p = await startPlugin({ dataDir: dir, socketPath: join(dir, 'group.sock'), extraArgs: ['--socket-mode', '0660'] });
    try {
      assert.ok(lstatSync(p.socket).isSocket());
      assert.equal(lstatSync(p.socket).mode & 0o777, 0o660);
      const c2 = kmsClients(p.socket);
      try {
        assert.equal((await call(c2.v2, 'Status', {})).healthz, 'ok');
      } finally {
        c2.close();
      }
    } finally {
      await p.stop();
    }
  });

  it('init on a fresh path creates the data dir 0700, root.key 0600 and keyhaven.db 0600 even under a permissive umask', () => {
    const parent = tempDir('kh-hygiene-fresh-');
    try {
      const fresh = join(parent, 'nested', 'store');
      mkdirSync(join(parent, 'nested'), { mode: 0o755 });
      const saved = process.umask(0o000);
      let r: CliResult;
      try {
        r = cli(['init', '--data-dir', fresh]);
      } finally {
        process.umask(saved);
      }
      assert.equal(r.code, 0, r.stderr);
      assert.equal(lstatSync(fresh).mode & 0o777, 0o700);
      assert.equal(lstatSync(join(fresh, 'root.key')).mode & 0o777, 0o600);
      assert.equal(lstatSync(join(fresh, 'root.key')).size, 32);
      assert.equal(lstatSync(join(fresh, 'keyhaven.db')).mode & 0o777, 0o600);
      assertNoSecrets('init output', r.stdout + r.stderr);
      assert.ok(!r.stdout.includes(readFileSync(join(fresh, 'root.key')).toString('hex')), 'init does not print the new root key');
      assert.ok(!r.stdout.includes(readFileSync(join(fresh, 'root.key')).toString('base64')), 'init does not print the new root key');
    } finally {
      removeDir(parent);
    }
  });
});
