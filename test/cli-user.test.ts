import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { cleanCliEnv, cliExpect, removeDir, runCli, tempDir, type CliResult } from './helpers.js';
import { api, initServer, login, startServerProcess, type ServerProcess } from './server-helpers.js';

// `keyhaven user disable|enable|delete|reset-password|passwd` against a real
// key server: each ends the user's sessions at once; an admin's password
// reset waits for another admin; no password is ever printed.

describe('keyhaven user lifecycle commands', () => {
  let srv: ServerProcess;
  let base: string;
  const tokens: Record<string, string> = {};
  const outputs: Array<[string, CliResult]> = [];
  const secrets: string[] = [];

  // Each user authenticates through $KEYHAVEN_TOKEN (no saved login: fewer processes).
  const kh = (args: string[], opts: { as?: string; input?: string } = {}): Promise<CliResult> => {
    const user = opts.as ?? 'nobody';
    const cfg = join(base, `cfg-${user}`);
    mkdirSync(cfg, { recursive: true, mode: 0o700 });
    const env = { ...cleanCliEnv(), KEYHAVEN_ADDR: srv.url, XDG_CONFIG_HOME: cfg, ...(tokens[user] ? { KEYHAVEN_TOKEN: tokens[user] } : {}) };
    return runCli(args, { env, input: opts.input }).then((r) => {
      outputs.push([args.join(' '), r]);
      return r;
    });
  };
  const { ok } = cliExpect(kh);
  const whoami = async (token: string) => (await api(srv.url, 'GET', '/v1/auth/whoami', { token })).status;

  before(async () => {
    base = tempDir('kh-cli-user-');
    srv = await startServerProcess();
    const init = await initServer(srv.url);
    secrets.push(init.admin.password, init.keyAdmin.password);
    tokens.admin = await login(srv.url, 'admin', init.admin.password);
    tokens.keyadmin = await login(srv.url, 'keyadmin', init.keyAdmin.password);
    const made = await api(srv.url, 'POST', '/v1/users', { token: tokens.admin, body: { name: 'temp', password: 'temp-password-123', roles: [] } });
    assert.equal(made.status, 200, made.text);
    secrets.push('temp-password-123');
  });

  after(async () => {
    await srv?.stop();
    if (srv) removeDir(srv.dir);
    if (base) removeDir(base);
  });

  it('disable ends the sessions at once, enable lets the user back, never yourself', async () => {
    const t1 = await login(srv.url, 'temp', 'temp-password-123');
    assert.match((await ok(['user', 'disable', 'temp'], { as: 'admin' })).stdout, /user "temp" disabled; their sessions have ended/);
    assert.equal(await whoami(t1), 401);
    const [self, enabled] = await Promise.all([kh(['user', 'disable', 'admin'], { as: 'admin' }), ok(['user', 'enable', 'temp'], { as: 'admin' })]);
    assert.equal(self.code, 5, self.stderr);
    assert.match(self.stderr, /nobody can disable themselves/);
    assert.match(enabled.stdout, /user "temp" enabled/);
    assert.equal(await whoami(t1), 401, 'old sessions stay ended');
  });

  it('reset-password ends the sessions; an admin\'s reset files a request; passwd needs the current password', async () => {
    const t2 = await login(srv.url, 'temp', 'temp-password-123');
    secrets.push('temp-password-456', 'keyadmin-password-456', 'wrong-password-1', 'temp-password-789');
    const [reset, filed] = await Promise.all([
      ok(['user', 'reset-password', 'temp', '--password-stdin'], { as: 'admin', input: 'temp-password-456\n' }),
      ok(['user', 'reset-password', 'keyadmin', '--password-stdin'], { as: 'admin', input: 'keyadmin-password-456\n' }),
    ]);
    assert.match(reset.stdout, /password of "temp" reset; their sessions have ended/);
    assert.equal(await whoami(t2), 401);
    assert.match(filed.stdout, /approval request [0-9a-f]{16} filed; needs 1 approval \(user\.reset-password/);
    assert.equal(await whoami(tokens.keyadmin!), 200, 'nothing reset yet');
    // passwd: the current password, then the new one, on stdin.
    tokens.temp = await login(srv.url, 'temp', 'temp-password-456');
    const other = await login(srv.url, 'temp', 'temp-password-456');
    const bad = await kh(['user', 'passwd', '--password-stdin'], { as: 'temp', input: 'wrong-password-1\ntemp-password-789\n' });
    assert.equal(bad.code, 5, bad.stderr);
    assert.match((await ok(['user', 'passwd', '--password-stdin'], { as: 'temp', input: 'temp-password-456\ntemp-password-789\n' })).stdout, /password changed; your other sessions have ended/);
    assert.equal(await whoami(other), 401);
    assert.equal(await whoami(tokens.temp), 200, 'the session it ran in goes on');
    await login(srv.url, 'temp', 'temp-password-789');
  });

  it('delete removes the user; deleting again is not found (exit 3)', async () => {
    assert.match((await ok(['user', 'delete', 'temp'], { as: 'admin' })).stdout, /user "temp" deleted/);
    assert.equal(await whoami(tokens.temp!), 401);
    const again = await kh(['user', 'delete', 'temp'], { as: 'admin' });
    assert.equal(again.code, 3, again.stderr);
  });

  it('no password or token appears in any command output', () => {
    assert.ok(outputs.length >= 9, `${outputs.length} commands ran`);
    for (const [cmd, r] of outputs) {
      for (const s of [...secrets, ...Object.values(tokens)]) assert.ok(!r.stdout.includes(s) && !r.stderr.includes(s), `a secret appears in the output of "keyhaven ${cmd}"`);
    }
  });
});
