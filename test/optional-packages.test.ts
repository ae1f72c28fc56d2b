import assert from 'node:assert/strict';
import { cpSync, existsSync, mkdirSync, readdirSync, realpathSync, symlinkSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { runCommand, type CliResult } from './helpers.js';
import { ownedTempDir, spawnOwned } from './reaper.js';

// pkcs11js and @aws-sdk/client-kms are optionalDependencies: an install can
// lack them (no compiler for pkcs11js, `npm ci --omit=optional`). This lays
// out such an install for real — a copy of the built package beside a
// node_modules holding every installed package except those two — and runs
// its bin/keyhaven: what does not need them works, and a config that needs
// one fails with the package to install. Both the tsc output and, when it is
// built, the bundle (which keeps the two external) are checked.

const ROOT = resolve(fileURLToPath(new URL('../../', import.meta.url)));
const LEFT_OUT = ['pkcs11js', '@aws-sdk/client-kms'];

/** A package folder without the optional packages; `build` is the dist/ subfolder to copy (src or bundle). */
function layOut(build: 'src' | 'bundle'): string {
  const dir = ownedTempDir('kh-optional-');
  const app = join(dir, 'app');
  mkdirSync(join(app, 'dist'), { recursive: true });
  for (const f of ['bin', 'proto', 'package.json']) cpSync(join(ROOT, f), join(app, f), { recursive: true });
  cpSync(join(ROOT, 'dist', build), join(app, 'dist', build), { recursive: true });
  // Links, not copies: a linked package resolves its own dependencies from
  // where it really is, and anything missing from this folder is missing.
  const real = realpathSync(join(ROOT, 'node_modules'));
  const nm = join(app, 'node_modules');
  mkdirSync(nm);
  for (const name of readdirSync(real)) {
    if (name.startsWith('.') || LEFT_OUT.includes(name)) continue;
    if (name.startsWith('@')) {
      mkdirSync(join(nm, name));
      for (const sub of readdirSync(join(real, name))) {
        if (!LEFT_OUT.includes(`${name}/${sub}`)) symlinkSync(join(real, name, sub), join(nm, name, sub));
      }
    } else {
      symlinkSync(join(real, name), join(nm, name));
    }
  }
  for (const p of LEFT_OUT) assert.ok(!existsSync(join(nm, p)));
  return dir;
}

function run(dir: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  return runCommand(process.execPath, [join(dir, 'app', 'bin', 'keyhaven'), ...args], { cwd: dir, env: { ...process.env, ...env } });
}

/** A server on 127.0.0.1:0; resolves with its URL once it listens, and a stop function. */
function startServer(dir: string, config: string, env: NodeJS.ProcessEnv): Promise<{ url: string; stop: () => void }> {
  return new Promise((res, rej) => {
    const child = spawnOwned(process.execPath, [join(dir, 'app', 'bin', 'keyhaven'), 'server', '--config', config], { cwd: dir, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    const stop = () => child.kill('SIGKILL');
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      const m = /"url":"(http:\/\/127\.0\.0\.1:\d+)"[^\n]*"msg":"keyhaven server listening"/.exec(out);
      if (m) res({ url: m[1]!, stop });
    });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.on('error', rej);
    child.on('close', (code) => rej(new Error(`server exited ${code}:\n${out}`)));
  });
}

const builds = (['src', 'bundle'] as const).filter((b) => existsSync(join(ROOT, 'dist', b, b === 'src' ? 'cli/main.js' : 'main.js')));

for (const build of builds) {
  describe(`an install without pkcs11js and @aws-sdk/client-kms (dist/${build})`, () => {
    let dir = '';
    before(() => {
      dir = layOut(build);
    });

    it('runs what does not need them: an embedded store', async () => {
      const init = await run(dir, ['init', '--data-dir', join(dir, 'store')]);
      assert.equal(init.code, 0, init.stderr);
      const list = await run(dir, ['key', 'list', '--data-dir', join(dir, 'store')]);
      assert.equal(list.code, 0, list.stderr);
      assert.match(list.stdout, /kubernetes-secrets/);
    });

    it('a plugin on provider aws-kms stops with the package to install', async () => {
      const config = join(dir, 'aws.yaml');
      writeFileSync(config, 'provider:\n  type: aws-kms\n  keyArn: arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab\n  cluster: c1\n', { mode: 0o600 });
      const r = await run(dir, ['plugin', '--config', config, '--socket', `unix://${join(dir, 'aws.sock')}`, '--health-addr', '127.0.0.1:0']);
      assert.equal(r.code, 78, r.stderr);
      assert.equal(r.stderr.trim(), 'keyhaven: the aws-kms provider needs the npm package @aws-sdk/client-kms (npm install @aws-sdk/client-kms)');
    });

    it('a plugin on provider pkcs11 stops with the package to install', async () => {
      const pin = join(dir, 'pin');
      const module = join(dir, 'libvendor-pkcs11.so');
      writeFileSync(pin, '1234\n', { mode: 0o600 });
      // Only its existence is checked before pkcs11js is needed.
      writeFileSync(module, '');
      const config = join(dir, 'pkcs11.yaml');
      writeFileSync(config, `provider:\n  type: pkcs11\n  module: ${module}\n  tokenLabel: t\n  keyLabel: k\n  pinFile: ${pin}\n`, { mode: 0o600 });
      const r = await run(dir, ['plugin', '--config', config, '--socket', `unix://${join(dir, 'p11.sock')}`, '--health-addr', '127.0.0.1:0']);
      assert.equal(r.code, 78, r.stderr);
      assert.equal(r.stderr.trim(), 'keyhaven: the pkcs11 provider needs the npm package pkcs11js (npm install pkcs11js)');
    });

    it('a server with a pkcs11 seal answers init with the package to install', async () => {
      const module = join(dir, 'libvendor-pkcs11.so');
      writeFileSync(module, '');
      const config = join(dir, 'server.yaml');
      writeFileSync(config, `listen: 127.0.0.1:0\nstorage:\n  sqlite:\n    path: ${join(dir, 'server.db')}\nseal:\n  pkcs11: {module: ${module}, tokenLabel: t, pinEnv: KH_TEST_PIN}\n`, { mode: 0o600 });
      const s = await startServer(dir, config, { KH_TEST_PIN: '1234' });
      try {
        const res = await fetch(`${s.url}/v1/sys/init`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
        const body = (await res.json()) as { error?: { code?: string; message?: string } };
        assert.equal(body.error?.code, 'config_invalid', JSON.stringify(body));
        assert.equal(body.error?.message, 'the pkcs11 seal needs the npm package pkcs11js (npm install pkcs11js)');
      } finally {
        s.stop();
      }
    });
  });
}
