import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { cleanCliEnv, cliExpect, removeDir, runCli, tempDir, type CliResult } from './helpers.js';
import { api, login, startServerProcess, type ServerProcess } from './server-helpers.js';

// The keyhaven CLI against a real key server (SQLite, key file seal) on
// 127.0.0.1: each test user has its own config folder, so its saved login is
// its own. One server for the whole file; tests build on each other in order.

let srv: ServerProcess;
let base: string;
const outputs: Array<[string, CliResult]> = [];
const passwords: Record<string, string> = {};
// Users who authenticate through $KEYHAVEN_TOKEN instead of a saved login.
const tokens: Record<string, string> = {};

/** Config folder of a test user (their saved login lives there). */
function home(user: string): string {
  const d = join(base, `cfg-${user}`);
  mkdirSync(d, { recursive: true, mode: 0o700 });
  return d;
}

/** Runs bin/keyhaven asynchronously (the event loop stays free for servers in this process). */
function kh(args: string[], opts: { as?: string; env?: NodeJS.ProcessEnv; input?: string } = {}): Promise<CliResult> {
  const user = opts.as ?? 'nobody';
  const env = { ...cleanCliEnv(), KEYHAVEN_ADDR: srv.url, XDG_CONFIG_HOME: home(user), ...(tokens[user] ? { KEYHAVEN_TOKEN: tokens[user] } : {}), ...opts.env };
  return runCli(args, { env, input: opts.input }).then((r) => {
    outputs.push([args.join(' '), r]);
    return r;
  });
}

const { ok, json } = cliExpect(kh);

/** The current context of the user's saved sessions file. */
function session(user: string): { server: string; token: string; expiresAt: string } {
  const f = JSON.parse(readFileSync(join(home(user), 'keyhaven', 'session.json'), 'utf8')) as { current: string; contexts: Record<string, { server: string; token: string; expiresAt: string }> };
  return f.contexts[f.current]!;
}

/** A key as the server sees it, read directly (checks that a CLI command took effect). */
async function keyState(name: string): Promise<{ state: string; rotationPeriod: string | null }> {
  return (await api(srv.url, 'GET', `/v1/keys/${name}`, { token: session('keyadmin').token })).body;
}

async function cliLogin(user: string): Promise<CliResult> {
  return ok(['login', '--name', user, '--password-stdin'], { as: user, input: `${passwords[user]}\n` });
}

/** An HTTP server that records what it was sent and answers 401 like ours. */
async function captureServer(): Promise<{ url: string; headers: Array<Record<string, unknown>>; server: Server }> {
  const headers: Array<Record<string, unknown>> = [];
  const server = createServer((req, res) => {
    headers.push(req.headers);
    res.writeHead(401, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: { code: 'unauthenticated', message: 'authentication required', requestId: 'feedfeedfeedfeed' } }));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, headers, server };
}

// A run cut short (timeout, ^C) leaves no server or folder behind: test/reaper.ts owns both.
describe('keyhaven CLI against a key server', () => {
  before(async () => {
    base = tempDir('kh-cli-srv-');
    srv = await startServerProcess();
  });
  after(async () => {
    await srv?.stop();
    if (srv) removeDir(srv.dir);
    removeDir(base);
  });

  it('operator status, then operator init prints the admin and key-admin passwords once with a warning', async () => {
    const before = await json(['operator', 'status']);
    assert.deepEqual({ initialized: before.initialized, sealed: before.sealed, kind: before.kind }, { initialized: false, sealed: true, kind: 'keyfile' });
    const init = await ok(['operator', 'init', '--admin', 'boss']);
    assert.match(init.stdout, /WARNING: everything below is shown once/);
    assert.match(init.stdout, /two different people/);
    const m = /security-admin password: (\S+)/.exec(init.stdout);
    assert.ok(m, init.stdout);
    passwords.boss = m[1]!;
    const k = /key-admin password:\s+(\S+)/.exec(init.stdout);
    assert.ok(k, init.stdout);
    passwords.keyadmin = k[1]!;
    assert.match(init.stdout, /go to two different people/);
    // Unconfirmed until one of the two logs in: init may still be redone.
    const status = await json(['operator', 'status']);
    assert.equal(status.initConfirmed, false);
  });

  it('login saves a 0600 session in a 0700 folder; a wrong password exits 5 and saves nothing', async () => {
    const [bad, noPassword] = await Promise.all([
      kh(['login', '--name', 'boss', '--password-stdin'], { as: 'intruder', input: 'not-the-password\n' }),
      kh(['login', '--name', 'boss'], { as: 'intruder' }),
    ]);
    assert.equal(bad.code, 5, bad.stderr);
    assert.ok(!existsSync(join(home('intruder'), 'keyhaven', 'session.json')));
    assert.equal(noPassword.code, 2, noPassword.stderr);
    assert.match(noPassword.stderr, /--password-stdin/);

    const r = await cliLogin('boss');
    assert.match(r.stdout, /logged in to http:\/\/127\.0\.0\.1:\d+ as boss \(security-admin\)/);
    // The first login confirmed the init: it cannot be run again.
    const again = await kh(['operator', 'init']);
    assert.equal(again.code, 4, again.stderr);
    assert.match(again.stderr, /already initialised \(request [0-9a-f]{16}\)/);
    const dir = join(home('boss'), 'keyhaven');
    assert.equal(statSync(dir).mode & 0o777, 0o700);
    assert.equal(statSync(join(dir, 'session.json')).mode & 0o777, 0o600);
    const s = session('boss');
    assert.equal(s.server, srv.url);
    assert.match(s.token, /^khs_/);
    assert.ok(Date.parse(s.expiresAt) > Date.now());
    const who = await json(['whoami'], { as: 'boss' });
    assert.deepEqual(who, { server: srv.url, name: 'boss', kind: 'user', roles: ['security-admin'] });
  });

  it('user create (password on stdin), user list, user role; admin roles wait for another admin\'s approval', async () => {
    const users: Array<[string, string]> = [
      ['keyadmin2', 'key-admin'],
      ['auditor', 'auditor'],
      ['admin2', 'security-admin'],
      ['temp', 'auditor'],
    ];
    for (const [name] of users) passwords[name] = `${name}-password-123`;
    await cliLogin('keyadmin');
    // Two through the CLI (text and JSON output), the rest directly: fewer processes on a busy machine.
    const [made, madeJson, , admin2] = await Promise.all([
      ok(['user', 'create', 'keyadmin2', '--roles', 'key-admin', '--password-stdin'], { as: 'boss', input: `${passwords.keyadmin2}\n` }),
      json(['user', 'create', 'temp', '--roles', 'auditor', '--password-stdin'], { as: 'boss', input: `${passwords.temp}\n` }),
      api(srv.url, 'POST', '/v1/users', { token: session('boss').token, body: { name: 'auditor', password: passwords.auditor, roles: ['auditor'] } }).then((r) => assert.equal(r.status, 200, r.text)),
      api(srv.url, 'POST', '/v1/users', { token: session('boss').token, body: { name: 'admin2', password: passwords.admin2, roles: ['security-admin'] } }),
    ]);
    assert.match(made.stdout, /user "keyadmin2" created without admin roles for now/);
    const id = /approval request ([0-9a-f]{16}) filed; needs 1 approval/.exec(made.stdout)?.[1];
    assert.ok(id, made.stdout);
    assert.equal((await api(srv.url, 'POST', `/v1/approvals/${id}/approve`, { token: session('keyadmin').token, body: {} })).body.state, 'executed');
    assert.equal(admin2.status, 202, admin2.text);
    assert.equal((await api(srv.url, 'POST', `/v1/approvals/${admin2.body.approval.id}/approve`, { token: session('keyadmin').token, body: {} })).body.state, 'executed');
    assert.deepEqual(madeJson.roles, ['auditor']);
    const both = await api(srv.url, 'POST', '/v1/users', { token: session('boss').token, body: { name: 'both', password: 'both-password-123', roles: ['security-admin', 'key-admin'] } });
    assert.equal(both.status, 409, both.text);
    const [list] = await Promise.all([
      json<{ users: Array<{ name: string; roles: string[] }> }>(['user', 'list'], { as: 'boss' }).then((r) => r.users),
      cliLogin('admin2'),
      ...['keyadmin2', 'auditor'].map(async (u) => (tokens[u] = await login(srv.url, u, passwords[u]!))),
    ]);
    assert.deepEqual(list.find((u) => u.name === 'keyadmin2')?.roles, ['key-admin']);
    assert.equal(list.find((u) => u.name === 'both'), undefined);
    const none = await ok(['user', 'role', 'temp', '--roles', ''], { as: 'boss' });
    assert.match(none.stdout, /user "temp" now has roles: none/);
    const role = await json(['user', 'role', 'temp', '--roles', 'auditor'], { as: 'boss' });
    assert.deepEqual(role.roles, ['auditor']);
  });

  it('key create/rotate/policy/list/show on the server', async () => {
    const [created] = await Promise.all([ok(['key', 'create', 'k1', '--rotation-period', '30d'], { as: 'keyadmin' }), ok(['key', 'create', 'k2'], { as: 'keyadmin' })]);
    assert.match(created.stdout, /key "k1" created: current version 1, enabled/);
    const rotated = await json(['key', 'rotate', 'k1'], { as: 'keyadmin' });
    assert.equal(rotated.currentVersion, 2);
    const policy = await json(['key', 'policy', 'k1', '--rotation-period', 'off', '--min-decryption-version', '2'], { as: 'keyadmin' });
    assert.equal(policy.rotationPeriod, null);
    assert.equal(policy.minDecryptionVersion, 2);
    const [list, table, show] = await Promise.all([
      json<{ keys: Array<{ name: string; currentVersion: number }> }>(['key', 'list'], { as: 'keyadmin' }).then((r) => r.keys),
      ok(['key', 'list'], { as: 'auditor' }),
      ok(['key', 'show', 'k1'], { as: 'keyadmin' }),
    ]);
    assert.deepEqual(list.map((k) => [k.name, k.currentVersion]).sort(), [['k1', 2], ['k2', 1]]);
    assert.match(table.stdout, /^NAME\s+STATE\s+CURRENT/);
    assert.match(table.stdout, /\nk1\s+enabled\s+2\s+2\s+-\s+manual/);
    assert.match(show.stdout, /min decryption version:\s+2/);
    assert.match(show.stdout, /rotation:\s+manual/);
    const destroy = await json(['key', 'destroy', 'k2', '--pending-days', '2', '--yes'], { as: 'keyadmin' });
    assert.equal(destroy.state, 'pending_destruction');
    assert.ok(destroy.destroyAt);
    const cancelled = await json(['key', 'cancel-destroy', 'k2'], { as: 'keyadmin' });
    assert.equal(cancelled.state, 'disabled');
  });

  it('app create prints the API key once; grant, list, rotate-key, revoke', async () => {
    const created = await ok(['app', 'create', 'app1', '--description', 'cluster a'], { as: 'boss' });
    const key = /^(kha_\S+)$/m.exec(created.stdout)?.[1];
    assert.ok(key, created.stdout);
    // Grants are the key-admin's.
    assert.equal((await api(srv.url, 'PUT', '/v1/apps/app1/grants/k1', { token: session('boss').token, body: { operations: ['encrypt'] } })).status, 403);
    const granted = await ok(['app', 'grant', 'app1', 'k1', '--ops', 'encrypt,decrypt'], { as: 'keyadmin' });
    assert.match(granted.stdout, /app "app1" may now decrypt, encrypt with key "k1"/);
    const { apps } = await json<{ apps: Array<{ name: string; description: string; grants: Array<{ key: string; operations: string[] }> }> }>(['app', 'list'], { as: 'boss' });
    const app1 = apps.find((a) => a.name === 'app1')!;
    assert.equal(app1.description, 'cluster a');
    assert.deepEqual(app1.grants.map((g) => [g.key, g.operations]), [['k1', ['decrypt', 'encrypt']]]);
    // The app key works for crypto.
    const enc = await api(srv.url, 'POST', '/v1/keys/k1/encrypt', { token: key, body: { plaintext: Buffer.from('hi').toString('base64') } });
    assert.equal(enc.status, 200, enc.text);
    // app1 holds a grant: a new key needs a key-admin's yes, and the old key works until then.
    const filed = await json(['app', 'rotate-key', 'app1'], { as: 'boss' });
    assert.equal(filed.approval.operation, 'app.rotate-key');
    assert.equal((await api(srv.url, 'POST', '/v1/keys/k1/encrypt', { token: key, body: { plaintext: 'aGk=' } })).status, 200);
    await ok(['approval', 'approve', filed.approval.id], { as: 'keyadmin' });
    const rotated = await json(['approval', 'collect', filed.approval.id], { as: 'boss' });
    assert.match(rotated.apiKey, /^kha_/);
    assert.equal((await api(srv.url, 'POST', '/v1/keys/k1/encrypt', { token: key, body: { plaintext: 'aGk=' } })).status, 401);
    assert.equal((await api(srv.url, 'DELETE', '/v1/apps/app1/grants/k1', { token: session('boss').token })).status, 403);
    await ok(['app', 'revoke', 'app1', 'k1'], { as: 'keyadmin' });
    assert.equal((await api(srv.url, 'POST', '/v1/keys/k1/encrypt', { token: rotated.apiKey, body: { plaintext: 'aGk=' } })).status, 403);
  });

  it('a quorum-guarded key disable files an approval; another key-admin approves it and it runs', async () => {
    const set = await ok(['quorum', 'set', '--required', '1', '--operations', 'key.disable,key.policy,app.rotate-key', '--ttl', '3600'], { as: 'boss' });
    assert.match(set.stdout, /1 approval from other admins/);
    assert.match(set.stdout, /key\.disable\s+yes/);
    assert.match(set.stdout, /key\.destroy\s+no/);
    const shown = await json<{ required: number; operations: string[]; ttlS: number }>(['quorum', 'show'], { as: 'keyadmin' });
    assert.deepEqual({ ...shown, operations: [...shown.operations].sort() }, { required: 1, operations: ['app.rotate-key', 'key.disable', 'key.policy'], ttlS: 3600 });
    assert.equal((await kh(['quorum', 'set', '--required', 'two'], { as: 'boss' })).code, 2);
    assert.equal((await kh(['quorum', 'set', '--required', '0'], { as: 'keyadmin' })).code, 5, 'key-admins may not change the policy');

    const filed = await ok(['key', 'disable', 'k1'], { as: 'keyadmin' });
    const id = /approval request ([0-9a-f]{16}) filed; needs 1 approval\b/.exec(filed.stdout)?.[1];
    assert.ok(id, filed.stdout);
    assert.equal((await keyState('k1')).state, 'enabled');

    const [pending, table, own] = await Promise.all([
      json<{ approvals: Array<{ id: string; operation: string; state: string }> }>(['approval', 'list', '--state', 'pending'], { as: 'keyadmin2' }).then((r) => r.approvals),
      ok(['approval', 'list'], { as: 'keyadmin2' }),
      kh(['approval', 'approve', id], { as: 'keyadmin' }),
    ]);
    assert.deepEqual(pending.map((a) => [a.id, a.operation, a.state]), [[id, 'key.disable', 'pending']]);
    assert.match(table.stdout, new RegExp(`${id}\\s+pending\\s+key\\.disable\\s+key=k1\\s+user:keyadmin\\s+0/1`));
    assert.equal(own.code, 5, own.stderr);
    const approved = await ok(['approval', 'approve', id], { as: 'keyadmin2' });
    assert.match(approved.stdout, new RegExp(`approval request ${id} approved: executed`));
    assert.equal((await keyState('k1')).state, 'disabled');

    // -o json on a 202 prints the approval; deny ends it.
    const policy = await json(['key', 'policy', 'k1', '--rotation-period', '7d'], { as: 'keyadmin' });
    assert.equal(policy.approval.state, 'pending');
    const denied = await json(['approval', 'deny', policy.approval.id], { as: 'keyadmin2' });
    assert.equal(denied.state, 'denied');
    assert.equal((await keyState('k1')).rotationPeriod, null);
    // Undoing an approved disable needs the same approval.
    const enable = await ok(['key', 'enable', 'k1'], { as: 'keyadmin' });
    const enableId = /approval request ([0-9a-f]{16}) filed; needs 1 approval \(key\.enable/.exec(enable.stdout)?.[1];
    assert.ok(enableId, enable.stdout);
    assert.equal((await keyState('k1')).state, 'disabled');
    await ok(['approval', 'approve', enableId], { as: 'keyadmin2' });
    assert.equal((await keyState('k1')).state, 'enabled');
  });

  it('a quorum-guarded app rotate-key: approved by a key-admin, the new key collected once by the requester', async () => {
    const filed = await ok(['app', 'rotate-key', 'app1'], { as: 'boss' });
    const id = /approval request ([0-9a-f]{16}) filed/.exec(filed.stdout)?.[1];
    assert.ok(id, filed.stdout);
    assert.match(filed.stdout, new RegExp(`collect the new key \\(once\\) with: keyhaven approval collect ${id}`));
    assert.equal((await api(srv.url, 'POST', `/v1/approvals/${id}/approve`, { token: session('admin2').token, body: {} })).status, 403, 'security-admins do not approve new app keys');
    const approved = await ok(['approval', 'approve', id], { as: 'keyadmin' });
    assert.match(approved.stdout, new RegExp(`user:boss collects the new API key with: keyhaven approval collect ${id}`));
    assert.doesNotMatch(approved.stdout, /kha_/);
    const [shown, notMine, notApprover] = await Promise.all([ok(['approval', 'show', id], { as: 'keyadmin' }), kh(['approval', 'collect', id], { as: 'admin2' }), kh(['approval', 'collect', id], { as: 'keyadmin' })]);
    assert.match(shown.stdout, /state:\s+executed/);
    assert.equal(notMine.code, 5, notMine.stderr);
    assert.equal(notApprover.code, 5, notApprover.stderr);
    const got = await json(['approval', 'collect', id], { as: 'boss' });
    assert.match(got.apiKey, /^kha_/);
    assert.equal((await api(srv.url, 'GET', '/v1/auth/whoami', { token: got.apiKey })).body.name, 'app1');
    const again = await kh(['approval', 'collect', id], { as: 'boss' });
    assert.equal(again.code, 3, again.stderr);
  });

  it('operator seal makes commands exit 6; unseal needs a security-admin: the saved session of one works, a key-admin\'s does not', async () => {
    const sealed = await ok(['operator', 'seal'], { as: 'boss' });
    assert.match(sealed.stdout, /is sealed/);
    const [st, refused] = await Promise.all([json(['operator', 'status']), kh(['key', 'list'], { as: 'keyadmin' })]);
    assert.equal(st.sealed, true);
    assert.equal(refused.code, 6, refused.stderr);
    assert.match(refused.stderr, /sealed/);
    const [anon, keyAdmin] = await Promise.all([kh(['operator', 'unseal']), kh(['operator', 'unseal'], { as: 'keyadmin' })]);
    assert.equal(anon.code, 2, anon.stderr);
    assert.match(anon.stderr, /pass --name/);
    assert.equal(keyAdmin.code, 5, keyAdmin.stderr);
    assert.match(keyAdmin.stderr, /keyhaven operator unseal/);
    assert.equal((await json(['operator', 'status'])).sealedBy, 'operator');
    const un = await json(['operator', 'unseal'], { as: 'boss' });
    assert.equal(un.sealed, false);
    assert.match((await ok(['key', 'list'], { as: 'keyadmin' })).stdout, /^NAME/);
  });

  it('exit codes: 401 → 5, 403 → 5, 404 → 3, connection refused → 1', async () => {
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((r) => closed.close(() => r()));
    const [bogus, anon, denied, missing, refused] = await Promise.all([
      kh(['key', 'list'], { env: { KEYHAVEN_TOKEN: 'khs_not_a_real_token' } }),
      kh(['key', 'list'], { as: 'nobody' }),
      kh(['key', 'create', 'k9'], { as: 'auditor' }),
      kh(['key', 'show', 'nope'], { as: 'keyadmin' }),
      kh(['key', 'list', '--server', `http://127.0.0.1:${port}`], { as: 'keyadmin' }),
    ]);
    assert.equal(bogus.code, 5, bogus.stderr);
    assert.equal(anon.code, 5, anon.stderr);
    assert.match(anon.stderr, /not logged in: run "keyhaven login"/);
    assert.equal(denied.code, 5, denied.stderr);
    assert.match(denied.stderr, /user:auditor may not key\.create \(request [0-9a-f]{16}\)/);
    assert.equal(missing.code, 3, missing.stderr);
    assert.match(missing.stderr, /key "nope" does not exist/);
    assert.equal(refused.code, 1, refused.stderr);
    assert.equal(refused.stderr, `keyhaven: cannot reach the keyhaven server at http://127.0.0.1:${port}: ECONNREFUSED\n`);
  });

  it('a saved login is sent only to the server that issued it', async () => {
    const cap = await captureServer();
    try {
      const r = await kh(['key', 'list', '--server', cap.url], { as: 'keyadmin' });
      assert.equal(r.code, 5, r.stderr);
      assert.match(r.stderr, /the saved login is for http:\/\/127\.0\.0\.1:\d+, not http/);
      assert.equal(cap.headers.length, 1);
      assert.equal(cap.headers[0]!.authorization, undefined);
      // KEYHAVEN_TOKEN is the caller's explicit choice and goes wherever --server points.
      await kh(['key', 'list', '--server', cap.url], { as: 'nobody', env: { KEYHAVEN_TOKEN: 'khs_explicit' } });
      assert.equal(cap.headers[1]!.authorization, 'Bearer khs_explicit');
    } finally {
      cap.server.close();
    }
  });

  it('logout ends the session on the server and forgets the token (the context keeps its server)', async () => {
    const token = session('admin2').token;
    assert.equal((await api(srv.url, 'GET', '/v1/auth/whoami', { token })).status, 200);
    const r = await ok(['logout'], { as: 'admin2' });
    assert.match(r.stdout, /logged out of http/);
    assert.equal(session('admin2').token, undefined);
    assert.equal(session('admin2').server, srv.url);
    assert.equal((await api(srv.url, 'GET', '/v1/auth/whoami', { token })).status, 401);
    assert.match((await ok(['logout'], { as: 'admin2' })).stdout, /not logged in/);
    assert.equal((await kh(['whoami'], { as: 'admin2' })).code, 5);
  });

  it('no session token or password appears in any command output', async () => {
    const secrets = [...['boss', 'keyadmin'].map((u) => session(u).token), ...Object.values(tokens), ...Object.values(passwords)];
    assert.ok(outputs.length > 40, `${outputs.length} commands ran`);
    for (const [cmd, r] of outputs) {
      for (const s of secrets) {
        // The init output is where the first admin password is shown, once, by design.
        if (cmd.startsWith('operator init') && (s === passwords.boss || s === passwords.keyadmin)) continue;
        assert.ok(!r.stdout.includes(s) && !r.stderr.includes(s), `a secret appears in the output of "keyhaven ${cmd}"`);
      }
    }
  });
});
