import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { createServer as createNetServer, type Server as NetServer } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { PACKAGE_VERSION } from '../src/paths.js';
import { loadKmsProtos } from '../src/plugin/kms-protos.js';
import { call, cli, grpc, initStore, kmsClients, removeDir, runCli, startPlugin, tempDir, waitFor, cleanCliEnv, type CliResult, type KmsClients, type PluginProcess } from './helpers.js';

// `keyhaven plugin status`: the check an operator runs on a node, against a
// real embedded plugin process (rotation, disable), and against small gRPC
// servers on real sockets for what a keyhaven plugin never does (a plugin
// without v2, an unhealthy healthz, something that is not a KMS plugin).

const KEY = 'kubernetes-secrets';
const status = (args: string[]): Promise<CliResult> => runCli(['plugin', 'status', ...args], { env: cleanCliEnv() });

interface StubOptions {
  v2?: { version: string; healthz: string; key_id: string } | 'unimplemented';
  v1?: boolean;
}

/** A gRPC server on `address` (a path, or "\0name" for an abstract socket) serving what `opts` says. */
async function startStub(address: string, opts: StubOptions): Promise<{ close(): Promise<void> }> {
  const protos = loadKmsProtos();
  const server = new grpc.Server();
  if (opts.v2 && opts.v2 !== 'unimplemented') {
    const reply = opts.v2;
    server.addService(protos.v2.KeyManagementService.service, {
      Status: (_c: unknown, cb: grpc.sendUnaryData<unknown>) => cb(null, reply),
      Encrypt: (_c: unknown, cb: grpc.sendUnaryData<unknown>) => cb({ code: grpc.status.UNIMPLEMENTED }),
      Decrypt: (_c: unknown, cb: grpc.sendUnaryData<unknown>) => cb({ code: grpc.status.UNIMPLEMENTED }),
    });
  }
  if (opts.v1) {
    server.addService(protos.v1beta1.KeyManagementService.service, {
      Version: (_c: unknown, cb: grpc.sendUnaryData<unknown>) => cb(null, { version: 'v1beta1', runtime_name: 'stub-kms', runtime_version: '9.9.9' }),
      Encrypt: (_c: unknown, cb: grpc.sendUnaryData<unknown>) => cb({ code: grpc.status.UNIMPLEMENTED }),
      Decrypt: (_c: unknown, cb: grpc.sendUnaryData<unknown>) => cb({ code: grpc.status.UNIMPLEMENTED }),
    });
  }
  // As the plugin does for abstract sockets: a net server hands grpc-js each connection.
  const injector = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
  const listener: NetServer = createNetServer((sock) => injector.injectConnection(sock));
  await new Promise<void>((resolve, reject) => {
    listener.once('error', reject);
    listener.listen(address, () => resolve());
  });
  return {
    close: () =>
      new Promise<void>((resolve) => {
        server.forceShutdown();
        listener.close(() => resolve());
      }),
  };
}

describe('keyhaven plugin status against a real plugin', () => {
  let dir = '';
  let plugin: PluginProcess | undefined;
  let kms: KmsClients | undefined;

  before(async () => {
    dir = tempDir('kh-plugin-status-');
    initStore(dir, KEY);
    plugin = await startPlugin({ dataDir: dir });
    kms = kmsClients(plugin.socket);
  });

  after(async () => {
    kms?.close();
    await plugin?.stop();
    removeDir(dir);
  });

  it('prints version, healthz, key_id and the runtime; exits 0; -o json has the same', async () => {
    const st = await call(kms!.v2, 'Status', {});
    const text = await status(['--socket', `unix://${plugin!.socket}`]);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, /^v2 Status: +version v2, healthz ok$/m);
    assert.match(text.stdout, new RegExp(`^key_id: +${st.key_id}$`, 'm'));
    assert.match(text.stdout, new RegExp(`^runtime: +keyhaven ${PACKAGE_VERSION.replaceAll('.', '\\.')}$`, 'm'));
    assert.match(text.stdout, /^healthy: +yes$/m);
    const json = await status(['--socket', `unix://${plugin!.socket}`, '-o', 'json', '--timeout', '30s']);
    assert.equal(json.code, 0, json.stderr);
    assert.deepEqual(JSON.parse(json.stdout), {
      socket: `unix://${plugin!.socket}`,
      healthy: true,
      v2: { version: 'v2', healthz: 'ok', keyId: st.key_id },
      v1beta1: { version: 'v1beta1', runtimeName: 'keyhaven', runtimeVersion: PACKAGE_VERSION },
    });
  });

  it('after key rotate, reports the new key_id (the README step); a disabled key exits 1 with the Status error', async () => {
    const before = JSON.parse((await status(['--socket', `unix://${plugin!.socket}`, '-o', 'json'])).stdout).v2.keyId as string;
    const r = cli(['key', 'rotate', KEY, '--data-dir', dir]);
    assert.equal(r.code, 0, r.stderr);
    const after = await waitFor(async () => {
      const s = await status(['--socket', `unix://${plugin!.socket}`, '-o', 'json']);
      const id = JSON.parse(s.stdout).v2.keyId as string;
      return id !== before ? id : undefined;
    }, 'plugin status to show a new key_id');
    assert.match(after, /:2:[0-9a-f]{16}$/);

    assert.equal(cli(['key', 'disable', KEY, '--data-dir', dir]).code, 0);
    try {
      const failing = await waitFor(async () => {
        const s = await status(['--socket', `unix://${plugin!.socket}`]);
        return s.code === 1 ? s : undefined;
      }, 'plugin status to fail');
      assert.match(failing.stdout, /^v2 Status: +FAILED: FAILED_PRECONDITION: .*disabled/m);
      assert.match(failing.stdout, /^healthy: +NO/m);
      // The plugin still answers Version: it is there, Status is what fails.
      assert.match(failing.stdout, /^runtime: +keyhaven /m);
      const json = JSON.parse((await status(['--socket', `unix://${plugin!.socket}`, '-o', 'json'])).stdout);
      assert.equal(json.healthy, false);
      assert.equal(json.v2.error.code, 'FAILED_PRECONDITION');
    } finally {
      assert.equal(cli(['key', 'enable', KEY, '--data-dir', dir]).code, 0);
    }
    await waitFor(async () => ((await status(['--socket', `unix://${plugin!.socket}`])).code === 0 ? true : undefined), 'healthy again after enable');
  });
});

describe('keyhaven plugin status: other servers and bad input', () => {
  let dir = '';
  before(() => {
    dir = tempDir('kh-plugin-status-stub-');
  });
  after(() => removeDir(dir));

  it('a missing socket, a file that is not a socket and a malformed endpoint or timeout are precise errors', async () => {
    const missing = await status(['--socket', `unix://${join(dir, 'nothing.sock')}`]);
    assert.equal(missing.code, 3);
    assert.match(missing.stderr, /no socket at .*nothing\.sock: is the plugin running/);
    const file = join(dir, 'plain-file');
    writeFileSync(file, 'x');
    const notSocket = await status(['--socket', `unix://${file}`]);
    assert.equal(notSocket.code, 2);
    assert.match(notSocket.stderr, /plain-file is not a unix socket/);
    for (const [args, message] of [
      [['--socket', '/run/keyhaven/kms.sock'], /must start with unix:\/\//],
      [['--socket', 'unix://relative.sock'], /must be absolute/],
      [['--socket', 'unix:///@'], /abstract socket name .* must be 1-100 characters/],
      [['--timeout', 'soon'], /--timeout must be a duration/],
      [['--timeout', '0s'], /--timeout must be at least 1ms/],
      [['-o', 'xml'], /--output must be text, json or yaml/],
    ] as const) {
      const r = await status([...args]);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, message);
      assert.equal(r.stdout, '');
    }
  });

  it('a gRPC server without the KMS services is not a KMS plugin; a socket that never speaks gRPC times out clearly', async () => {
    const sock = join(dir, 'other.sock');
    const stub = await startStub(sock, {});
    try {
      const r = await status(['--socket', `unix://${sock}`]);
      assert.equal(r.code, 4, r.stderr);
      assert.match(r.stderr, /serves neither v2 nor v1beta1 KeyManagementService: not a KMS plugin/);
    } finally {
      await stub.close();
    }
    // Accepts connections and says nothing.
    const mute = join(dir, 'mute.sock');
    const held: import('node:net').Socket[] = [];
    const silent = createNetServer((s) => held.push(s));
    await new Promise<void>((r) => silent.listen(mute, () => r()));
    try {
      const r = await status(['--socket', `unix://${mute}`, '--timeout', '300ms']);
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /no (answer from|KMS plugin answers on) unix:\/\/.*mute\.sock/);
    } finally {
      for (const s of held) s.destroy();
      await new Promise<void>((r) => silent.close(() => r()));
    }
  });

  it('an unhealthy healthz exits 1; a v2-only plugin shows v1beta1 as not served; a v1beta1-only plugin is not healthy', async () => {
    const sock = join(dir, 'unhealthy.sock');
    let stub = await startStub(sock, { v2: { version: 'v2', healthz: 'degraded\u001b[2J', key_id: 'k-1' } });
    try {
      const r = await status(['--socket', `unix://${sock}`]);
      assert.equal(r.code, 1, r.stderr);
      // Text from the socket reaches the terminal with control characters escaped.
      assert.match(r.stdout, /healthz degraded\\u001b\[2J/);
      assert.ok(!r.stdout.includes('\u001b'));
      assert.match(r.stdout, /^v1beta1: +not served$/m);
      const json = JSON.parse((await status(['--socket', `unix://${sock}`, '-o', 'json'])).stdout);
      assert.equal(json.healthy, false);
      assert.equal(json.v1beta1, null);
    } finally {
      await stub.close();
    }
    stub = await startStub(sock, { v2: 'unimplemented', v1: true });
    try {
      const r = await status(['--socket', `unix://${sock}`, '-o', 'json']);
      assert.equal(r.code, 1, r.stderr);
      const json = JSON.parse(r.stdout);
      assert.equal(json.v2.error.code, 'UNIMPLEMENTED');
      assert.deepEqual(json.v1beta1, { version: 'v1beta1', runtimeName: 'stub-kms', runtimeVersion: '9.9.9' });
    } finally {
      await stub.close();
    }
  });

  it('an abstract socket (unix:///@name) is dialled by its name', async () => {
    const name = `kh-status-${randomBytes(6).toString('hex')}`;
    const stub = await startStub(`\0${name}`, { v2: { version: 'v2', healthz: 'ok', key_id: 'abstract-key' }, v1: true });
    try {
      const r = await status(['--socket', `unix:///@${name}`, '-o', 'json']);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(JSON.parse(r.stdout).v2.keyId, 'abstract-key');
    } finally {
      await stub.close();
    }
    const none = await status(['--socket', `unix:///@${name}`]);
    assert.equal(none.code, 1);
    assert.match(none.stderr, new RegExp(`no KMS plugin answers on unix:///@${name}`));
  });
});
