import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, lstatSync, readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { before, describe, it, type TestContext } from 'node:test';
import { call, kmsClients, logLines, ROOT, runCommand } from './helpers.js';
import { ownedTempDir, spawnOwned } from './reaper.js';
import { requireDependency } from './require.js';

// The Debian package (scripts/package-deb.mjs, npm run package:deb): built
// from this checkout's build, inspected with dpkg-deb, and its files run.
// Installing it with dpkg changes the machine (an account, /etc, /usr), so
// that part runs only where KEYHAVEN_TEST_DPKG_INSTALL=1 says the machine is
// throwaway (.ci/run); elsewhere the package is unpacked into a temp folder.

const DPKG_DEB = spawnSync('dpkg-deb', ['--version'], { stdio: 'ignore' }).status === 0;
const WHY = 'dpkg-deb (Debian package dpkg)';
const INSTALL = process.env.KEYHAVEN_TEST_DPKG_INSTALL === '1';
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };

const run = runCommand;

async function ok(command: string, args: string[], opts?: { env?: NodeJS.ProcessEnv; cwd?: string }): Promise<string> {
  const r = await run(command, args, opts);
  assert.equal(r.code, 0, `${command} ${args.join(' ')} exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r.stdout;
}

/** An environment without KEYHAVEN_* settings, with a PATH that has no node_modules/.bin. */
function plainEnv(): NodeJS.ProcessEnv {
  return { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', HOME: process.env.HOME ?? '/root' };
}

/**
 * `keyhaven init` then `keyhaven plugin` from `bin` (an installed or unpacked
 * /usr/bin/keyhaven), run from a folder that is not the checkout so nothing
 * resolves from its node_modules; answers Status over gRPC.
 */
async function pluginFrom(t: TestContext, bin: string): Promise<void> {
  const dir = ownedTempDir('kh-deb-plugin-', t);
  const dataDir = join(dir, 'data');
  await ok(bin, ['init', '--data-dir', dataDir, '--key', 'kubernetes-secrets'], { env: plainEnv(), cwd: dir });
  const socket = join(dir, 'kms.sock');
  const child = spawnOwned(bin, ['plugin', '--socket', `unix://${socket}`, '--data-dir', dataDir, '--health-addr', 'off'], {
    cwd: dir,
    env: plainEnv(),
    stdio: ['ignore', 'pipe', 'pipe'],
    t,
  });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  // A cap for a hung start only.
  const deadline = Date.now() + 60_000;
  while (!logLines(out).some((l) => l.msg === 'kms plugin listening')) {
    if (child.exitCode !== null) assert.fail(`plugin exited with ${child.exitCode} before it was ready:\n${out}`);
    if (Date.now() > deadline) assert.fail(`plugin did not become ready in 60 s:\n${out}`);
    await new Promise((r) => setTimeout(r, 25));
  }
  const kms = kmsClients(socket);
  try {
    const status = await call(kms.v2, 'Status', {});
    assert.equal(status.healthz, 'ok');
    assert.equal(status.version, 'v2');
    assert.match(String(status.key_id), /\S/);
  } finally {
    kms.close();
  }
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await exited;
}

describe('the Debian package', () => {
  let deb = '';
  let contents: string[] = [];
  let unpacked = '';

  before(async () => {
    if (!DPKG_DEB) return;
    const out = ownedTempDir('kh-deb-');
    const built = await ok(process.execPath, [join(ROOT, 'scripts', 'package-deb.mjs'), '--out', out]);
    const arch = (await ok('dpkg', ['--print-architecture'])).trim();
    deb = join(out, `keyhaven_${pkg.version.replace('-', '~')}_${arch}.deb`);
    assert.ok(built.startsWith(deb), `package-deb printed ${built}`);
    assert.deepEqual(readdirSync(out), [`keyhaven_${pkg.version.replace('-', '~')}_${arch}.deb`], 'the staging folder is removed');
    contents = (await ok('dpkg-deb', ['-c', deb])).split('\n').filter(Boolean);
    unpacked = join(out, 'root');
    await ok('dpkg-deb', ['-x', deb, unpacked]);
  });

  /** `dpkg-deb -c`'s line for a path (./usr/bin/keyhaven), split: mode, owner, size, date, time, path[, ->, target]. */
  function entry(path: string): string[] {
    const line = contents.find((l) => l.split(/\s+/)[5] === path);
    assert.ok(line, `${path} is not in the package`);
    return line.split(/\s+/);
  }

  it('has control fields that say what it needs: nodejs of the major its native modules were built for', async (t) => {
    if (!requireDependency(t, DPKG_DEB, WHY)) return;
    const field = async (name: string) => (await ok('dpkg-deb', ['-f', deb, name])).trim();
    assert.equal(await field('Package'), 'keyhaven');
    assert.equal(await field('Version'), pkg.version.replace('-', '~'));
    assert.equal(await field('Architecture'), (await ok('dpkg', ['--print-architecture'])).trim());
    const major = Number(process.versions.node.split('.')[0]);
    assert.match(await field('Depends'), new RegExp(`^nodejs \\(>= ${major === 20 ? '20\\.18\\.1' : major}\\), nodejs \\(<< ${major + 1}\\), passwd$`));
    assert.match(await field('Maintainer'), /^.+ <.+@.+>$/);
    assert.ok(Number(await field('Installed-Size')) > 1000);
    const info = await ok('dpkg-deb', ['-I', deb]);
    for (const script of ['postinst', 'prerm', 'postrm']) assert.match(info, new RegExp(`\\d+ bytes,\\s+\\d+ lines\\s+\\*\\s+${script}\\s+#!/bin/sh`));
    // No conffiles: configuration is the operator's, from the examples.
    assert.doesNotMatch(info, /conffiles/);
  });

  it('installs the runtime under /usr/lib/keyhaven, /usr/bin/keyhaven, the units, sysusers and tmpfiles, owned by root', (t) => {
    if (!requireDependency(t, DPKG_DEB, WHY)) return;
    for (const l of contents) assert.equal(l.split(/\s+/)[1], 'root/root', l);
    assert.deepEqual(entry('./usr/bin/keyhaven').slice(0, 1).concat(entry('./usr/bin/keyhaven').slice(6)), ['lrwxrwxrwx', '->', '../lib/keyhaven/bin/keyhaven']);
    assert.equal(entry('./usr/lib/keyhaven/bin/keyhaven')[0], '-rwxr-xr-x');
    for (const f of [
      './usr/lib/keyhaven/dist/bundle/main.js',
      './usr/lib/keyhaven/package.json',
      './usr/lib/keyhaven/LICENSE',
      './usr/lib/keyhaven/node_modules/better-sqlite3/build/Release/better_sqlite3.node',
      './usr/lib/keyhaven/node_modules/bindings/package.json',
      './usr/lib/keyhaven/node_modules/file-uri-to-path/package.json',
      './lib/systemd/system/keyhaven-plugin.service',
      './lib/systemd/system/keyhaven-server.service',
      './usr/lib/sysusers.d/keyhaven.conf',
      './usr/lib/tmpfiles.d/keyhaven.conf',
      './usr/share/doc/keyhaven/copyright',
      './usr/share/doc/keyhaven/examples/plugin.yaml',
      './usr/share/doc/keyhaven/examples/plugin-remote.yaml',
      './usr/share/doc/keyhaven/examples/server.yaml',
      './usr/share/doc/keyhaven/examples/keyhaven-plugin.service.d/remote.conf',
    ]) {
      assert.equal(entry(f)[0], '-rw-r--r--', f);
    }
    for (const l of contents.filter((c) => c.startsWith('d'))) assert.equal(l.split(/\s+/)[0], 'drwxr-xr-x', l);
    const paths = contents.map((l) => l.split(/\s+/)[5]!);
    // Nothing in /etc (the folders come from tmpfiles.d, the config from the examples); no compiled tsc tree,
    // no tests, no build input of the native module, no drop-in that would lift the plugin's network limit.
    assert.deepEqual(paths.filter((p) => p.startsWith('./etc/')), []);
    assert.deepEqual(paths.filter((p) => /\/dist\/src\/|\.test\.js$|\/better-sqlite3\/(deps|src)\/|\.service\.d\//.test(p) && !p.includes('/examples/')), []);
    assert.ok(!paths.some((p) => p.includes('/node_modules/prebuild-install/')), 'an install-time package is left out');
  });

  it('runs the packaged units from /usr/bin/keyhaven and declares the account and folders with the right modes', (t) => {
    if (!requireDependency(t, DPKG_DEB, WHY)) return;
    for (const unit of ['keyhaven-plugin.service', 'keyhaven-server.service']) {
      const text = readFileSync(join(unpacked, 'lib', 'systemd', 'system', unit), 'utf8');
      assert.match(text, /^ExecStart=\/usr\/bin\/keyhaven (plugin|server) --config \/etc\/keyhaven\/(plugin|server)\.yaml$/m);
      assert.doesNotMatch(text, /\/usr\/local\/bin/);
      // The rest is deploy/'s unit as it is.
      assert.equal(text, readFileSync(join(ROOT, 'deploy', unit), 'utf8').replaceAll('/usr/local/bin/keyhaven', '/usr/bin/keyhaven'));
    }
    const sysusers = readFileSync(join(unpacked, 'usr', 'lib', 'sysusers.d', 'keyhaven.conf'), 'utf8');
    assert.match(sysusers, /^u keyhaven - "[^"]+" \/var\/lib\/keyhaven \/usr\/sbin\/nologin$/m);
    const tmpfiles = readFileSync(join(unpacked, 'usr', 'lib', 'tmpfiles.d', 'keyhaven.conf'), 'utf8');
    assert.match(tmpfiles, /^d \/etc\/keyhaven 0750 root keyhaven -$/m);
    assert.match(tmpfiles, /^d \/var\/lib\/keyhaven 0700 keyhaven keyhaven -$/m);
  });

  it('has maintainer scripts that parse, and a postrm that never deletes keys', async (t) => {
    if (!requireDependency(t, DPKG_DEB, WHY)) return;
    const control = join(ownedTempDir('kh-deb-control-', t), 'DEBIAN');
    await ok('dpkg-deb', ['-e', deb, control]);
    for (const s of ['postinst', 'prerm', 'postrm']) {
      assert.equal(statSync(join(control, s)).mode & 0o777, 0o755, s);
      await ok('sh', ['-n', join(control, s)]);
    }
    const postinst = readFileSync(join(control, 'postinst'), 'utf8');
    assert.match(postinst, /systemd-sysusers keyhaven\.conf/);
    assert.match(postinst, /systemd-tmpfiles --create keyhaven\.conf/);
    assert.match(postinst, /systemctl daemon-reload/);
    assert.doesNotMatch(postinst, /systemctl (enable|start)/);
    const postrm = readFileSync(join(control, 'postrm'), 'utf8');
    assert.doesNotMatch(postrm, /rm -r|rm -f|userdel|deluser/);
  });

  it('refuses an unknown argument to the build script, naming it', async () => {
    const r = await run(process.execPath, [join(ROOT, 'scripts', 'package-deb.mjs'), '--outdir', '/tmp']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^package-deb: unknown argument "--outdir" \(usage: package-deb\.mjs \[--out <dir>\]\)\n$/);
  });

  it('runs --version and a plugin from the unpacked files alone', async (t) => {
    if (!requireDependency(t, DPKG_DEB, WHY)) return;
    const bin = join(unpacked, 'usr', 'bin', 'keyhaven');
    assert.ok(lstatSync(bin).isSymbolicLink());
    assert.equal(readlinkSync(bin), '../lib/keyhaven/bin/keyhaven');
    assert.equal((await ok(bin, ['--version'], { env: plainEnv(), cwd: unpacked })).trim(), pkg.version);
    await pluginFrom(t, bin);
  });

  it('installs with dpkg -i, runs, and is gone after dpkg --purge (KEYHAVEN_TEST_DPKG_INSTALL=1 only)', async (t) => {
    if (!requireDependency(t, DPKG_DEB, WHY)) return;
    if (!INSTALL) {
      t.skip('changes this machine: set KEYHAVEN_TEST_DPKG_INSTALL=1 on a throwaway one (.ci/run does)');
      return;
    }
    const hadState = existsSync('/var/lib/keyhaven');
    await ok('dpkg', ['-i', deb]);
    try {
      assert.equal((await ok('/usr/bin/keyhaven', ['--version'], { env: plainEnv(), cwd: '/' })).trim(), pkg.version);
      const passwd = (await ok('getent', ['passwd', 'keyhaven'])).trim().split(':');
      assert.equal(passwd[5], '/var/lib/keyhaven');
      assert.equal(passwd[6], '/usr/sbin/nologin');
      const group = (await ok('getent', ['group', 'keyhaven'])).trim().split(':');
      const etc = statSync('/etc/keyhaven');
      assert.equal(etc.mode & 0o7777, 0o750);
      assert.deepEqual([etc.uid, etc.gid], [0, Number(group[2])]);
      const state = statSync('/var/lib/keyhaven');
      assert.equal(state.mode & 0o7777, 0o700);
      assert.deepEqual([state.uid, state.gid], [Number(passwd[2]), Number(group[2])]);
      await pluginFrom(t, '/usr/bin/keyhaven');
    } finally {
      await ok('dpkg', ['--purge', 'keyhaven']);
    }
    assert.notEqual((await run('dpkg-query', ['-W', 'keyhaven'])).code, 0, 'dpkg still knows keyhaven');
    for (const p of ['/usr/bin/keyhaven', '/usr/lib/keyhaven', '/lib/systemd/system/keyhaven-plugin.service', '/usr/lib/sysusers.d/keyhaven.conf']) {
      assert.ok(!existsSync(p), `${p} is left after purge`);
    }
    // Empty, so removed; a folder with keys in it would have been kept.
    if (!hadState) assert.ok(!existsSync('/var/lib/keyhaven'), '/var/lib/keyhaven (empty) is left after purge');
  });
});
