import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { initStore, logLines, removeDir, ROOT, startPlugin, tempDir, type PluginProcess } from './helpers.js';
import { requireDependency } from './require.js';

// The same flows driven by a gRPC client keyhaven did not write: `buf curl`
// (Go, grpc-go's wire format) from the npm package @bufbuild/buf.
const BUF = join(ROOT, 'node_modules', '.bin', 'buf');

interface BufResult {
  code: number;
  json: any;
  stderr: string;
}

function buf(socket: string, api: 'v2' | 'v1beta1', method: string, body: unknown): BufResult {
  const r = spawnSync(
    BUF,
    [
      'curl', '--protocol', 'grpc', '--http2-prior-knowledge',
      '--unix-socket', socket,
      '--schema', join(ROOT, 'proto', api, 'api.proto'),
      '-d', JSON.stringify(body),
      `http://localhost/${api}.KeyManagementService/${method}`,
    ],
    { encoding: 'utf8', timeout: 60_000 },
  );
  let json: any;
  try {
    json = r.stdout.trim() ? JSON.parse(r.stdout) : undefined;
  } catch {
    json = undefined;
  }
  return { code: r.status ?? -1, json, stderr: r.stderr };
}

async function waitForListening(p: PluginProcess): Promise<'listening' | 'exited'> {
  for (;;) {
    if (logLines(p.output()).some((l) => l.msg === 'kms plugin listening')) return 'listening';
    if (p.child.exitCode !== null || p.child.signalCode !== null) return 'exited';
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe('external gRPC client: buf curl over the unix socket', () => {
  let dir: string;
  let plugin: PluginProcess;

  before(async (t) => {
    if (!requireDependency(t as never, existsSync(BUF), 'buf (npm package @bufbuild/buf) is not installed')) return;
    dir = tempDir();
    initStore(dir);
    plugin = await startPlugin({ dataDir: dir });
  });

  after(async () => {
    await plugin?.stop();
    if (dir) removeDir(dir);
  });

  it('v2 Status, Encrypt and Decrypt round trip', () => {
    const s = buf(plugin.socket, 'v2', 'Status', {});
    assert.equal(s.code, 0, s.stderr);
    assert.equal(s.json.version, 'v2');
    assert.equal(s.json.healthz, 'ok');
    const seed = randomBytes(32);
    const e = buf(plugin.socket, 'v2', 'Encrypt', { plaintext: seed.toString('base64'), uid: 'buf-encrypt' });
    assert.equal(e.code, 0, e.stderr);
    assert.equal(e.json.keyId, s.json.keyId);
    assert.ok(Buffer.from(e.json.ciphertext, 'base64').length <= 1024);
    const d = buf(plugin.socket, 'v2', 'Decrypt', { ciphertext: e.json.ciphertext, uid: 'buf-decrypt', keyId: e.json.keyId });
    assert.equal(d.code, 0, d.stderr);
    assert.equal(d.json.plaintext, seed.toString('base64'));
  });

  it('v1beta1 Version, Encrypt and Decrypt on the same socket', () => {
    const v = buf(plugin.socket, 'v1beta1', 'Version', { version: 'v1beta1' });
    assert.equal(v.code, 0, v.stderr);
    assert.equal(v.json.version, 'v1beta1');
    assert.equal(v.json.runtimeName, 'keyhaven');
    const dek = randomBytes(32);
    const e = buf(plugin.socket, 'v1beta1', 'Encrypt', { version: 'v1beta1', plain: dek.toString('base64') });
    assert.equal(e.code, 0, e.stderr);
    const d = buf(plugin.socket, 'v1beta1', 'Decrypt', { version: 'v1beta1', cipher: e.json.cipher });
    assert.equal(d.code, 0, d.stderr);
    assert.equal(d.json.plain, dek.toString('base64'));
  });

  it('bad input gets a clear gRPC error and the plugin keeps serving', () => {
    const empty = buf(plugin.socket, 'v2', 'Encrypt', { plaintext: '', uid: 'buf-empty' });
    assert.notEqual(empty.code, 0);
    assert.match(empty.stderr, /invalid_argument/);
    assert.match(empty.stderr, /plaintext is empty/);
    const unknown = buf(plugin.socket, 'v2', 'Decrypt', { ciphertext: randomBytes(73).toString('base64'), uid: 'buf-unknown', keyId: 'not-a-keyhaven-key-id' });
    assert.notEqual(unknown.code, 0);
    assert.match(unknown.stderr, /not_found/);
    assert.match(unknown.stderr, /was not issued by keyhaven/);
    assert.equal(buf(plugin.socket, 'v2', 'Status', {}).code, 0);
  });

  it('an abstract socket (unix:///@name): served exactly, or refused at start-up where Node.js pads the name', async (t) => {
    if (!requireDependency(t, existsSync(BUF), 'buf is not installed')) return;
    const adir = tempDir();
    const name = `keyhaven-test-${process.pid}-${Date.now()}`;
    initStore(adir);
    const command = ['plugin', '--socket', `unix:///@${name}`, '--data-dir', adir, '--health-addr', 'off', '--log-level', 'info'];
    const p = await startPlugin({ dataDir: adir, command, waitReady: false });
    try {
      const state = await waitForListening(p);
      const code = state === 'listening' ? state : await p.exited;
      if (code === 'listening') {
        const seed = randomBytes(32);
        const e = buf(`@${name}`, 'v2', 'Encrypt', { plaintext: seed.toString('base64'), uid: 'abstract' });
        assert.equal(e.code, 0, e.stderr);
        const d = buf(`@${name}`, 'v2', 'Decrypt', { ciphertext: e.json.ciphertext, uid: 'abstract-d', keyId: e.json.keyId });
        assert.equal(d.json.plaintext, seed.toString('base64'));
        assert.equal(await p.stop(), 0);
      } else {
        // Node.js 20 pads abstract names (nodejs/node#50889): a Go client could never connect, so start-up must fail clearly.
        assert.equal(code, 78, p.output());
        assert.match(p.output(), /pads abstract socket names/);
      }
    } finally {
      await p.stop();
      removeDir(adir);
    }
  });
});
