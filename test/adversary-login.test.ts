import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Agent, request } from 'undici';
import { join } from 'node:path';
import { cleanCliEnv, removeDir, runCli, tempDir } from './helpers.js';
import { freshPostgresDatabase, postgresAvailable, POSTGRES_REASON } from './pg.js';
import { requireDependency } from './require.js';
import { auditRecords, initServer, login, setupCast, startServerProcess, type Cast, type ServerProcess } from './server-helpers.js';

// Attacks on sign-in, against real server processes over real HTTP. Each test
// fails if the attack succeeds. Client source addresses are real: requests
// are sent from 127.0.0.x by binding the client socket (undici Agent
// `localAddress`; `connect.localAddress` is silently ignored; Linux routes all of
// 127/8 to the loopback interface), so the server sees distinct sources.

interface Res {
  status: number;
  text: string;
  body: any;
  contentType: string;
}

const agents = new Map<string, Agent>();
function agentFor(source: string): Agent {
  let a = agents.get(source);
  if (!a) {
    a = new Agent({ localAddress: source });
    agents.set(source, a);
  }
  return a;
}

async function call(url: string, method: string, path: string, opts: { from?: string; body?: unknown; token?: string; basic?: string } = {}): Promise<Res> {
  const headers: Record<string, string> = {};
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  if (opts.basic) headers.authorization = `Basic ${Buffer.from(opts.basic).toString('base64')}`;
  if (opts.body !== undefined) headers['content-type'] = 'application/json';
  const r = await request(url + path, {
    method: method as 'GET',
    headers,
    body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
    dispatcher: agentFor(opts.from ?? '127.0.0.1'),
  });
  const text = await r.body.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // plain text (DSM errors)
  }
  return { status: r.statusCode, text, body, contentType: String(r.headers['content-type'] ?? '') };
}

const loginFrom = (url: string, from: string, name: string, password: string) => call(url, 'POST', '/v1/auth/login', { from, body: { name, password } });

function detailsOf(r: any): Record<string, unknown> {
  return typeof r.details === 'string' ? JSON.parse(r.details) : (r.details ?? {});
}

function count<T>(xs: readonly T[], f: (x: T) => boolean): number {
  return xs.filter(f).length;
}

after(async () => {
  for (const a of agents.values()) await a.close();
});

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

  it('a 50-way wrong-password flood from several sources while an app encrypts: every encrypt succeeds, health answers, the server stays up', async () => {
    let stop = false;
    const statuses = new Map<number, number>();
    const flooder = async (i: number) => {
      const from = `127.0.0.${10 + (i % 5)}`;
      for (let n = 0; !stop; n++) {
        // A fresh name each time: every attempt is a new (name, source) pair, so none is refused by a lock.
        const a = await loginFrom(url, from, `flood-${i}-${n}`, 'not-the-password-at-all');
        statuses.set(a.status, (statuses.get(a.status) ?? 0) + 1);
      }
    };
    const flood = Array.from({ length: 50 }, (_, i) => flooder(i));
    let encrypts = 0;
    let healths = 0;
    try {
      const lane = async () => {
        for (let n = 0; n < 40; n++) {
          const e = await call(url, 'POST', `/v1/keys/${cast.key}/encrypt`, { token: cast.appKey, body: { plaintext: Buffer.from(`secret ${n}`).toString('base64') } });
          assert.equal(e.status, 200, `encrypt during the flood: ${e.text}`);
          encrypts += 1;
          if (n % 4 === 0) {
            const h = await call(url, 'GET', '/v1/sys/health');
            assert.equal(h.status, 200, `health during the flood: ${h.text}`);
            healths += 1;
          }
        }
      };
      await Promise.all([lane(), lane(), lane(), lane()]);
    } finally {
      stop = true;
      await Promise.all(flood);
    }
    assert.equal(encrypts, 160);
    assert.equal(healths, 40);
    for (const s of statuses.keys()) assert.ok(s === 401 || s === 429, `flood answered ${s} (${statuses.get(s)} times)`);
    assert.ok((statuses.get(401) ?? 0) > 0, 'the flood did reach password checks');
    assert.equal(srv.child.exitCode, null, 'the server is still running');
    const own = await loginFrom(url, '127.0.0.1', 'auditor', cast.passwords.auditor!);
    assert.equal(own.status, 200, `a real user signs in after the flood: ${own.text}`);
  });
});

describe('adversary: per-source rate limit on the sign-in routes', () => {
  let srv: ServerProcess;
  let url: string;
  let cast: Cast;
  const LIMIT = 30;

  before(async () => {
    srv = await startServerProcess({ config: { auth: { rateLimit: { max: LIMIT, window: '1h' } } } });
    url = srv.url;
    cast = await setupCast(url);
  });

  after(async () => {
    await srv?.stop();
    if (srv) removeDir(srv.dir);
  });

  it('native /v1/auth/login: past the limit a source gets 429 in the native shape, audited; other sources and crypto are not limited', async () => {
    const from = '127.0.0.5';
    for (let i = 0; i < LIMIT; i++) {
      const a = await loginFrom(url, from, `someone-${i}`, 'not-the-password-1');
      assert.equal(a.status, 401, `attempt ${i + 1} is within the limit: ${a.text}`);
    }
    const over = await loginFrom(url, from, 'auditor', cast.passwords.auditor!);
    assert.equal(over.status, 429, over.text);
    assert.match(over.contentType, /application\/json/);
    assert.equal(over.body.error.code, 'too_many_attempts');
    assert.match(over.body.error.message, /too many sign-in requests from this address/);
    assert.match(over.body.error.requestId, /^[0-9a-f]{16}$/);
    // Another source is not affected.
    assert.equal((await loginFrom(url, '127.0.0.6', 'auditor', cast.passwords.auditor!)).status, 200);
    // Crypto from the limited source is never limited.
    for (let i = 0; i < LIMIT + 10; i++) {
      const e = await call(url, 'POST', `/v1/keys/${cast.key}/encrypt`, { from, token: cast.appKey, body: { plaintext: 'aGVsbG8=' } });
      assert.equal(e.status, 200, e.text);
    }
    const recs = await auditRecords(url, cast.auditor);
    assert.ok(recs.some((r) => r.operation === 'auth.login' && r.result === 'too_many_attempts' && detailsOf(r).source === from && detailsOf(r).status === 429), 'the limited request is audited');
  });

  it('DSM /sys/v1/session/auth: past the limit a source gets 429 in the DSM shape (plain text), audited', async () => {
    const from = '127.0.0.7';
    for (let i = 0; i < LIMIT; i++) {
      const a = await call(url, 'POST', '/sys/v1/session/auth', { from, basic: `someone-${i}:not-the-password-1` });
      assert.equal(a.status, 401, `attempt ${i + 1}: ${a.text}`);
    }
    const over = await call(url, 'POST', '/sys/v1/session/auth', { from, basic: `auditor:${cast.passwords.auditor}` });
    assert.equal(over.status, 429, over.text);
    assert.match(over.contentType, /text\/plain/);
    assert.match(over.text, /^too many sign-in requests from this address/);
    const recs = await auditRecords(url, cast.auditor);
    assert.ok(recs.some((r) => r.operation === 'dsm.session.auth' && r.result === 'too_many_attempts' && detailsOf(r).source === from), 'the limited request is audited');
    assert.equal((await call(url, 'GET', '/v1/sys/health', { from })).status, 200);
  });
});

describe('adversary: concurrent guesses spread over two servers sharing PostgreSQL', () => {
  let db: Awaited<ReturnType<typeof freshPostgresDatabase>>;
  const dirs: string[] = [];
  const servers: ServerProcess[] = [];

  after(async () => {
    await Promise.all(servers.map((s) => s.stop()));
    await db?.drop();
    for (const d of dirs) removeDir(d);
  });

  it('40 wrong passwords at once, half to each server: at most maxFailedLogins checked in all; another source still signs in', async (t) => {
    if (!requireDependency(t, await postgresAvailable(), POSTGRES_REASON)) return;
    db = await freshPostgresDatabase();
    assert.ok(db, 'a fresh PostgreSQL database');
    dirs.push(tempDir('kh-adv-pg-a-'), tempDir('kh-adv-pg-b-'));
    const config = { storage: { postgres: { url: db.url, poolSize: 4 } }, seal: { keyfile: { path: join(dirs[0]!, 'root.key') } }, auth: { maxFailedLogins: 5, lockBase: '1h', lockMax: '2h' } };
    servers.push(await startServerProcess({ dir: dirs[0]!, config }));
    const init = await initServer(servers[0]!.url);
    servers.push(await startServerProcess({ dir: dirs[1]!, config }));
    const admin = await login(servers[0]!.url, init.admin.name, init.admin.password);
    const made = await call(servers[0]!.url, 'POST', '/v1/users', { token: admin, body: { name: 'shared', password: 'shared-password-123', roles: [] } });
    assert.equal(made.status, 200, made.text);

    const answers = await Promise.all(Array.from({ length: 40 }, (_, i) => loginFrom(servers[i % 2]!.url, '127.0.0.1', 'shared', `wrong-password-${i}`)));
    for (const a of answers) assert.ok(a.status === 401 || a.status === 429, `${a.status} ${a.text}`);
    assert.equal(count(answers, (a) => a.status === 401), 5, 'checked passwords over both servers');
    for (const s of servers) {
      const r = await loginFrom(s.url, '127.0.0.1', 'shared', 'shared-password-123');
      assert.equal(r.status, 429, `the locked source on either server: ${r.text}`);
    }
    const other = await loginFrom(servers[1]!.url, '127.0.0.2', 'shared', 'shared-password-123');
    assert.equal(other.status, 200, other.text);
    // Unlock on one server holds for both.
    const un = await call(servers[1]!.url, 'POST', '/v1/users/shared/unlock', { token: admin, body: {} });
    assert.equal(un.status, 200, un.text);
    assert.equal(un.body.cleared, 1);
    assert.equal((await loginFrom(servers[0]!.url, '127.0.0.1', 'shared', 'shared-password-123')).status, 200);
  });
});
