import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { cleanCliEnv, removeDir, runCli, tempDir } from './helpers.js';
import { HAVE_OPENSSL, makePki, type Pki } from './pki.js';
import { requireDependency } from './require.js';
import { startServerProcess, type ServerProcess } from './server-helpers.js';

// The TLS set-up docs/server.md describes, end to end: a server with
// tls.cert/tls.key from a private CA, and the CLI trusting that CA through
// --ca-file, $KEYHAVEN_CACERT or the saved login.

describe('CLI against an HTTPS server with a private CA', () => {
  let pki: Pki | undefined;
  let s: ServerProcess | undefined;
  let home = '';
  const env = (extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv => ({ ...cleanCliEnv(), XDG_CONFIG_HOME: home, ...extra });

  before(async () => {
    if (!HAVE_OPENSSL) return;
    pki = makePki();
    home = tempDir('kh-cli-tls-home-');
    s = await startServerProcess({ config: { tls: { cert: pki.serverCert, key: pki.serverKey } } });
  });
  after(async () => {
    await s?.stop();
    if (s) removeDir(s.dir);
    if (pki) removeDir(pki.dir);
    if (home) removeDir(home);
  });

  it('an untrusted certificate names --ca-file and KEYHAVEN_CACERT; the flag, the environment and the saved login each supply the CA; the flag wins', async (t) => {
    if (!requireDependency(t, HAVE_OPENSSL, 'openssl (a test CA and server certificate)')) return;
    const url = s!.url;
    assert.match(url, /^https:\/\/127\.0\.0\.1:\d+$/);

    const untrusted = await runCli(['operator', 'status', '--server', url], { env: env() });
    assert.notEqual(untrusted.code, 0, untrusted.stdout);
    assert.match(untrusted.stderr, /cannot reach the keyhaven server at https:\/\/127\.0\.0\.1:\d+: \S+ \(for a server with a private CA pass --ca-file or set KEYHAVEN_CACERT\)/);

    const byFlag = await runCli(['operator', 'status', '--server', url, '--ca-file', pki!.caFile, '-o', 'json'], { env: env() });
    assert.equal(byFlag.code, 0, byFlag.stderr);
    assert.equal(JSON.parse(byFlag.stdout).initialized, false);

    const init = await runCli(['operator', 'init', '-o', 'json'], { env: env({ KEYHAVEN_ADDR: url, KEYHAVEN_CACERT: pki!.caFile }) });
    assert.equal(init.code, 0, init.stderr);
    const admin = JSON.parse(init.stdout).admin as { name: string; password: string };

    // The flag wins over the environment.
    const wrongFlag = await runCli(['operator', 'status', '--ca-file', pki!.foreignCaFile], { env: env({ KEYHAVEN_ADDR: url, KEYHAVEN_CACERT: pki!.caFile }) });
    assert.notEqual(wrongFlag.code, 0, wrongFlag.stdout);
    assert.match(wrongFlag.stderr, /pass --ca-file or set KEYHAVEN_CACERT/);

    const missing = join(home, 'no-such-ca.pem');
    const unreadable = await runCli(['operator', 'status', '--server', url, '--ca-file', missing], { env: env() });
    assert.notEqual(unreadable.code, 0);
    assert.match(unreadable.stderr, new RegExp(`cannot read the CA file ${missing.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: ENOENT`));

    // The saved login keeps the server and the CA file's path.
    const login = await runCli(['login', '--server', url, '--ca-file', pki!.caFile, '--name', admin.name, '--password-stdin'], { env: env(), input: `${admin.password}\n` });
    assert.equal(login.code, 0, login.stderr);
    const who = await runCli(['user', 'list', '-o', 'json'], { env: env() });
    assert.equal(who.code, 0, who.stderr);
    assert.ok((JSON.parse(who.stdout) as { users: Array<{ name: string }> }).users.some((u) => u.name === admin.name), who.stdout);
  });

  it('http:// to the https server and https:// to a plain http server each say which protocol the server speaks', async (t) => {
    if (!requireDependency(t, HAVE_OPENSSL, 'openssl (a test CA and server certificate)')) return;
    const asHttp = s!.url.replace(/^https:/, 'http:');
    const toTls = await runCli(['operator', 'status', '--server', asHttp], { env: env() });
    assert.equal(toTls.code, 1, toTls.stdout);
    assert.match(toTls.stderr, /cannot reach the keyhaven server at http:\/\/127\.0\.0\.1:\d+: \S+ \(the server speaks https, not plain http: use --server https:\/\/127\.0\.0\.1:\d+\)/);

    const plain = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
    });
    await new Promise<void>((r) => plain.listen(0, '127.0.0.1', r));
    try {
      const port = (plain.address() as AddressInfo).port;
      const toPlain = await runCli(['login', '--server', `https://127.0.0.1:${port}`, '--name', 'x', '--password-stdin'], { env: env(), input: 'a-password\n' });
      assert.equal(toPlain.code, 1, toPlain.stdout);
      assert.match(toPlain.stderr, new RegExp(`cannot reach the keyhaven server at https://127\\.0\\.0\\.1:${port}: \\S+ \\(the server speaks plain http, not https: use --server http://127\\.0\\.0\\.1:${port}\\)`));
      assert.doesNotMatch(toPlain.stderr, /--ca-file/, 'not a certificate problem');
    } finally {
      plain.close();
    }
  });
});
