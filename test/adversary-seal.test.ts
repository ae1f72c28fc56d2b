import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { freshPostgresDatabase, POSTGRES_REASON } from './pg.js';
import { removeDir, runCli, cleanCliEnv, tempDir, waitFor } from './helpers.js';
import { requireDependency } from './require.js';
import { initSoftHsm, requireSoftHsm, SOFTHSM_MODULE } from './softhsm.js';
import { api, auditRecords, login, setupCast, startServerProcess, type Cast, type ServerProcess } from './server-helpers.js';

// Attacks on the operator seal: after `operator seal`, nobody but a
// security-admin (or, for shamir, the shares) opens the server again — not an
// anonymous caller, a wrong password, a key-admin, an auditor or an app, and
// not a restart. Each test fails if an attack unseals the server.

const PLAIN = Buffer.from('sealed away').toString('base64');

async function sealStatus(url: string): Promise<{ initialized: boolean; sealed: boolean; kind: string; sealedBy?: string; initConfirmed?: boolean }> {
  const r = await api(url, 'GET', '/v1/sys/seal-status');
  assert.equal(r.status, 200, r.text);
  return r.body;
}

/** The server is sealed by an operator and refuses crypto as sealed. */
async function assertStillSealed(url: string, cast: Cast, after: string): Promise<void> {
  const st = await sealStatus(url);
  assert.equal(st.sealed, true, `${after}: the server unsealed`);
  assert.equal(st.sealedBy, 'operator', `${after}: ${JSON.stringify(st)}`);
  const enc = await api(url, 'POST', `/v1/keys/${cast.key}/encrypt`, { token: cast.appKey, body: { plaintext: PLAIN } });
  assert.equal(enc.status, 503, `${after}: encrypt answered ${enc.status} ${enc.text}`);
  assert.equal(enc.body.error.code, 'sealed', after);
}

async function operatorSeal(url: string, token: string): Promise<void> {
  const r = await api(url, 'POST', '/v1/sys/seal', { token });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.body.sealed, true);
  assert.equal(r.body.sealedBy, 'operator');
}

/** Every way in that is not a security-admin's; each must be refused with a message naming the command. */
async function attack(url: string, cast: Cast): Promise<void> {
  const tries: Array<[string, { body?: unknown; token?: string }, number]> = [
    ['anonymous, no body', {}, 401],
    ['anonymous, empty object', { body: {} }, 401],
    ['anonymous, a made-up share', { body: { share: 'x'.repeat(40) } }, 401],
    ['wrong password of a security-admin', { body: { name: 'admin', password: 'not-the-password-at-all' } }, 401],
    ['unknown user', { body: { name: 'mallory', password: 'mallory-password-123' } }, 401],
    ['key-admin password', { body: { name: 'keyadmin', password: cast.passwords.keyadmin! } }, 403],
    ['auditor password', { body: { name: 'auditor', password: cast.passwords.auditor! } }, 403],
    ['key-admin session token', { token: cast.keyAdmin }, 403],
    ['auditor session token', { token: cast.auditor }, 403],
    ['app API key', { token: cast.appKey }, 403],
    ['forged token', { token: `khs_${'0'.repeat(16)}_${'A'.repeat(43)}` }, 401],
  ];
  for (const [what, req, status] of tries) {
    const r = await api(url, 'POST', '/v1/sys/unseal', req);
    assert.equal(r.status, status, `${what}: ${r.status} ${r.text}`);
    assert.match(r.body.error.message, /keyhaven operator unseal/, what);
    await assertStillSealed(url, cast, what);
  }
}

async function unsealAudit(url: string, auditorToken: string): Promise<Array<{ actor: string; result: string; details?: Record<string, unknown> }>> {
  const rows = await auditRecords(url, auditorToken, 'operation=sys.unseal');
  return rows.map((r) => ({ actor: r.actor, result: r.result, details: typeof r.details === 'string' ? JSON.parse(r.details) : r.details }));
}

describe('adversary: an operator seal stays shut (keyfile, SQLite)', () => {
  it('anonymous, wrong password, key-admin, auditor and app cannot unseal, not even through a restart; a security-admin can; each attempt is audited', async () => {
    const dir = tempDir('kh-adv-seal-');
    let s: ServerProcess | undefined;
    try {
      s = await startServerProcess({ dir });
      const cast = await setupCast(s.url);
      const enc = await api(s.url, 'POST', `/v1/keys/${cast.key}/encrypt`, { token: cast.appKey, body: { plaintext: PLAIN } });
      assert.equal(enc.status, 200, enc.text);

      await operatorSeal(s.url, cast.admin);
      await attack(s.url, cast);

      // A restart does not undo an operator seal.
      await s.stop();
      s = await startServerProcess({ dir });
      await assertStillSealed(s.url, cast, 'restart');
      assert.match(s.output(), /operator seal holds/);
      await attack(s.url, cast);

      // The security-admin lifts it with the CLI: name, and the password on stdin.
      const env = { ...cleanCliEnv(), KEYHAVEN_ADDR: s.url, XDG_CONFIG_HOME: join(dir, 'cli') };
      const lifted = await runCli(['operator', 'unseal', '--name', 'admin', '--password-stdin'], { env, input: `${cast.passwords.admin}\n` });
      assert.equal(lifted.code, 0, lifted.stderr);
      assert.match(lifted.stdout, /unsealed/);
      const st = await sealStatus(s.url);
      assert.equal(st.sealed, false);
      assert.equal(st.sealedBy, undefined);
      const dec = await api(s.url, 'POST', `/v1/keys/${cast.key}/decrypt`, { token: cast.appKey, body: { ciphertext: enc.body.ciphertext } });
      assert.equal(dec.status, 200, dec.text);
      assert.equal(dec.body.plaintext, PLAIN);

      // Lifted means lifted: the next restart unseals by itself again.
      await s.stop();
      s = await startServerProcess({ dir });
      assert.equal((await sealStatus(s.url)).sealed, false);

      // A security-admin's session token lifts it too (no password needed, no root key needed to check it).
      const admin2 = await login(s.url, 'admin2', cast.passwords.admin2!);
      await operatorSeal(s.url, admin2);
      await attack(s.url, cast);
      const byToken = await api(s.url, 'POST', '/v1/sys/unseal', { token: cast.admin3 });
      assert.equal(byToken.status, 200, byToken.text);
      assert.equal(byToken.body.sealed, false);

      // Every attempt is in the audit log with who tried.
      const auditor = await login(s.url, 'auditor', cast.passwords.auditor!);
      const rows = await unsealAudit(s.url, auditor);
      const refused = rows.filter((r) => r.result !== 'ok');
      assert.equal(refused.length, 3 * 11, `refused attempts audited: ${JSON.stringify(rows)}`);
      assert.ok(refused.some((r) => r.actor === 'anonymous' && r.details?.user === 'admin' && r.result === 'unauthenticated'), 'wrong password attributed to the name tried');
      for (const who of ['user:keyadmin', 'user:auditor', 'app:app1']) {
        assert.ok(refused.some((r) => r.actor === who && r.result === 'permission_denied'), `${who} refused and named`);
      }
      const lifts = rows.filter((r) => r.result === 'ok' && r.details?.operatorSealLifted === true);
      assert.deepEqual(lifts.map((r) => r.actor), ['user:admin', 'user:admin3']);
      const out = s.output();
      for (const pw of Object.values(cast.passwords)) assert.ok(!out.includes(pw), 'a password reached the log');
    } finally {
      await s?.stop();
      removeDir(dir);
    }
  });

  it('a shamir server: an operator seal is lifted by the shares, anonymously, as before', async () => {
    const dir = tempDir('kh-adv-seal-sh-');
    let s: ServerProcess | undefined;
    try {
      s = await startServerProcess({ dir, config: { seal: { shamir: {} } } });
      const init = await api(s.url, 'POST', '/v1/sys/init', { body: { shares: 3, threshold: 2 } });
      assert.equal(init.status, 200, init.text);
      for (const share of init.body.shares.slice(0, 2)) assert.equal((await api(s.url, 'POST', '/v1/sys/unseal', { body: { share } })).status, 200);
      const admin = await login(s.url, 'admin', init.body.admin.password);
      await operatorSeal(s.url, admin);
      const pw = await api(s.url, 'POST', '/v1/sys/unseal', { body: { name: 'admin', password: init.body.admin.password } });
      assert.equal(pw.status, 400, `a shamir server takes shares, not passwords: ${pw.text}`);
      assert.equal((await sealStatus(s.url)).sealed, true);
      for (const share of init.body.shares.slice(1, 3)) assert.equal((await api(s.url, 'POST', '/v1/sys/unseal', { body: { share } })).status, 200);
      const st = await sealStatus(s.url);
      assert.equal(st.sealed, false);
      assert.equal(st.sealedBy, undefined);
    } finally {
      await s?.stop();
      removeDir(dir);
    }
  });
});

describe('adversary: an operator seal seals every server sharing the database (PostgreSQL)', () => {
  it('server B seals itself when A is sealed, stays sealed to anonymous unseal, and opens again when a security-admin unseals A', async (t) => {
    const db = await freshPostgresDatabase();
    if (!requireDependency(t, db !== undefined, POSTGRES_REASON)) return;
    const dirA = tempDir('kh-adv-seal-pa-');
    const dirB = tempDir('kh-adv-seal-pb-');
    const servers: ServerProcess[] = [];
    try {
      // Both servers share the database and the root key file.
      const config = { storage: { postgres: { url: db!.url, poolSize: 2 } }, seal: { keyfile: { path: join(dirA, 'root.key') } }, scheduler: { interval: '1s' } };
      const start = async (dir: string) => {
        const p = await startServerProcess({ dir, config });
        servers.push(p);
        return p;
      };
      const a = await start(dirA);
      const cast = await setupCast(a.url);
      const b = await start(dirB);
      assert.equal((await sealStatus(b.url)).sealed, false);
      await operatorSeal(a.url, cast.admin);
      await waitFor(async () => ((await sealStatus(b.url)).sealed ? true : undefined), 'server B seals at its tick');
      await assertStillSealed(b.url, cast, 'B after A was sealed');
      await attack(b.url, cast);
      const lift = await api(a.url, 'POST', '/v1/sys/unseal', { body: { name: 'admin', password: cast.passwords.admin } });
      assert.equal(lift.status, 200, lift.text);
      await waitFor(async () => ((await sealStatus(b.url)).sealed ? undefined : true), 'server B unseals at its tick once the seal is lifted');
      const enc = await api(b.url, 'POST', `/v1/keys/${cast.key}/encrypt`, { token: cast.appKey, body: { plaintext: PLAIN } });
      assert.equal(enc.status, 200, enc.text);
    } finally {
      for (const p of servers) await p.stop();
      await db?.drop();
      removeDir(dirA);
      removeDir(dirB);
    }
  });
});

describe('adversary: an operator seal stays shut (pkcs11, SoftHSM2)', () => {
  it('restart and anonymous unseal keep it sealed; a security-admin opens it through the HSM', async (t) => {
    if (!requireSoftHsm(t)) return;
    const hsm = tempDir('kh-adv-seal-hsm-');
    const dir = tempDir('kh-adv-seal-hsmsrv-');
    const PIN = 'Pin#5791-seal';
    initSoftHsm(hsm, ['kh-adv-seal'], PIN, 'So#1111-officer');
    const config = { seal: { pkcs11: { module: SOFTHSM_MODULE, tokenLabel: 'kh-adv-seal', pinEnv: 'KH_PIN' } } };
    const env = { SOFTHSM2_CONF: join(hsm, 'softhsm2.conf'), KH_PIN: PIN };
    let s: ServerProcess | undefined;
    try {
      s = await startServerProcess({ dir, config, env });
      const cast = await setupCast(s.url);
      await operatorSeal(s.url, cast.admin);
      await attack(s.url, cast);
      await s.stop();
      s = await startServerProcess({ dir, config, env });
      await assertStillSealed(s.url, cast, 'pkcs11 restart');
      const anon = await api(s.url, 'POST', '/v1/sys/unseal', { body: {} });
      assert.equal(anon.status, 401, anon.text);
      const ok = await api(s.url, 'POST', '/v1/sys/unseal', { body: { name: 'admin', password: cast.passwords.admin } });
      assert.equal(ok.status, 200, ok.text);
      const enc = await api(s.url, 'POST', `/v1/keys/${cast.key}/encrypt`, { token: cast.appKey, body: { plaintext: PLAIN } });
      assert.equal(enc.status, 200, enc.text);
    } finally {
      await s?.stop();
      removeDir(dir);
      removeDir(hsm);
    }
  });
});
