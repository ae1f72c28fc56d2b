import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Agent, request } from 'undici';
import { removeDir, tempDir } from './helpers.js';
import { HAVE_OPENSSL, makePki, type Pki } from './pki.js';
import { requireDependency } from './require.js';
import { api, initServer, login, startServerProcess, type ServerProcess } from './server-helpers.js';

/** The sign-in lock after 3 failures: long enough that the check right after the third failure lands inside it. */
const LOCK_MS = 10_000;
/** The session lifetime of the expiry test's server. */
const SESSION_TTL_MS = 5_000;

// Identity on a real HTTPS key server with client-certificate support:
// password lockout, uniform login failures, session expiry, logout, API key
// rotation, mTLS app authentication; and the refusal to serve plain HTTP on
// a non-loopback address.

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Res {
  status: number;
  body: any;
  text: string;
  requestId: string | undefined;
}

describe('server identity', { skip: !HAVE_OPENSSL && process.env.KEYHAVEN_REQUIRE_ALL !== '1' ? 'openssl is not installed' : false }, () => {
  let pki: Pki;
  let srv: ServerProcess;
  let url: string;
  let plain: Agent;
  const agents: Agent[] = [];
  const passwords: Record<string, string> = {};

  const call = async (method: string, path: string, opts: { token?: string; body?: unknown; agent?: Agent } = {}): Promise<Res> => {
    const headers: Record<string, string> = {};
    if (opts.token) headers.authorization = `Bearer ${opts.token}`;
    if (opts.body !== undefined) headers['content-type'] = 'application/json';
    const res = await request(url + path, { method: method as 'GET', headers, body: opts.body === undefined ? undefined : JSON.stringify(opts.body), dispatcher: opts.agent ?? plain });
    const text = await res.body.text();
    let body: unknown = text;
    try {
      body = JSON.parse(text);
    } catch {
      // not JSON
    }
    const rid = res.headers['x-request-id'];
    return { status: res.statusCode, body, text, requestId: typeof rid === 'string' ? rid : undefined };
  };
  const must = async (p: Promise<Res>, status: number, what: string) => {
    const r = await p;
    assert.equal(r.status, status, `${what}: ${r.text.slice(0, 300)}`);
    return r;
  };
  const sessions: Record<string, string> = {};
  const as = async (name: string) => (sessions[name] ??= (await must(call('POST', '/v1/auth/login', { body: { name, password: passwords[name] } }), 200, `login ${name}`)).body.token as string);
  const audit = async () => {
    const r = await must(call('GET', '/v1/audit?limit=10000', { token: await as('auditor') }), 200, 'audit');
    return r.text.split('\n').filter(Boolean).map((l) => {
      const x = JSON.parse(l);
      return { ...x, details: x.details ? JSON.parse(x.details) : {} };
    });
  };
  /**
   * Polls until `fn` gives the wanted status; returns every answer seen, each
   * with the time its request was sent. The cap only ends a hung test: a slow
   * machine waits longer, it does not fail.
   */
  const until = async (fn: () => Promise<Res>, status: number, capMs = 60_000): Promise<Array<Res & { sentAt: number; answeredAt: number }>> => {
    const seen: Array<Res & { sentAt: number; answeredAt: number }> = [];
    const end = Date.now() + capMs;
    for (;;) {
      const sentAt = Date.now();
      const r = await fn();
      seen.push({ ...r, sentAt, answeredAt: Date.now() });
      if (r.status === status || Date.now() > end) return seen;
      await sleep(200);
    }
  };

  before(async () => {
    pki = makePki();
    plain = new Agent({ connect: { ca: pki.ca } });
    srv = await startServerProcess({
      config: {
        tls: { cert: pki.serverCert, key: pki.serverKey, clientCa: pki.caFile },
        auth: { maxFailedLogins: 3, lockBase: `${LOCK_MS}ms` },
      },
    });
    url = srv.url;
    assert.match(url, /^https:\/\/127\.0\.0\.1:\d+$/);
    const init = await must(call('POST', '/v1/sys/init', { body: {} }), 200, 'init');
    passwords.admin = init.body.admin.password;
    // Init made the first key-admin, "keyadmin".
    passwords.keyadmin = init.body.keyAdmin.password;
    for (const [name, roles] of [['auditor', ['auditor']], ['locky', []], ['sessy', []]] as const) {
      passwords[name] = `${name}-password-123`;
      await must(call('POST', '/v1/users', { token: await as('admin'), body: { name, password: passwords[name], roles } }), 200, `user ${name}`);
    }
    await must(call('POST', '/v1/keys', { token: await as('keyadmin'), body: { name: 'k1' } }), 200, 'key');
    await must(call('POST', '/v1/apps', { token: await as('admin'), body: { name: 'someapp' } }), 200, 'app');
  });

  after(async () => {
    await srv?.stop();
    if (srv) removeDir(srv.dir);
    for (const a of [plain, ...agents]) await a?.close();
    if (pki) removeDir(pki.dir);
  });

  it('lockout: after 3 bad passwords even the right one gets 429 until the lock passes; failures are audited', async () => {
    const bad = [] as Res[];
    let thirdSentAt = 0;
    for (let i = 0; i < 3; i++) {
      thirdSentAt = Date.now();
      bad.push(await call('POST', '/v1/auth/login', { body: { name: 'locky', password: `wrong-password-${i}` } }));
    }
    for (const r of bad) {
      assert.equal(r.status, 401, r.text);
      assert.equal(r.body.error.code, 'unauthenticated');
    }
    // The lock starts when the server handles the third failure, after it was
    // sent: an answer that arrives within LOCK_MS of that sending must be the
    // lock's (causal, so a slow machine cannot break it).
    const seen = await until(() => call('POST', '/v1/auth/login', { body: { name: 'locky', password: passwords.locky } }), 200);
    const last = seen[seen.length - 1]!;
    assert.equal(last.status, 200, `login after the lock: ${last.text}`);
    const first = seen[0]!;
    assert.ok(first.status === 429 || first.answeredAt >= thirdSentAt + LOCK_MS, `the right password was accepted inside the lock: ${first.status} ${first.text}`);
    for (const r of seen.slice(0, -1)) {
      assert.equal(r.status, 429, 'only the lock refuses the right password');
      assert.equal(r.body.error.code, 'too_many_attempts');
    }
    for (const r of seen) if (r.answeredAt < thirdSentAt + LOCK_MS) assert.equal(r.status, 429, 'answered inside the lock');
    assert.match(last.body.token, /^khs_/);
    // The successful login reset the count: one more failure does not lock.
    assert.equal((await call('POST', '/v1/auth/login', { body: { name: 'locky', password: 'wrong-again-1' } })).status, 401);
    assert.equal((await call('POST', '/v1/auth/login', { body: { name: 'locky', password: passwords.locky } })).status, 200);

    const recs = await audit();
    for (const r of bad) {
      const rec = recs.find((x) => x.request_id === r.requestId);
      assert.ok(rec, 'failed login audited');
      assert.equal(rec.operation, 'auth.login');
      assert.equal(rec.result, 'unauthenticated');
      assert.equal(rec.details.user, 'locky');
      assert.equal(rec.actor, 'anonymous');
      assert.ok(!JSON.stringify(rec).includes('wrong-password'));
    }
    // Every refusal by the lock is audited (there is one unless the machine took LOCK_MS to answer, checked above).
    for (const locked of seen.filter((r) => r.status === 429)) {
      const lockRec = recs.find((x) => x.request_id === locked.requestId);
      assert.equal(lockRec?.result, 'too_many_attempts');
      assert.equal(lockRec?.details.user, 'locky');
    }
  });

  it('an unknown user, an app name and a wrong password get the same 401', async () => {
    const answers = [
      await call('POST', '/v1/auth/login', { body: { name: 'sessy', password: 'not-the-password' } }),
      await call('POST', '/v1/auth/login', { body: { name: 'no-such-user', password: 'not-the-password' } }),
      await call('POST', '/v1/auth/login', { body: { name: 'No Such User', password: 'not-the-password' } }),
      await call('POST', '/v1/auth/login', { body: { name: 'someapp', password: 'not-the-password' } }),
    ];
    for (const r of answers) {
      assert.equal(r.status, 401, r.text);
      assert.deepEqual({ code: r.body.error.code, message: r.body.error.message }, { code: answers[0]!.body.error.code, message: answers[0]!.body.error.message });
    }
    const recs = await audit();
    const unknown = recs.find((x) => x.request_id === answers[1]!.requestId);
    assert.equal(unknown?.result, 'unauthenticated');
    assert.equal(unknown?.details.user, 'no-such-user');
  });

  it(`sessions expire (sessionTTL ${SESSION_TTL_MS / 1000}s)`, async () => {
    // A server of its own, so the other tests' sessions last.
    const short = await startServerProcess({ config: { auth: { sessionTTL: `${SESSION_TTL_MS}ms` }, audit: { fsync: false } } });
    // A session is made after its login was sent: an answer that arrives
    // within the TTL of that sending must still find it valid (causal, so a
    // slow machine cannot break it).
    const loginLive = async (what: string) => {
      const sentAt = Date.now();
      const token = await login(short.url, init.admin.name, init.admin.password);
      const r = await api(short.url, 'GET', '/v1/users', { token });
      if (Date.now() < sentAt + SESSION_TTL_MS) assert.equal(r.status, 200, `${what}: ${r.text}`);
      return token;
    };
    let init: Awaited<ReturnType<typeof initServer>>;
    try {
      init = await initServer(short.url);
      const token = await loginLive('a fresh session');
      const seen: number[] = [];
      // A cap that only ends a hung test; the expiry itself is what is checked.
      const end = Date.now() + 60_000 + SESSION_TTL_MS;
      for (;;) {
        const r = await api(short.url, 'GET', '/v1/auth/whoami', { token });
        seen.push(r.status);
        if (r.status !== 200) {
          assert.equal(r.status, 401, r.text);
          assert.equal(r.body.error.code, 'unauthenticated');
          break;
        }
        assert.ok(Date.now() < end, 'the session never expired');
        await sleep(200);
      }
      // Expired stays expired; a new login works.
      assert.equal((await api(short.url, 'GET', '/v1/users', { token })).status, 401);
      await loginLive('a new login');
    } finally {
      await short.stop();
      removeDir(short.dir);
    }
  });

  it('logout revokes the session at once', async () => {
    const fresh = async () => (await must(call('POST', '/v1/auth/login', { body: { name: 'sessy', password: passwords.sessy } }), 200, 'login')).body.token as string;
    const token = await fresh();
    const other = await fresh();
    assert.equal((await call('GET', '/v1/auth/whoami', { token })).status, 200);
    await must(call('POST', '/v1/auth/logout', { token, body: {} }), 200, 'logout');
    const after = await call('GET', '/v1/auth/whoami', { token });
    assert.equal(after.status, 401, after.text);
    assert.equal((await call('POST', '/v1/auth/logout', { token, body: {} })).status, 401, 'logout again');
    // Only that session ends.
    assert.equal((await call('GET', '/v1/auth/whoami', { token: other })).status, 200);
  });

  it('app API key rotation: the old key stops working, the new one works', async () => {
    const made = await must(call('POST', '/v1/apps', { token: await as('admin'), body: { name: 'rotator' } }), 200, 'create app');
    const oldKey = made.body.apiKey as string;
    await must(call('PUT', '/v1/apps/rotator/grants/k1', { token: await as('keyadmin'), body: { operations: ['encrypt'] } }), 200, 'grant');
    const enc = (token: string) => call('POST', '/v1/keys/k1/encrypt', { token, body: { plaintext: Buffer.from('rot').toString('base64') } });
    await must(enc(oldKey), 200, 'old key before rotation');
    // The app holds a grant, so a new key needs a key-admin's approval; the requester collects it.
    const filed = await must(call('POST', '/v1/apps/rotator/rotate-key', { token: await as('admin'), body: {} }), 202, 'rotate');
    await must(enc(oldKey), 200, 'old key while the rotation waits');
    await must(call('POST', `/v1/approvals/${filed.body.approval.id}/approve`, { token: await as('keyadmin'), body: {} }), 200, 'approve');
    const rotated = await must(call('POST', `/v1/approvals/${filed.body.approval.id}/collect`, { token: await as('admin'), body: {} }), 200, 'collect');
    const collectedAt = Date.now();
    const newKey = rotated.body.apiKey as string;
    assert.match(newKey, /^kha_/);
    assert.notEqual(newKey, oldKey);
    // Credentials may be cached for up to 2 s. Any cached copy of the old key
    // was read before the collect answered, so a request sent 2 s after that
    // answer must be refused however slow the machine is (slowness only delays
    // the sending).
    const seen = await until(() => enc(oldKey), 401);
    assert.equal(seen[seen.length - 1]!.status, 401, 'the old key still works after rotation');
    const lateOk = seen.filter((r) => r.status !== 401 && r.sentAt >= collectedAt + 2_000);
    assert.deepEqual(lateOk.map((r) => r.status), [], 'the old key worked in a request sent more than 2 s after the rotation');
    await must(enc(newKey), 200, 'new key');
    const who = await must(call('GET', '/v1/auth/whoami', { token: newKey }), 200, 'whoami');
    assert.deepEqual(who.body, { name: 'rotator', kind: 'app', roles: [] });
  });

  it('mTLS: a registered client certificate authenticates its app without a token', async (t) => {
    if (!requireDependency(t, HAVE_OPENSSL, 'openssl')) return;
    const made = await must(call('POST', '/v1/apps', { token: await as('admin'), body: { name: 'app-mtls', certFingerprint: pki.client.fingerprint } }), 200, 'create app');
    assert.equal(made.body.app.certFingerprint, pki.client.fingerprint.replace(/:/g, '').toLowerCase());
    await must(call('PUT', '/v1/apps/app-mtls/grants/k1', { token: await as('keyadmin'), body: { operations: ['encrypt', 'decrypt'] } }), 200, 'grant');
    const withCert = new Agent({ connect: { ca: pki.ca, cert: pki.client.cert, key: pki.client.key } });
    agents.push(withCert);
    const who = await must(call('GET', '/v1/auth/whoami', { agent: withCert }), 200, 'whoami by certificate');
    assert.deepEqual(who.body, { name: 'app-mtls', kind: 'app', roles: [] });
    const enc = await must(call('POST', '/v1/keys/k1/encrypt', { agent: withCert, body: { plaintext: Buffer.from('over mtls').toString('base64') } }), 200, 'encrypt by certificate');
    const dec = await must(call('POST', '/v1/keys/k1/decrypt', { agent: withCert, body: { ciphertext: enc.body.ciphertext } }), 200, 'decrypt');
    assert.equal(Buffer.from(dec.body.plaintext, 'base64').toString(), 'over mtls');
    // The certificate is the app's identity, nothing more.
    assert.equal((await call('GET', '/v1/keys', { agent: withCert })).status, 403);
    const recs = await audit();
    const rec = recs.find((x) => x.request_id === enc.requestId);
    assert.equal(rec?.actor, 'app:app-mtls');
    assert.equal(rec?.result, 'ok');
  });

  it('mTLS: an unregistered or untrusted certificate is not authenticated', async (t) => {
    if (!requireDependency(t, HAVE_OPENSSL, 'openssl')) return;
    const unregistered = new Agent({ connect: { ca: pki.ca, cert: pki.other.cert, key: pki.other.key } });
    const foreign = new Agent({ connect: { ca: pki.ca, cert: pki.foreign.cert, key: pki.foreign.key } });
    agents.push(unregistered, foreign);
    for (const [what, agent] of [['unregistered', unregistered], ['untrusted CA', foreign], ['no certificate', plain]] as const) {
      for (const [m, p, body] of [['GET', '/v1/auth/whoami', undefined], ['POST', '/v1/keys/k1/encrypt', { plaintext: 'AAAA' }]] as const) {
        const r = await call(m, p, { agent, body });
        assert.equal(r.status, 401, `${what} ${p}: ${r.text}`);
        assert.equal(r.body.error.code, 'unauthenticated');
      }
    }
  });

  it('mTLS: a presented certificate that does not verify is refused even beside a valid token', async (t) => {
    if (!requireDependency(t, HAVE_OPENSSL, 'openssl')) return;
    const token = await as('admin');
    const expired = new Agent({ connect: { ca: pki.ca, cert: pki.expiredClient.cert, key: pki.expiredClient.key } });
    const foreign = new Agent({ connect: { ca: pki.ca, cert: pki.foreign.cert, key: pki.foreign.key } });
    agents.push(expired, foreign);
    for (const [agent, reason] of [[expired, 'CERT_HAS_EXPIRED'], [foreign, 'UNABLE_TO_VERIFY_LEAF_SIGNATURE']] as const) {
      const r = await call('GET', '/v1/auth/whoami', { agent, token });
      assert.equal(r.status, 401, r.text);
      assert.equal(r.body.error.code, 'unauthenticated');
      assert.match(r.body.error.message, new RegExp(`client certificate was refused \\(${reason}`));
    }
    assert.equal((await call('GET', '/v1/auth/whoami', { token })).status, 200, 'the same token without a certificate works');
  });

  it('refuses to serve plain HTTP on a non-loopback address', async () => {
    const dir = tempDir('kh-refuse-');
    try {
      const p = await startServerProcess({ dir, config: { listen: '0.0.0.0:0' }, waitReady: false });
      const code = await p.exited;
      const out = p.output();
      assert.equal(code, 78, `exit code (config_invalid): ${out}`);
      assert.match(out, /0\.0\.0\.0:0 is not a loopback address/);
      assert.match(out, /tls/);
      assert.match(out, /allowInsecureHttp/);
      assert.doesNotMatch(out, /\n\s+at /, 'a readable message, not a stack trace');
      assert.doesNotMatch(out, /keyhaven server listening/);
    } finally {
      removeDir(dir);
    }
  });
});
