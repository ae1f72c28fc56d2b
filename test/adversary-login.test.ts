import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { cleanCliEnv, removeDir, runCli, tempDir, waitFor } from './helpers.js';
import { auditRecords, initServer, login, setupCast, startServerProcess, type Cast, type ServerProcess } from './server-helpers.js';
import { call, closeAgents, count, detailsOf, loginFrom, type Res } from './source-client.js';

// Attacks on sign-in, against real server processes over real HTTP. Each test
// fails if the attack succeeds. Client source addresses are real (see
// source-client.ts).
// Here: throttling per (account, source address), unknown names, unlock.

after(closeAgents);

describe('adversary: sign-in throttling, per (account, source)', () => {
  let srv: ServerProcess;
  let url: string;
  let cast: Cast;
  let cliHome: string;
  const MAX = 5;

  before(async () => {
    cliHome = tempDir('kh-adv-login-cli-');
    // A lock long enough that no test depends on it running out.
    srv = await startServerProcess({ config: { auth: { maxFailedLogins: MAX, lockBase: '1h', lockMax: '2h' } } });
    url = srv.url;
    cast = await setupCast(url);
    const r = await call(url, 'POST', '/v1/users', { token: cast.admin, body: { name: 'victim', password: 'victim-password-123', roles: [] } });
    assert.equal(r.status, 200, r.text);
  });

  after(async () => {
    await srv?.stop();
    if (srv) removeDir(srv.dir);
    if (cliHome) removeDir(cliHome);
  });

  const kh = (args: string[], token = cast.admin) =>
    runCli(args, { env: { ...cleanCliEnv(), KEYHAVEN_ADDR: url, KEYHAVEN_TOKEN: token, XDG_CONFIG_HOME: cliHome } });

  it('40 concurrent wrong passwords check at most maxFailedLogins; the right one is refused from that source and works from another', async () => {
    const answers = await Promise.all(Array.from({ length: 40 }, (_, i) => loginFrom(url, '127.0.0.1', 'victim', `wrong-password-${i}`)));
    for (const a of answers) assert.ok(a.status === 401 || a.status === 429, `${a.status} ${a.text}`);
    const checked = count(answers, (a) => a.status === 401);
    assert.ok(checked >= 1 && checked <= MAX, `${checked} passwords were checked (limit ${MAX})`);
    for (const a of answers.filter((x) => x.status === 429)) assert.equal(a.body.error.code, 'too_many_attempts');

    // The audit log agrees: one `unauthenticated` record per checked password, the rest refused unchecked.
    const recs = (await auditRecords(url, cast.auditor)).filter((r) => r.operation === 'auth.login' && detailsOf(r).user === 'victim');
    assert.equal(count(recs, (r) => r.result === 'unauthenticated'), checked);
    assert.equal(count(recs, (r) => r.result === 'too_many_attempts'), 40 - checked);
    assert.equal(checked, MAX, 'the limit is reached, not undercounted');

    const locked = await loginFrom(url, '127.0.0.1', 'victim', 'victim-password-123');
    assert.equal(locked.status, 429, `the right password from the locked source: ${locked.text}`);
    assert.equal(locked.body.error.code, 'too_many_attempts');

    const elsewhere = await loginFrom(url, '127.0.0.2', 'victim', 'victim-password-123');
    assert.equal(elsewhere.status, 200, `the right password from another source: ${elsewhere.text}`);
    assert.match(elsewhere.body.token, /^khs_/);

    // The admin sees the lock on the user.
    const users = await call(url, 'GET', '/v1/users', { token: cast.admin });
    const v = users.body.users.find((u: { name: string }) => u.name === 'victim');
    assert.ok(v.lockedUntil && Date.parse(v.lockedUntil) > Date.now(), `lockedUntil ${v.lockedUntil}`);
  });

  it('a stranger flooding the only security-admin\'s name does not lock the admin out of their own address', async () => {
    const adminName = Object.keys(cast.passwords).find((n) => n !== 'admin2' && n !== 'admin3' && !n.startsWith('key') && n !== 'auditor')!;
    const flood = await Promise.all(Array.from({ length: 30 }, (_, i) => loginFrom(url, '127.0.0.3', adminName, `guess-${i}-xxxxxxxx`)));
    assert.equal(count(flood, (a) => a.status === 200), 0);
    assert.ok(count(flood, (a) => a.status === 401) <= MAX);
    assert.equal((await loginFrom(url, '127.0.0.3', adminName, cast.passwords[adminName]!)).status, 429, 'the stranger\'s source is locked');
    const own = await loginFrom(url, '127.0.0.1', adminName, cast.passwords[adminName]!);
    assert.equal(own.status, 200, own.text);
  });

  it('unknown names are throttled exactly like real ones (same answers, same counts)', async () => {
    const real = await Promise.all(Array.from({ length: 20 }, (_, i) => loginFrom(url, '127.0.0.4', 'auditor', `nope-${i}-xxxxxxxx`)));
    const ghost = await Promise.all(Array.from({ length: 20 }, (_, i) => loginFrom(url, '127.0.0.4', 'no-such-user', `nope-${i}-xxxxxxxx`)));
    const shape = (xs: Res[]) => ({ checked: count(xs, (a) => a.status === 401), refused: count(xs, (a) => a.status === 429) });
    assert.deepEqual(shape(ghost), shape(real));
    assert.deepEqual(shape(real), { checked: MAX, refused: 20 - MAX });
    const msg = (xs: Res[], s: number) => xs.find((a) => a.status === s)!.body.error.message as string;
    assert.equal(msg(ghost, 401), msg(real, 401));
    // A refusal says "locked" or "busy", never whether the name exists.
    for (const a of [...real, ...ghost].filter((x) => x.status === 429)) {
      assert.match(a.body.error.message, /^(too many failed sign-ins for this name from this address; try again after \S+|sign-in is busy; retry shortly)$/);
    }
  });

  it('`keyhaven user unlock` clears every source\'s lock; audited; refused for non-admins and bad input', async () => {
    const r = await kh(['user', 'unlock', 'victim']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /user "victim" unlocked \(\d+ sign-in counters? cleared\)/);
    const back = await loginFrom(url, '127.0.0.1', 'victim', 'victim-password-123');
    assert.equal(back.status, 200, `after unlock: ${back.text}`);
    const users = await call(url, 'GET', '/v1/users', { token: cast.admin });
    assert.equal(users.body.users.find((u: { name: string }) => u.name === 'victim').lockedUntil, null);

    const json = await kh(['user', 'unlock', 'victim', '-o', 'json']);
    assert.equal(json.code, 0, json.stderr);
    assert.deepEqual(JSON.parse(json.stdout), { name: 'victim', cleared: 0 });

    const recs = (await auditRecords(url, cast.auditor)).filter((x) => x.operation === 'user.unlock');
    assert.ok(recs.some((x) => x.result === 'ok' && detailsOf(x).user === 'victim' && x.actor.startsWith('user:')), 'unlock audited');

    // Not for other roles.
    const denied = await call(url, 'POST', '/v1/users/victim/unlock', { token: cast.keyAdmin, body: {} });
    assert.equal(denied.status, 403, denied.text);
    const anon = await call(url, 'POST', '/v1/users/victim/unlock', { body: {} });
    assert.equal(anon.status, 401, anon.text);
    // Bad input: clear errors, nothing changes, the server keeps serving.
    for (const [path, body, status] of [
      ['/v1/users/Bad%20Name/unlock', {}, 400],
      ['/v1/users/no-such-user/unlock', {}, 404],
      ['/v1/users/app1/unlock', {}, 404],
      ['/v1/users/victim/unlock', { source: '127.0.0.1' }, 400],
      ['/v1/users/victim/unlock', [], 400],
    ] as const) {
      const x = await call(url, 'POST', path, { token: cast.admin, body });
      assert.equal(x.status, status, `${path} ${JSON.stringify(body)}: ${x.text}`);
      assert.ok(x.body.error.message.length > 0);
    }
    const cliBad = await kh(['user', 'unlock', 'Bad Name']);
    assert.notEqual(cliBad.code, 0);
    assert.match(cliBad.stderr, /name/i);
    const cliMissing = await kh(['user', 'unlock']);
    assert.notEqual(cliMissing.code, 0);
    assert.match(cliMissing.stderr, /missing required argument/i);
    const cliUnknown = await kh(['user', 'unlock', 'no-such-user']);
    assert.notEqual(cliUnknown.code, 0);
    assert.match(cliUnknown.stderr, /does not exist/);
    assert.equal((await call(url, 'GET', '/v1/sys/health')).status, 200);
  });
});


describe('sign-in locks end, and the scheduler forgets old failures', () => {
  let srv: ServerProcess;

  after(async () => {
    await srv?.stop();
    if (srv) removeDir(srv.dir);
  });

  it('a lock passes on its own; the row is swept once forgotten', async () => {
    // A short lock; the 5 s forget window leaves ample time to see each row before it goes.
    srv = await startServerProcess({ config: { auth: { maxFailedLogins: 2, lockBase: '1s', lockMax: '5s' } } });
    const init = await initServer(srv.url);
    const admin = await login(srv.url, init.admin.name, init.admin.password);
    assert.equal((await call(srv.url, 'POST', '/v1/users', { token: admin, body: { name: 'sweepme', password: 'sweepme-password-1', roles: [] } })).status, 200);
    for (let i = 0; i < 2; i++) assert.equal((await loginFrom(srv.url, '127.0.0.8', 'sweepme', `wrong-password-${i}`)).status, 401);
    const db = new Database(join(srv.dir, 'keyhaven.db'), { readonly: true, fileMustExist: true });
    try {
      const rows = () => db.prepare("select count(*) as n from login_throttle where name = 'sweepme'").get() as { n: number };
      const locked = db.prepare("select failures, locked_until from login_throttle where name = 'sweepme' and source = '127.0.0.8'").get() as { failures: number; locked_until: string | null };
      assert.equal(locked.failures, 2);
      assert.ok(locked.locked_until !== null, 'the second failure locked the pair');
      // Lock over: the right password works again (and clears the row itself).
      await waitFor(async () => (await loginFrom(srv.url, '127.0.0.8', 'sweepme', 'sweepme-password-1')).status === 200, 'the lock to pass');
      assert.equal(rows().n, 0);
      // Failures short of a lock are forgotten after lockMax and swept by the scheduler (interval 1 s).
      assert.equal((await loginFrom(srv.url, '127.0.0.9', 'sweepme', 'wrong-password-x')).status, 401);
      assert.equal(rows().n, 1);
      await waitFor(() => rows().n === 0, 'the scheduler to sweep the forgotten row');
    } finally {
      db.close();
    }
  });
});
