import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { removeDir, tempDir } from './helpers.js';
import { requireDependency } from './require.js';
import { api, initServer, login, setupCast, startServerProcess, type ServerProcess } from './server-helpers.js';

// The three seal kinds, driven over HTTP against real server processes.

const SHAMIR = { seal: { shamir: {} } };

async function sealStatus(url: string) {
  const r = await api(url, 'GET', '/v1/sys/seal-status');
  assert.equal(r.status, 200, r.text);
  return r.body as { initialized: boolean; sealed: boolean; kind: string; threshold?: number; shares?: number; progress?: number; initConfirmed?: boolean };
}

async function unseal(url: string, share: string) {
  return api(url, 'POST', '/v1/sys/unseal', { body: { share } });
}

/** Everything but health, seal-status, init, unseal, openapi and metrics answers 503 sealed. */
async function assertSealedAnswers(url: string, token?: string): Promise<void> {
  const h = await api(url, 'GET', '/v1/sys/health');
  assert.equal(h.status, 503);
  assert.equal(h.body.sealed, true);
  for (const [method, path, body] of [
    ['GET', '/v1/keys', undefined],
    ['GET', '/v1/users', undefined],
    ['POST', '/v1/auth/login', { name: 'admin', password: 'whatever-password' }],
    ['POST', '/v1/keys/k1/encrypt', { plaintext: 'aGk=' }],
    ['GET', '/v1/audit/verify', undefined],
  ] as const) {
    const r = await api(url, method, path, { token, body });
    assert.equal(r.status, 503, `${method} ${path}: ${r.text}`);
    assert.equal(r.body.error.code, 'sealed', `${method} ${path}`);
  }
  assert.equal((await api(url, 'GET', '/v1/openapi.json')).status, 200);
  assert.equal((await api(url, 'GET', '/metrics')).status, 200);
}

describe('shamir seal over HTTP', () => {
  let s: ServerProcess;
  let other: ServerProcess;
  let shares: string[] = [];
  let foreign = '';
  let admin = { name: '', password: '' };

  before(async () => {
    [s, other] = await Promise.all([startServerProcess({ config: SHAMIR }), startServerProcess({ config: SHAMIR })]);
  });
  after(async () => {
    await Promise.all([s?.stop(), other?.stop()]);
    if (s) removeDir(s.dir);
    if (other) removeDir(other.dir);
  });

  it('an uninitialised server answers 503 to health and 503 sealed to other routes', async () => {
    assert.deepEqual(await sealStatus(s.url), { initialized: false, sealed: true, kind: 'shamir' });
    const h = await api(s.url, 'GET', '/v1/sys/health');
    assert.equal(h.status, 503);
    assert.equal(h.body.initialized, false);
    await assertSealedAnswers(s.url);
  });

  it('init {shares: 5, threshold: 3} hands out 5 distinct shares and an admin, and leaves the server sealed', async () => {
    const out = await initServer(s.url, { shares: 5, threshold: 3 });
    shares = out.shares ?? [];
    admin = out.admin;
    assert.equal(shares.length, 5);
    assert.equal(new Set(shares).size, 5);
    for (const sh of shares) assert.match(sh, /^khshare1-[A-Za-z0-9_-]+$/);
    assert.ok(admin.password.length >= 12);
    // Unconfirmed until the admin's first login (init may be redone until then: adversary-init.test.ts).
    assert.deepEqual(await sealStatus(s.url), { initialized: true, sealed: true, kind: 'shamir', threshold: 3, shares: 5, progress: 0, initConfirmed: false });
    await assertSealedAnswers(s.url);
    foreign = (await initServer(other.url, { shares: 5, threshold: 3 })).shares![0]!;
  });

  it('two shares leave it sealed; a foreign or garbage share is refused (400) without losing progress; the third unseals', async () => {
    let r = await unseal(s.url, shares[0]!);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.body.progress, 1);
    r = await unseal(s.url, shares[1]!);
    assert.equal(r.body.progress, 2);
    assert.equal(r.body.sealed, true);
    await assertSealedAnswers(s.url);

    for (const bad of [foreign, 'khshare1-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', 'not a share', shares[1]!.slice(0, -3) + (shares[1]!.endsWith('AAA') ? 'BBB' : 'AAA')]) {
      const refused = await unseal(s.url, bad);
      assert.equal(refused.status, 400, `${bad.slice(0, 16)}...: ${refused.text}`);
      assert.equal(refused.body.error.code, 'invalid_argument');
      if (bad.length > 20) assert.ok(!refused.text.includes(bad.slice(9)), 'the error does not echo the share');
      const st = await sealStatus(s.url);
      assert.equal(st.progress, 2, 'progress kept');
      assert.equal(st.sealed, true);
    }

    r = await unseal(s.url, shares[2]!);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.body.sealed, false);
    const h = await api(s.url, 'GET', '/v1/sys/health');
    assert.equal(h.status, 200);
    const tok = await login(s.url, admin.name, admin.password);
    const u = await api(s.url, 'POST', '/v1/users', { token: tok, body: { name: 'keeper', password: 'keeper-password-1', roles: ['auditor'] } });
    assert.equal(u.status, 200, u.text);
    // The login confirmed the init: it is once only from now on.
    assert.equal((await sealStatus(s.url)).initConfirmed, true);
    const again = await api(s.url, 'POST', '/v1/sys/init', { body: { shares: 5, threshold: 3 } });
    assert.equal(again.status, 409, 'init is once only once confirmed');
  });

  it('after a restart it is sealed again until three distinct shares (any three) are entered; data survives', async () => {
    await s.stop();
    s = await startServerProcess({ dir: s.dir, config: SHAMIR });
    assert.deepEqual(await sealStatus(s.url), { initialized: true, sealed: true, kind: 'shamir', threshold: 3, shares: 5, progress: 0, initConfirmed: true });
    await assertSealedAnswers(s.url);
    for (const [sh, progress] of [[shares[4]!, 1], [shares[3]!, 2]] as const) {
      const r = await unseal(s.url, sh);
      assert.equal(r.status, 200, r.text);
      assert.equal(r.body.progress, progress);
      assert.equal(r.body.sealed, true);
    }
    const r = await unseal(s.url, shares[1]!);
    assert.equal(r.body.sealed, false, r.text);
    const tok = await login(s.url, 'keeper', 'keeper-password-1');
    const v = await api(s.url, 'GET', '/v1/audit/verify', { token: tok });
    assert.equal(v.body.ok, true, JSON.stringify(v.body));
  });

  it('a share entered twice is refused (400 "this share was already entered") and the progress is kept', async () => {
    const tok = await login(s.url, admin.name, admin.password);
    assert.equal((await api(s.url, 'POST', '/v1/sys/seal', { token: tok, body: {} })).status, 200);
    assert.equal((await unseal(s.url, shares[2]!)).body.progress, 1);
    for (const again of [shares[2]!, `${shares[2]!}\n`]) {
      const dup = await unseal(s.url, again);
      assert.equal(dup.status, 400, dup.text);
      assert.equal(dup.body.error.code, 'invalid_argument');
      assert.match(dup.body.error.message, /^this share was already entered \(1 of 3 distinct shares in; progress kept\)/);
      assert.ok(!dup.text.includes(shares[2]!.slice(9)), 'the error does not echo the share');
    }
    const st = await sealStatus(s.url);
    assert.equal(st.progress, 1, 'progress kept');
    assert.equal(st.sealed, true);
    assert.equal((await unseal(s.url, shares[0]!)).body.progress, 2);
    assert.equal((await unseal(s.url, shares[4]!)).body.sealed, false);
  });

  it('seal by a security-admin: 503 everywhere but health, seal-status and unseal; only an admin may seal', async () => {
    const tok = await login(s.url, admin.name, admin.password);
    const auditor = await login(s.url, 'keeper', 'keeper-password-1');
    const denied = await api(s.url, 'POST', '/v1/sys/seal', { token: auditor, body: {} });
    assert.equal(denied.status, 403);
    assert.equal((await sealStatus(s.url)).sealed, false);
    const sealed = await api(s.url, 'POST', '/v1/sys/seal', { token: tok, body: {} });
    assert.equal(sealed.status, 200, sealed.text);
    assert.equal(sealed.body.sealed, true);
    await assertSealedAnswers(s.url, tok);
    assert.equal((await api(s.url, 'POST', '/v1/sys/seal', { token: tok, body: {} })).status, 503, 'sealing needs an unsealed server');
    assert.equal((await unseal(s.url, shares[0]!)).body.progress, 1);
    assert.equal((await unseal(s.url, shares[2]!)).body.progress, 2);
    assert.equal((await unseal(s.url, shares[3]!)).body.sealed, false);
    // Sessions are stored, so a token from before the seal works again.
    const who = await api(s.url, 'GET', '/v1/auth/whoami', { token: tok });
    assert.equal(who.status, 200, who.text);
  });

  it('POST /v1/sys/seal and /v1/sys/unseal work without a request body', async () => {
    const tok = await login(s.url, admin.name, admin.password);
    const sealed = await fetch(`${s.url}/v1/sys/seal`, { method: 'POST', headers: { authorization: `Bearer ${tok}` } });
    assert.equal(sealed.status, 200, await sealed.text());
    const un = await fetch(`${s.url}/v1/sys/unseal`, { method: 'POST' });
    assert.equal(un.status, 400, 'a shamir unseal without a share is refused as such');
    assert.match(await un.text(), /share is required/);
    for (const sh of shares.slice(0, 3)) await unseal(s.url, sh);
    assert.equal((await sealStatus(s.url)).sealed, false);
  });
});

describe('keyfile seal: refusals at start-up', () => {
  it('a database initialised with another root key file is refused with a readable error; a mismatched seal kind is refused', async () => {
    const [a, b] = await Promise.all([startServerProcess(), startServerProcess()]);
    try {
      await Promise.all([initServer(a.url), initServer(b.url)]);
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
    try {
      // A's database with B's root key.
      const mixed = tempDir('kh-mixed-');
      copyFileSync(join(a.dir, 'keyhaven.db'), join(mixed, 'keyhaven.db'));
      copyFileSync(join(b.dir, 'root.key'), join(mixed, 'root.key'));
      const wrong = await startServerProcess({ dir: mixed, waitReady: false });
      assert.equal(await wrong.exited, 78, wrong.output());
      assert.match(wrong.output(), /root key does not match this database/);
      assert.doesNotMatch(wrong.output(), /keyhaven server listening/);
      removeDir(mixed);

      // A keyfile database under a shamir configuration.
      const asShamir = await startServerProcess({ dir: a.dir, config: SHAMIR, waitReady: false });
      assert.equal(await asShamir.exited, 78, asShamir.output());
      assert.match(asShamir.output(), /initialised with the keyfile seal, but the configuration says shamir/);

      // The untouched store still starts with its own key.
      const again = await startServerProcess({ dir: a.dir });
      assert.equal((await api(again.url, 'GET', '/v1/sys/health')).status, 200);
      await again.stop();
    } finally {
      removeDir(a.dir);
      removeDir(b.dir);
    }
  });

  it('a shamir database under a keyfile configuration is refused', async () => {
    const s = await startServerProcess({ config: SHAMIR });
    try {
      await initServer(s.url, { shares: 3, threshold: 2 });
    } finally {
      await s.stop();
    }
    try {
      const k = await startServerProcess({ dir: s.dir, waitReady: false });
      assert.equal(await k.exited, 78, k.output());
      assert.match(k.output(), /initialised with the shamir seal, but the configuration says keyfile/);
      assert.ok(!existsSync(join(s.dir, 'root.key')), 'no root key file was made for it');
    } finally {
      removeDir(s.dir);
    }
  });
});

// SoftHSM2, a token in a temp folder of its own.
const MODULE = [process.env.SOFTHSM2_MODULE, '/usr/lib/softhsm/libsofthsm2.so', '/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so', '/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so']
  .filter((p): p is string => !!p)
  .find((p) => existsSync(p));
const HAS_UTIL = spawnSync('softhsm2-util', ['--version'], { stdio: 'ignore' }).status === 0;
const HAS_PKCS11JS = (() => {
  try {
    createRequire(import.meta.url)('pkcs11js');
    return true;
  } catch {
    return false;
  }
})();

describe('pkcs11 seal (SoftHSM2) over HTTP', () => {
  const PIN = 'Pin#2468-server';
  const WRONG = 'Wrong#1357-server';

  it('init, encrypt, restart (auto-unseal through the HSM), decrypt; a wrong PIN stops start-up once with a readable error that holds no PIN', async (t) => {
    if (!requireDependency(t, !!MODULE && HAS_UTIL && HAS_PKCS11JS, 'SoftHSM2 (libsofthsm2.so, softhsm2-util) and pkcs11js')) return;
    const hsm = tempDir('kh-hsm-');
    const dir = tempDir('kh-srv-hsm-');
    mkdirSync(join(hsm, 'tokens'));
    const conf = join(hsm, 'softhsm2.conf');
    writeFileSync(conf, `directories.tokendir = ${join(hsm, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`);
    execFileSync('softhsm2-util', ['--init-token', '--free', '--label', 'kh-server', '--pin', PIN, '--so-pin', 'So#9999-officer'], { stdio: 'pipe', env: { ...process.env, SOFTHSM2_CONF: conf } });
    const config = { seal: { pkcs11: { module: MODULE, tokenLabel: 'kh-server', pinEnv: 'KH_PIN', keyLabel: 'kh-root-wrap' } } };
    const env = (pin: string) => ({ SOFTHSM2_CONF: conf, KH_PIN: pin });
    let s = await startServerProcess({ dir, config, env: env(PIN) });
    try {
      assert.deepEqual(await sealStatus(s.url), { initialized: false, sealed: true, kind: 'pkcs11' });
      const cast = await setupCast(s.url);
      const enc = await api(s.url, 'POST', '/v1/keys/k1/encrypt', { token: cast.appKey, body: { plaintext: Buffer.from('through the hsm').toString('base64') } });
      assert.equal(enc.status, 200, enc.text);
      await s.stop();

      s = await startServerProcess({ dir, config, env: env(PIN) });
      assert.deepEqual(await sealStatus(s.url), { initialized: true, sealed: false, kind: 'pkcs11', initConfirmed: true });
      const dec = await api(s.url, 'POST', '/v1/keys/k1/decrypt', { token: cast.appKey, body: { ciphertext: enc.body.ciphertext } });
      assert.equal(dec.status, 200, dec.text);
      assert.equal(Buffer.from(dec.body.plaintext, 'base64').toString(), 'through the hsm');
      await s.stop();

      s = await startServerProcess({ dir, config, env: env(WRONG), waitReady: false });
      const code = await s.exited;
      const out = s.output();
      assert.notEqual(code, 0, out);
      assert.equal(code, 78, out);
      assert.equal(out.match(/refused the PIN/g)?.length, 1, `the PIN refusal is reported once:\n${out}`);
      assert.ok(!out.includes(WRONG) && !out.includes(PIN), `output shows a PIN:\n${out}`);
      assert.doesNotMatch(out, /keyhaven server listening/);

      // One refused login did not lock the token: the right PIN still works.
      s = await startServerProcess({ dir, config, env: env(PIN) });
      assert.equal((await api(s.url, 'GET', '/v1/sys/health')).status, 200);
    } finally {
      await s.stop();
      removeDir(dir);
      removeDir(hsm);
    }
  });
});
