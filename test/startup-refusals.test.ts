import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, lstatSync, readdirSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { BIN, call, cli, initStore, kmsClients, removeDir, ROOT, startPlugin, tempDir, type CliResult } from './helpers.js';

// The plugin and the CLI refuse unusable configuration and bad usage at start:
// a non-zero exit (78 = EX_CONFIG for configuration), a message that says
// what is wrong, and nothing on disk changed. One end-to-end case per class;
// the per-field cases run in-process beside the code that refuses them
// (src/config/plugin-config.test.ts, src/seal/keyfile.test.ts).

/** Runs `keyhaven ARGS` expecting it to exit by itself; a plugin that starts serving is killed after 60 s (a cap for that failure only). */
function run(args: string[]): CliResult {
  const r = spawnSync(process.execPath, [BIN, ...args], { cwd: ROOT, encoding: 'utf8', timeout: 60_000, killSignal: 'SIGKILL' });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** The plugin on DIR with a socket inside DIR and an ephemeral health port, plus extra flags. */
function plugin(dir: string, ...extra: string[]): CliResult {
  return run(['plugin', '--socket', `unix://${join(dir, 'kms.sock')}`, '--data-dir', dir, '--health-addr', '127.0.0.1:0', ...extra]);
}

/** Name → mode + sha256 of every entry in a folder: equal snapshots mean nothing was created, removed or modified. */
function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    const st = lstatSync(p);
    const mode = (st.mode & 0o777).toString(8);
    out[name] = st.isFile() ? `${mode} ${createHash('sha256').update(readFileSync(p)).digest('hex')}` : `${mode} ${st.isSocket() ? 'socket' : st.isDirectory() ? 'dir' : 'other'}`;
  }
  return out;
}

function assertRefused(r: CliResult, code: number, message: RegExp): void {
  assert.match(r.stderr, message, `stderr: ${r.stderr}\nstdout: ${r.stdout}`);
  assert.equal(r.code, code, `exit code; stderr: ${r.stderr}`);
  assert.doesNotMatch(r.stderr, /unexpected error|at .*\.js:\d+/, 'a refusal is a message, not a stack trace');
  assert.doesNotMatch(r.stdout, /kms plugin listening/, 'the plugin must not start serving');
}

describe('start-up refusals: root key file', () => {
  let dir: string;

  before(() => {
    dir = tempDir('kh-refuse-');
  });
  after(() => removeDir(dir));

  const fresh = (name: string): string => {
    const d = join(dir, name);
    initStore(d);
    return d;
  };

  // Every other size: src/seal/keyfile.test.ts.
  for (const size of [31]) {
    it(`a root key file of ${size} bytes is refused (78), the file and database are untouched`, () => {
      const d = fresh(`size-${size}`);
      writeFileSync(join(d, 'root.key'), randomBytes(size), { mode: 0o600 });
      chmodSync(join(d, 'root.key'), 0o600);
      const before = snapshot(d);
      const r = plugin(d);
      assertRefused(r, 78, new RegExp(`root key file .*root\\.key must hold exactly 32 bytes, found ${size}`));
      assert.deepEqual(snapshot(d), before);
    });
  }

  // Every other mode: src/seal/keyfile.test.ts.
  for (const mode of [0o644]) {
    const m = mode.toString(8).padStart(4, '0');
    it(`a root key file with mode ${m} is refused (78) and left as it is`, () => {
      const d = fresh(`mode-${m}`);
      chmodSync(join(d, 'root.key'), mode);
      const before = snapshot(d);
      const r = plugin(d);
      assertRefused(r, 78, new RegExp(`root key file .*root\\.key has mode ${m}: it must not be accessible by group or others`));
      assert.match(r.stderr, /chmod 600/);
      assert.deepEqual(snapshot(d), before);
      assert.equal(lstatSync(join(d, 'root.key')).mode & 0o777, mode);
    });
  }

  it('a missing root key file beside an existing database is refused (78); no new root key is made', () => {
    const d = fresh('missing');
    unlinkSync(join(d, 'root.key'));
    const before = snapshot(d);
    const r = plugin(d);
    assertRefused(r, 78, /root key file .*root\.key does not exist/);
    assert.deepEqual(snapshot(d), before);
    assert.equal(existsSync(join(d, 'root.key')), false);
    // init must not "repair" it with a new key either: that would orphan every key in the database.
    const i = run(['init', '--data-dir', d]);
    assert.notEqual(i.code, 0, i.stdout);
    assert.match(i.stderr, /root key file .* does not exist/);
    assert.deepEqual(snapshot(d), before);
  });

  it('another store\'s root key is refused (78): "does not match"; both stores untouched', () => {
    const d = fresh('wrong-a');
    const other = fresh('wrong-b');
    const beforeA = snapshot(d);
    const beforeB = snapshot(other);
    const r = plugin(d, '--root-key-file', join(other, 'root.key'));
    assertRefused(r, 78, /root key does not match this database/);
    assert.deepEqual(snapshot(d), beforeA);
    assert.deepEqual(snapshot(other), beforeB);
    // The same with the other store's key copied in place.
    writeFileSync(join(d, 'root.key'), readFileSync(join(other, 'root.key')), { mode: 0o600 });
    const copied = snapshot(d);
    assertRefused(plugin(d), 78, /root key does not match this database/);
    assert.deepEqual(snapshot(d), copied);
  });

  it('a data dir without a store is refused (78) and stays empty; a missing one is not created', () => {
    const d = join(dir, 'does-not-exist');
    // An empty folder.
    const empty = tempDir('kh-refuse-empty-');
    try {
      const r = plugin(empty);
      assertRefused(r, 78, new RegExp(`no key store at ${empty.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}.*keyhaven init`));
      assert.deepEqual(readdirSync(empty), []);
    } finally {
      removeDir(empty);
    }
    // A folder that does not exist.
    const r = run(['plugin', '--socket', `unix://${join(dir, 'nodir.sock')}`, '--data-dir', d, '--health-addr', '127.0.0.1:0']);
    assertRefused(r, 78, /no key store at/);
    assert.equal(existsSync(d), false);
    assert.equal(existsSync(join(dir, 'nodir.sock')), false);
  });
});

describe('start-up refusals: plugin.yaml', () => {
  let dir: string;
  let confDir: string;
  let before0: Record<string, string>;

  before(() => {
    dir = tempDir('kh-refuse-yaml-');
    confDir = tempDir('kh-refuse-conf-');
    initStore(dir);
    before0 = snapshot(dir);
  });
  after(() => {
    removeDir(dir);
    removeDir(confDir);
  });

  // One bad field and one bad YAML end to end; every field, type and YAML
  // case (with the same flags) in src/config/plugin-config.test.ts.
  const cases: Array<[string, string, RegExp]> = [
    ['an unknown nested field', 'status:\n  cacheTtl: 5s\n', /status: Unrecognized key.*"cacheTtl"/],
    ['invalid YAML', 'status: [unclosed\n', /is not valid YAML/],
  ];
  for (const [what, text, message] of cases) {
    it(`${what} is refused (78) naming the file and the field`, () => {
      const file = join(confDir, `${what.replace(/\W+/g, '-')}.yaml`);
      writeFileSync(file, text);
      const r = plugin(dir, '--config', file);
      assertRefused(r, 78, message);
      assert.ok(r.stderr.includes(file), `stderr names ${file}: ${r.stderr}`);
      assert.deepEqual(snapshot(dir), before0);
    });
  }

  it('a missing config file is refused (78) naming it', () => {
    const file = join(confDir, 'missing.yaml');
    const r = plugin(dir, '--config', file);
    assertRefused(r, 78, new RegExp(`cannot read config file ${file.replace(/[.]/g, '\\.')}: ENOENT`));
    assert.deepEqual(snapshot(dir), before0);
  });

  it('--socket tcp://127.0.0.1:1 is refused as configuration (78): the socket must be unix://', () => {
    const r = run(['plugin', '--socket', 'tcp://127.0.0.1:1', '--data-dir', dir, '--health-addr', '127.0.0.1:0']);
    assertRefused(r, 78, /socket: must be unix:\/\/\/absolute\/path\.sock or unix:\/\/\/@abstract-name/);
    assert.deepEqual(snapshot(dir), before0);
  });
});

describe('start-up refusals: socket and health address', () => {
  let dir: string;

  before(() => {
    dir = tempDir('kh-refuse-sock-');
    initStore(dir);
  });
  after(() => removeDir(dir));

  it('a regular file at the socket path is refused (78) and left untouched', () => {
    const path = join(dir, 'kms.sock');
    const content = `precious ${randomBytes(8).toString('hex')}\n`;
    writeFileSync(path, content, { mode: 0o640 });
    try {
      const r = plugin(dir);
      assertRefused(r, 78, /kms\.sock exists and is not a socket; refusing to replace it/);
      assert.equal(readFileSync(path, 'utf8'), content);
      assert.ok(lstatSync(path).isFile());
      assert.equal(lstatSync(path).mode & 0o777, 0o640);
    } finally {
      unlinkSync(path);
    }
  });

  it('a socket path another live plugin serves is refused (78); the live plugin keeps its socket and keeps serving', async () => {
    const live = await startPlugin({ dataDir: dir, socketPath: join(dir, 'live.sock') });
    try {
      const ino = lstatSync(live.socket).ino;
      const r = run(['plugin', '--socket', `unix://${live.socket}`, '--data-dir', dir, '--health-addr', '127.0.0.1:0']);
      assertRefused(r, 78, /another process is already serving on .*live\.sock/);
      assert.equal(live.child.exitCode, null, 'the live plugin is still running');
      assert.ok(existsSync(live.socket), 'the refused start must not remove the live plugin\'s socket file');
      assert.equal(lstatSync(live.socket).ino, ino, 'the live plugin\'s socket file is the same one');
      // A new connection (as kube-apiserver makes after a restart) still reaches the live plugin.
      const c = kmsClients(live.socket);
      try {
        const s = await call(c.v2, 'Status', {});
        assert.equal(s.healthz, 'ok');
      } finally {
        c.close();
      }
    } finally {
      await live.stop();
    }
  });

  it('a health address already in use is refused (78) naming it; the socket it bound is removed', async () => {
    const squatter = createServer();
    await new Promise<void>((resolve) => squatter.listen(0, '127.0.0.1', () => resolve()));
    const port = (squatter.address() as { port: number }).port;
    const rootKey = readFileSync(join(dir, 'root.key'));
    try {
      const sock = join(dir, 'health.sock');
      const r = run(['plugin', '--socket', `unix://${sock}`, '--data-dir', dir, '--health-addr', `127.0.0.1:${port}`]);
      assertRefused(r, 78, new RegExp(`cannot listen for health on 127\\.0\\.0\\.1:${port}: EADDRINUSE`));
      assert.equal(existsSync(sock), false, 'no socket file is left behind');
      assert.deepEqual(readFileSync(join(dir, 'root.key')), rootKey);
    } finally {
      await new Promise<void>((resolve) => squatter.close(() => resolve()));
    }
  });
});

describe('CLI garbage', () => {
  let dir: string;

  before(() => {
    dir = tempDir('kh-cli-');
    initStore(dir);
  });
  after(() => removeDir(dir));

  const keyJson = (name = 'kubernetes-secrets') => {
    const r = cli(['key', 'show', name, '-o', 'json', '--data-dir', dir]);
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout) as { currentVersion: number; versions: Array<{ version: number; state: string }> };
  };
  const keyNames = () => {
    const r = cli(['key', 'list', '-o', 'json', '--data-dir', dir]);
    assert.equal(r.code, 0, r.stderr);
    return (JSON.parse(r.stdout) as { keys: Array<{ name: string }> }).keys.map((k) => k.name).sort();
  };

  it('an unknown command exits 2 naming it', () => {
    const r = cli(['frobnicate', '--data-dir', dir]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /unknown command 'frobnicate'/);
  });

  it('an unknown subcommand and an unknown option exit 2', () => {
    const sub = cli(['key', 'explode', 'kubernetes-secrets', '--data-dir', dir]);
    assert.equal(sub.code, 2, sub.stderr);
    assert.match(sub.stderr, /unknown command 'explode'/);
    const opt = cli(['key', 'list', '--data-dir', dir, '--frobnicate']);
    assert.equal(opt.code, 2, opt.stderr);
    assert.match(opt.stderr, /unknown option '--frobnicate'/);
  });

  it('key destroy-version NAME notanumber --yes exits 2; nothing is destroyed', () => {
    assert.equal(cli(['key', 'rotate', 'kubernetes-secrets', '--data-dir', dir]).code, 0);
    const before = keyJson();
    for (const v of ['notanumber', '0', '1.5', '1e3', '99999999999']) {
      const r = cli(['key', 'destroy-version', 'kubernetes-secrets', v, '--yes', '--data-dir', dir]);
      assert.equal(r.code, 2, `${v}: ${r.stderr}`);
      assert.match(r.stderr, /version must be a positive integer/, v);
    }
    assert.deepEqual(keyJson(), before);
  });

  it('key destroy-version without --yes exits 2 and the version is not destroyed', () => {
    const k = keyJson();
    assert.ok(k.currentVersion >= 2, 'version 1 is not current, so it could be destroyed');
    const r = cli(['key', 'destroy-version', 'kubernetes-secrets', '1', '--data-dir', dir]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /irreversible.*--yes/);
    assert.equal(keyJson().versions.find((v) => v.version === 1)?.state, 'active');
  });

  it('key rotate on a missing key exits 3 naming the key; nothing is created', () => {
    const before = keyNames();
    const r = cli(['key', 'rotate', 'no-such-key', '--data-dir', dir]);
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stderr, /key "no-such-key" does not exist/);
    assert.deepEqual(keyNames(), before);
  });

  it("key create 'bad name!' exits 2 explaining the rule; nothing is created", () => {
    const before = keyNames();
    const r = cli(['key', 'create', 'bad name!', '--data-dir', dir]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /key name must be 1-128 characters of letters, digits/);
    assert.deepEqual(keyNames(), before);
  });
});

describe('stopping', () => {
  it('SIGTERM stops the plugin (exit 0) even when whoever read its output has gone away', async () => {
    // A log pipe that closes as the plugin is told to stop (journald restarting,
    // a `| tee` killed, a supervisor that closes its end): the pending log line
    // fails with EPIPE; the plugin must still exit rather than spin forever.
    const dir = tempDir('kh-stop-');
    try {
      initStore(dir);
      const p = await startPlugin({ dataDir: dir });
      p.child.stdout!.destroy();
      p.child.stderr!.destroy();
      p.child.kill('SIGTERM');
      let hung = false;
      const guard = setTimeout(() => {
        hung = true;
        p.child.kill('SIGKILL');
      }, 30_000);
      const code = await p.exited;
      clearTimeout(guard);
      assert.equal(hung, false, 'the plugin ignored SIGTERM for 30 s and had to be killed');
      assert.equal(code, 0);
      assert.equal(existsSync(p.socket), false, 'socket removed');
    } finally {
      removeDir(dir);
    }
  });
});
