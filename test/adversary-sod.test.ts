import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { removeDir } from './helpers.js';
import { api, auditRecords, initServer, login, startServerProcess, type ApiResult, type ServerProcess } from './server-helpers.js';

// Separation of duties under attack, against a real server process. One
// person holding one admin role tries every path to a credential that can
// decrypt a production app's ciphertext (native API, Vault Transit, Fortanix
// DSM). Each attack test ends by trying every credential the attacker holds
// against every dialect: it fails if any of them decrypts.

const b64 = (s: string) => Buffer.from(s).toString('base64');
const SECRET = 'the production secret';

/** Everything an attacker has collected: bearer tokens / API keys, and user name + password pairs. */
interface Loot {
  tokens: Set<string>;
  apiKeys: Map<string, string>; // app name -> API key (DSM wants "name:key" in Basic)
  passwords: Map<string, string>; // user -> password
}

describe('adversary: separation of duties (no single person can decrypt)', () => {
  let srv: ServerProcess;
  let url: string;
  let admin: string; // the lone security-admin's session
  let keyadmin: string; // the lone key-admin's session
  const pw: Record<string, string> = {};
  const pwOf = (n: string): string => pw[n] ?? assert.fail(`no password for ${n}`);
  // The victim: a production app granted k1, and its ciphertexts in each dialect.
  let victimKey: string;
  let ctNative: string;
  let ctVault: string;
  let ctDsm: { cipher: string; iv: string; tag: string; kid: string };

  const must = async (p: Promise<ApiResult>, status: number, what: string): Promise<ApiResult> => {
    const r = await p;
    assert.equal(r.status, status, `${what}: ${r.text.slice(0, 400)}`);
    return r;
  };
  const approve = (token: string, id: string) => api(url, 'POST', `/v1/approvals/${id}/approve`, { token, body: {} });
  const vault = (path: string, token: string, body: unknown) => api(url, 'POST', path, { body, headers: { 'x-vault-token': token } });
  const dsm = (path: string, authorization: string, body: unknown) => api(url, 'POST', path, { body, headers: { authorization } });

  /** Every way a credential might decrypt the victim's data; returns what worked (should be nothing). */
  const decryptsWith = async (loot: Loot): Promise<string[]> => {
    const won: string[] = [];
    const bearers = new Set(loot.tokens);
    const basics: string[] = [];
    for (const [app, key] of loot.apiKeys) {
      bearers.add(key);
      basics.push(`Basic ${b64(`${app}:${key}`)}`);
    }
    for (const [user, password] of loot.passwords) {
      const s = await api(url, 'POST', '/v1/auth/login', { body: { name: user, password } });
      if (s.status === 200) bearers.add(s.body.token);
      basics.push(`Basic ${b64(`${user}:${password}`)}`);
    }
    // DSM session auth turns Basic credentials into sessions: try those too.
    for (const basic of basics) {
      const s = await api(url, 'POST', '/sys/v1/session/auth', { headers: { authorization: basic } });
      if (s.status === 200 && typeof s.body.access_token === 'string') bearers.add(s.body.access_token);
    }
    const plain = (r: ApiResult, field: string) => r.status === 200 && JSON.stringify(r.body).includes(b64(SECRET)) ? field : undefined;
    for (const t of bearers) {
      const tag = `${t.slice(0, 8)}…`;
      const n = await api(url, 'POST', '/v1/keys/k1/decrypt', { token: t, body: { ciphertext: ctNative } });
      if (plain(n, 'native')) won.push(`native ${tag}`);
      const v = await vault('/v1/transit/decrypt/k1', t, { ciphertext: ctVault });
      if (v.status === 200 && v.body?.data?.plaintext === b64(SECRET)) won.push(`vault ${tag}`);
      const d = await dsm('/crypto/v1/decrypt', `Bearer ${t}`, { key: { kid: ctDsm.kid }, alg: 'AES', mode: 'GCM', cipher: ctDsm.cipher, iv: ctDsm.iv, tag: ctDsm.tag });
      if (d.status === 200 && d.body?.plain === b64(SECRET)) won.push(`dsm bearer ${tag}`);
    }
    for (const basic of basics) {
      const d = await dsm('/crypto/v1/decrypt', basic, { key: { kid: ctDsm.kid }, alg: 'AES', mode: 'GCM', cipher: ctDsm.cipher, iv: ctDsm.iv, tag: ctDsm.tag });
      if (d.status === 200 && d.body?.plain === b64(SECRET)) won.push('dsm basic');
    }
    return won;
  };
  const adminLoot: Loot = { tokens: new Set(), apiKeys: new Map(), passwords: new Map() };
  const keyAdminLoot: Loot = { tokens: new Set(), apiKeys: new Map(), passwords: new Map() };
  const assertNoDecryption = async (loot: Loot, who: string) => {
    assert.deepEqual(await decryptsWith(loot), [], `${who} obtained a credential that decrypts`);
  };

  before(async () => {
    srv = await startServerProcess();
    url = srv.url;
    const init = await initServer(url);
    assert.equal(init.keyAdmin.name, 'keyadmin');
    pw.admin = init.admin.password;
    pw.keyadmin = init.keyAdmin.password;
    admin = await login(url, 'admin', pw.admin);
    keyadmin = await login(url, 'keyadmin', pw.keyadmin);
    adminLoot.tokens.add(admin);
    adminLoot.passwords.set('admin', pw.admin);
    keyAdminLoot.tokens.add(keyadmin);
    keyAdminLoot.passwords.set('keyadmin', pw.keyadmin);
    // Two different people set up production: the admin makes the app, the key-admin grants it.
    await must(api(url, 'POST', '/v1/keys', { token: keyadmin, body: { name: 'k1' } }), 200, 'key');
    await must(api(url, 'POST', '/v1/keys', { token: keyadmin, body: { name: 'k2' } }), 200, 'key k2');
    const victim = await must(api(url, 'POST', '/v1/apps', { token: admin, body: { name: 'prod' } }), 200, 'app');
    victimKey = victim.body.apiKey;
    // The admin saw the key at creation: production rotates it (below) before use, through two people.
    await must(api(url, 'PUT', '/v1/apps/prod/grants/k1', { token: keyadmin, body: { operations: ['encrypt', 'decrypt'] } }), 200, 'grant');
    const filed = await must(api(url, 'POST', '/v1/apps/prod/rotate-key', { token: admin, body: {} }), 202, 'rotate prod');
    // The key-admin approves, but the new key goes to the requester: production hands the
    // key to the cluster's operator. Here the test itself plays that operator.
    await must(approve(keyadmin, filed.body.approval.id), 200, 'approve rotation');
    victimKey = (await must(api(url, 'POST', `/v1/approvals/${filed.body.approval.id}/collect`, { token: admin, body: {} }), 200, 'collect')).body.apiKey;
    ctNative = (await must(api(url, 'POST', '/v1/keys/k1/encrypt', { token: victimKey, body: { plaintext: b64(SECRET) } }), 200, 'encrypt')).body.ciphertext;
    ctVault = (await must(vault('/v1/transit/encrypt/k1', victimKey, { plaintext: b64(SECRET) }), 200, 'vault encrypt')).body.data.ciphertext;
    const d = await must(dsm('/crypto/v1/encrypt', `Basic ${b64(`prod:${victimKey}`)}`, { key: { name: 'k1' }, alg: 'AES', mode: 'GCM', plain: b64(SECRET) }), 200, 'dsm encrypt');
    ctDsm = { cipher: d.body.cipher, iv: d.body.iv, tag: d.body.tag, kid: d.body.kid };
    // The oracle works: the victim's key decrypts in every dialect.
    const works = await decryptsWith({ tokens: new Set([victimKey]), apiKeys: new Map([['prod', victimKey]]), passwords: new Map() });
    assert.deepEqual([...new Set(works.map((w) => w.split(' ')[0]))].sort(), ['dsm', 'native', 'vault'], works.join(', '));
    assert.ok(works.includes('dsm basic'), works.join(', '));
  });

  after(async () => {
    await srv?.stop();
    if (srv) removeDir(srv.dir);
  });

  describe('a lone security-admin', () => {
    it('creates an app and grants it: the grant is the key-admin\'s (403), directly or through a quorum request', async () => {
      const made = await must(api(url, 'POST', '/v1/apps', { token: admin, body: { name: 'evil-app' } }), 200, 'create app');
      adminLoot.apiKeys.set('evil-app', made.body.apiKey);
      const g = await api(url, 'PUT', '/v1/apps/evil-app/grants/k1', { token: admin, body: { operations: ['decrypt'] } });
      assert.equal(g.status, 403, g.text);
      // Even with a policy that covers grants, a security-admin cannot file one.
      await must(api(url, 'PUT', '/v1/sys/quorum', { token: admin, body: { required: 1, operations: ['app.grant'], ttlS: 3600 } }), 200, 'policy');
      assert.equal((await api(url, 'PUT', '/v1/apps/evil-app/grants/k1', { token: admin, body: { operations: ['decrypt'] } })).status, 403);
      await must(api(url, 'PUT', '/v1/sys/quorum', { token: admin, body: { required: 0, operations: ['app.grant'], ttlS: 3600 } }), 200, 'policy off');
      // An mTLS certificate of their own on a new app gives no grant either.
      const cert = await must(api(url, 'POST', '/v1/apps', { token: admin, body: { name: 'evil-mtls', certFingerprint: 'ab'.repeat(32) } }), 200, 'mtls app');
      adminLoot.apiKeys.set('evil-mtls', cert.body.apiKey);
      await assertNoDecryption(adminLoot, 'the security-admin');
    });

    it('creates a user with key-admin (a puppet whose password they chose) and logs in as it: no role without another key-admin\'s yes', async () => {
      pw.puppet = 'puppet-password-1';
      const r = await must(api(url, 'POST', '/v1/users', { token: admin, body: { name: 'puppet', password: pw.puppet, roles: ['key-admin'] } }), 202, 'create puppet');
      assert.deepEqual(r.body.user.roles, []);
      assert.equal(r.body.approval.operation, 'admin.add');
      assert.equal(r.body.approval.required, 1);
      assert.deepEqual(r.body.approval.approverRoles, ['key-admin']);
      adminLoot.passwords.set('puppet', pw.puppet);
      const puppet = await login(url, 'puppet', pwOf('puppet'));
      adminLoot.tokens.add(puppet);
      const id = r.body.approval.id as string;
      // Self-approval, approval by the puppet (the target, and no role), approval by another puppet.
      assert.equal((await approve(admin, id)).status, 403, 'requester approves');
      assert.equal((await approve(puppet, id)).status, 403, 'target approves');
      assert.equal((await api(url, 'PUT', '/v1/apps/evil-app/grants/k1', { token: puppet, body: { operations: ['decrypt'] } })).status, 403);
      const who = await must(api(url, 'GET', '/v1/auth/whoami', { token: puppet }), 200, 'whoami');
      assert.deepEqual(who.body.roles, []);
      await assertNoDecryption(adminLoot, 'the security-admin');
    });

    it('creates a user holding both admin roles: refused, and nobody is created', async () => {
      const r = await api(url, 'POST', '/v1/users', { token: admin, body: { name: 'both', password: 'both-password-12', roles: ['security-admin', 'key-admin'] } });
      assert.equal(r.status, 409, r.text);
      assert.equal(r.body.error.code, 'failed_precondition');
      assert.match(r.body.error.message, /both security-admin and key-admin/);
      assert.equal((await api(url, 'POST', '/v1/auth/login', { body: { name: 'both', password: 'both-password-12' } })).status, 401);
      // Nor by role change (the admin2 below holds security-admin).
      const rc = await api(url, 'PUT', '/v1/users/puppet/roles', { token: admin, body: { roles: ['security-admin', 'key-admin'] } });
      assert.equal(rc.status, 409, rc.text);
    });

    it('adds key-admin to an existing user: a request only, which they cannot approve', async () => {
      pw.puppet2 = 'puppet2-password-1';
      await must(api(url, 'POST', '/v1/users', { token: admin, body: { name: 'puppet2', password: pw.puppet2, roles: [] } }), 200, 'plain user');
      adminLoot.passwords.set('puppet2', pw.puppet2);
      const r = await must(api(url, 'PUT', '/v1/users/puppet2/roles', { token: admin, body: { roles: ['key-admin'] } }), 202, 'add key-admin');
      assert.equal((await approve(admin, r.body.approval.id)).status, 403);
      // The puppets cannot approve each other's requests.
      const p1 = await login(url, 'puppet', pwOf('puppet'));
      assert.equal((await approve(p1, r.body.approval.id)).status, 403);
      await assertNoDecryption(adminLoot, 'the security-admin');
    });

    it('resets the key-admin\'s password to log in as them: needs an admin other than requester and target; with none, never happens', async () => {
      const r = await must(api(url, 'PUT', '/v1/users/keyadmin/password', { token: admin, body: { password: 'taken-over-password-1' } }), 202, 'reset');
      assert.equal(r.body.approval.operation, 'user.reset-password');
      assert.doesNotMatch(JSON.stringify(r.body), /taken-over-password-1/, 'the password is not in the request');
      assert.equal((await approve(admin, r.body.approval.id)).status, 403);
      assert.equal((await approve(keyadmin, r.body.approval.id)).status, 403, 'the target does not approve their own reset');
      adminLoot.passwords.set('keyadmin', 'taken-over-password-1');
      assert.equal((await api(url, 'POST', '/v1/auth/login', { body: { name: 'keyadmin', password: 'taken-over-password-1' } })).status, 401);
      // The key-admin's session still works: nothing was reset.
      assert.equal((await api(url, 'GET', '/v1/auth/whoami', { token: keyadmin })).status, 200);
      // Withdrawn, so its sealed password hash is dropped.
      await must(api(url, 'POST', `/v1/approvals/${r.body.approval.id}/deny`, { token: admin, body: {} }), 200, 'withdraw');
      // A user waiting for an admin role counts as an admin: resetting puppet2's password is not direct.
      const pr = await must(api(url, 'PUT', '/v1/users/puppet2/password', { token: admin, body: { password: 'puppet2-password-2' } }), 202, 'reset pending admin');
      await must(api(url, 'POST', `/v1/approvals/${pr.body.approval.id}/deny`, { token: admin, body: {} }), 200, 'withdraw');
      await assertNoDecryption(adminLoot, 'the security-admin');
    });

    it('rotates the production app\'s key: only a request; the old key keeps working; nothing to collect', async () => {
      const r = await must(api(url, 'POST', '/v1/apps/prod/rotate-key', { token: admin, body: {} }), 202, 'rotate');
      assert.deepEqual(r.body.approval.approverRoles, ['key-admin']);
      assert.equal((await approve(admin, r.body.approval.id)).status, 403);
      const c = await api(url, 'POST', `/v1/approvals/${r.body.approval.id}/collect`, { token: admin, body: {} });
      assert.equal(c.status, 404, c.text);
      assert.doesNotMatch(c.text, /kha_/);
      // No outage while waiting.
      assert.equal((await api(url, 'POST', '/v1/keys/k1/decrypt', { token: victimKey, body: { ciphertext: ctNative } })).status, 200);
      await must(api(url, 'POST', `/v1/approvals/${r.body.approval.id}/deny`, { token: admin, body: {} }), 200, 'withdraw');
      await assertNoDecryption(adminLoot, 'the security-admin');
    });

    it('turns the quorum policy off or rewrites it, then retries every path: the floor stays', async () => {
      for (const policy of [{ required: 0, operations: [], ttlS: 3600 }, { required: 0, operations: ['admin.add', 'app.rotate-key', 'app.grant', 'quorum.set'], ttlS: 60 }]) {
        await must(api(url, 'PUT', '/v1/sys/quorum', { token: admin, body: policy }), 200, 'policy');
        assert.equal((await api(url, 'POST', '/v1/apps/prod/rotate-key', { token: admin, body: {} })).status, 202);
        assert.equal((await api(url, 'PUT', '/v1/users/puppet/roles', { token: admin, body: { roles: ['key-admin'] } })).status, 202);
        assert.equal((await api(url, 'PUT', '/v1/users/keyadmin/password', { token: admin, body: { password: 'taken-over-password-2' } })).status, 202);
        assert.equal((await api(url, 'PUT', '/v1/apps/evil-app/grants/k1', { token: admin, body: { operations: ['decrypt'] } })).status, 403);
        const made = await api(url, 'POST', '/v1/users', { token: admin, body: { name: `p-${policy.ttlS}`, password: 'p-password-12345', roles: ['key-admin'] } });
        assert.equal(made.status, 202, made.text);
        adminLoot.passwords.set(`p-${policy.ttlS}`, 'p-password-12345');
      }
      adminLoot.passwords.set('keyadmin', 'taken-over-password-2');
      // Withdraw everything pending so later tests start clean.
      const pending = await must(api(url, 'GET', '/v1/approvals?state=pending', { token: admin }), 200, 'pending');
      for (const a of pending.body.approvals) if (a.requester === 'user:admin') await must(api(url, 'POST', `/v1/approvals/${a.id}/deny`, { token: admin, body: {} }), 200, 'withdraw');
      await assertNoDecryption(adminLoot, 'the security-admin');
    });

    it('deletes a user whose admin role waits for approval and makes a puppet of the same name: the approval does not carry over', async () => {
      await must(api(url, 'POST', '/v1/users', { token: admin, body: { name: 'bob', password: 'bob-own-password-1', roles: [] } }), 200, 'bob');
      const r = await must(api(url, 'PUT', '/v1/users/bob/roles', { token: admin, body: { roles: ['key-admin'] } }), 202, 'key-admin for bob');
      await must(api(url, 'DELETE', '/v1/users/bob', { token: admin }), 200, 'delete bob');
      await must(api(url, 'POST', '/v1/users', { token: admin, body: { name: 'bob', password: 'bob-puppet-password', roles: [] } }), 200, 'puppet bob');
      adminLoot.passwords.set('bob', 'bob-puppet-password');
      // The key-admin approves what they believe is the real bob.
      const a = await must(approve(keyadmin, r.body.approval.id), 200, 'approve');
      assert.equal(a.body.state, 'failed', JSON.stringify(a.body));
      const bob = await login(url, 'bob', 'bob-puppet-password');
      assert.deepEqual((await api(url, 'GET', '/v1/auth/whoami', { token: bob })).body.roles, []);
      await assertNoDecryption(adminLoot, 'the security-admin');
    });

    it('the same through the Vault and DSM APIs: their tokens and sessions carry no grant', async () => {
      // Vault: the admin's session as X-Vault-Token; DSM: admin Basic login and the evil app's key.
      for (const t of [admin, adminLoot.apiKeys.get('evil-app')!]) {
        const v = await vault('/v1/transit/decrypt/k1', t, { ciphertext: ctVault });
        assert.ok(v.status === 403 || v.status === 400, `vault decrypt: ${v.status} ${v.text}`);
        assert.doesNotMatch(v.text, new RegExp(b64(SECRET)));
      }
      const s = await must(api(url, 'POST', '/sys/v1/session/auth', { headers: { authorization: `Basic ${b64(`admin:${pw.admin}`)}` } }), 200, 'dsm admin session');
      const d = await dsm('/crypto/v1/decrypt', `Bearer ${s.body.access_token}`, { key: { kid: ctDsm.kid }, alg: 'AES', mode: 'GCM', cipher: ctDsm.cipher, iv: ctDsm.iv, tag: ctDsm.tag });
      assert.equal(d.status, 403, d.text);
      // The compatibility APIs have no route that makes principals, grants or keys for apps.
      for (const [path, body] of [
        ['/v1/auth/token/create', {}],
        ['/v1/sys/policies/acl/evil', { policy: 'path "transit/*" { capabilities = ["update"] }' }],
        ['/sys/v1/apps', { name: 'dsm-evil' }],
        ['/sys/v1/session/reauth', {}],
      ] as const) {
        const r = await api(url, 'POST', path, { body, headers: { 'x-vault-token': admin, authorization: `Bearer ${s.body.access_token}` } });
        assert.ok(r.status === 404 || r.status === 405, `${path}: ${r.status} ${r.text.slice(0, 200)}`);
      }
      await assertNoDecryption(adminLoot, 'the security-admin');
    });
  });

  describe('a lone key-admin', () => {
    it('cannot create apps, rotate app keys, create users or reset passwords', async () => {
      const refused: [string, string, unknown][] = [
        ['POST', '/v1/apps', { name: 'ka-app' }],
        ['POST', '/v1/apps/prod/rotate-key', {}],
        ['POST', '/v1/users', { name: 'ka-puppet', password: 'ka-puppet-password', roles: [] }],
        ['PUT', '/v1/users/admin/password', { password: 'ka-took-the-admin' }],
        ['PUT', '/v1/users/puppet/password', { password: 'ka-took-puppet-1' }],
        ['PUT', '/v1/users/puppet/roles', { roles: ['key-admin'] }],
        ['POST', '/v1/users/admin/disable', {}],
        ['PUT', '/v1/sys/quorum', { required: 0, operations: [], ttlS: 3600 }],
      ];
      for (const [method, path, body] of refused) {
        const r = await api(url, method, path, { token: keyadmin, body });
        assert.equal(r.status, 403, `${method} ${path}: ${r.text}`);
      }
      keyAdminLoot.passwords.set('admin', 'ka-took-the-admin');
      keyAdminLoot.passwords.set('puppet', 'ka-took-puppet-1');
      // It grants decrypt to an app it has no credential for: no use to it.
      await must(api(url, 'PUT', '/v1/apps/evil-app/grants/k1', { token: keyadmin, body: { operations: ['decrypt'] } }), 200, 'grant');
      await assertNoDecryption(keyAdminLoot, 'the key-admin');
      await must(api(url, 'DELETE', '/v1/apps/evil-app/grants/k1', { token: keyadmin }), 200, 'revoke');
    });

    it('approves a rotation it wants to collect: only the requester collects', async () => {
      const r = await must(api(url, 'POST', '/v1/apps/prod/rotate-key', { token: admin, body: {} }), 202, 'rotate');
      const a = await must(approve(keyadmin, r.body.approval.id), 200, 'approve');
      assert.equal(a.body.state, 'executed');
      const c = await api(url, 'POST', `/v1/approvals/${r.body.approval.id}/collect`, { token: keyadmin, body: {} });
      assert.equal(c.status, 403, c.text);
      assert.doesNotMatch(c.text + JSON.stringify(a.body), /kha_/);
      await assertNoDecryption(keyAdminLoot, 'the key-admin');
      // Production continues with the key the requester collects.
      victimKey = (await must(api(url, 'POST', `/v1/approvals/${r.body.approval.id}/collect`, { token: admin, body: {} }), 200, 'collect')).body.apiKey;
    });

    it('approves its own request: refused', async () => {
      await must(api(url, 'PUT', '/v1/sys/quorum', { token: admin, body: { required: 1, operations: ['key.disable', 'key.destroy', 'app.grant'], ttlS: 3600 } }), 200, 'policy');
      const r = await must(api(url, 'PUT', '/v1/apps/evil-app/grants/k1', { token: keyadmin, body: { operations: ['decrypt'] } }), 202, 'grant request');
      assert.equal((await approve(keyadmin, r.body.approval.id)).status, 403);
      // A security-admin cannot approve a grant either.
      assert.equal((await approve(admin, r.body.approval.id)).status, 403);
      await must(api(url, 'POST', `/v1/approvals/${r.body.approval.id}/deny`, { token: keyadmin, body: {} }), 200, 'withdraw');
      await assertNoDecryption(keyAdminLoot, 'the key-admin');
    });
  });

  describe('two different people together', () => {
    let ka2: string;

    it('the admin requests a new key-admin and the key-admin approves: it works', async () => {
      pw.ka2 = 'second-key-admin-1';
      const r = await must(api(url, 'POST', '/v1/users', { token: admin, body: { name: 'ka2', password: pw.ka2, roles: ['key-admin'] } }), 202, 'create ka2');
      const a = await must(approve(keyadmin, r.body.approval.id), 200, 'approve');
      assert.equal(a.body.state, 'executed', JSON.stringify(a.body));
      ka2 = await login(url, 'ka2', pwOf('ka2'));
      assert.deepEqual((await api(url, 'GET', '/v1/auth/whoami', { token: ka2 })).body.roles, ['key-admin']);
    });

    it('the admin creates an app and a key-admin grants it: the app decrypts', async () => {
      await must(api(url, 'PUT', '/v1/sys/quorum', { token: admin, body: { required: 0, operations: [], ttlS: 3600 } }), 200, 'policy off');
      const made = await must(api(url, 'POST', '/v1/apps', { token: admin, body: { name: 'team-app' } }), 200, 'app');
      await must(api(url, 'PUT', '/v1/apps/team-app/grants/k1', { token: ka2, body: { operations: ['decrypt'] } }), 200, 'grant');
      const d = await must(api(url, 'POST', '/v1/keys/k1/decrypt', { token: made.body.apiKey, body: { ciphertext: ctNative } }), 200, 'decrypt');
      assert.equal(d.body.plaintext, b64(SECRET));
    });

    it('undo needs the same approval: enabling a key whose disable was approved, cancelling an approved destruction', async () => {
      await must(api(url, 'PUT', '/v1/sys/quorum', { token: admin, body: { required: 1, operations: ['key.disable', 'key.destroy'], ttlS: 3600 } }), 200, 'policy');
      const state = async () => (await api(url, 'GET', '/v1/keys/k2', { token: keyadmin })).body.state as string;
      const dis = await must(api(url, 'POST', '/v1/keys/k2/disable', { token: keyadmin, body: {} }), 202, 'disable');
      await must(approve(ka2, dis.body.approval.id), 200, 'approve disable');
      assert.equal(await state(), 'disabled');
      // A single key-admin re-enabling it: a request, which they cannot approve themselves.
      const en = await must(api(url, 'POST', '/v1/keys/k2/enable', { token: keyadmin, body: {} }), 202, 'enable');
      assert.equal(en.body.approval.operation, 'key.enable');
      assert.equal((await approve(keyadmin, en.body.approval.id)).status, 403);
      assert.equal(await state(), 'disabled');
      assert.equal((await approve(ka2, en.body.approval.id)).body.state, 'executed');
      assert.equal(await state(), 'enabled');
      const des = await must(api(url, 'POST', '/v1/keys/k2/destroy', { token: keyadmin, body: { pendingDays: 7 } }), 202, 'destroy');
      await must(approve(ka2, des.body.approval.id), 200, 'approve destroy');
      assert.equal(await state(), 'pending_destruction');
      const cancel = await must(api(url, 'POST', '/v1/keys/k2/cancel-destroy', { token: ka2, body: {} }), 202, 'cancel');
      assert.equal(cancel.body.approval.operation, 'key.destroy.cancel');
      assert.equal((await approve(ka2, cancel.body.approval.id)).status, 403);
      assert.equal(await state(), 'pending_destruction');
      assert.equal((await approve(keyadmin, cancel.body.approval.id)).body.state, 'executed');
      assert.equal(await state(), 'disabled');
      // Taking access away is never delayed: revoking a grant is immediate under any policy.
      await must(api(url, 'PUT', '/v1/sys/quorum', { token: admin, body: { required: 1, operations: ['app.grant', 'key.disable', 'key.destroy'], ttlS: 3600 } }), 200, 'policy');
      await must(api(url, 'DELETE', '/v1/apps/team-app/grants/k1', { token: ka2 }), 200, 'revoke at once');
      await must(api(url, 'PUT', '/v1/sys/quorum', { token: admin, body: { required: 0, operations: [], ttlS: 3600 } }), 200, 'policy off');
    });

    it('roles at creation follow the role-change policy, auditor included', async () => {
      await must(api(url, 'PUT', '/v1/sys/quorum', { token: admin, body: { required: 1, operations: ['admin.add'], ttlS: 3600 } }), 200, 'policy');
      const r = await must(api(url, 'POST', '/v1/users', { token: admin, body: { name: 'aud1', password: 'auditor-one-pass', roles: ['auditor'] } }), 202, 'auditor under policy');
      assert.deepEqual(r.body.user.roles, []);
      assert.equal(r.body.approval.required, 1);
      const rc = await must(api(url, 'PUT', '/v1/users/puppet2/roles', { token: admin, body: { roles: ['auditor'] } }), 202, 'auditor by role change');
      assert.equal(rc.body.approval.operation, 'admin.add');
      await must(api(url, 'PUT', '/v1/sys/quorum', { token: admin, body: { required: 0, operations: [], ttlS: 3600 } }), 200, 'policy off');
      const direct = await must(api(url, 'POST', '/v1/users', { token: admin, body: { name: 'aud2', password: 'auditor-two-pass', roles: ['auditor'] } }), 200, 'auditor without policy');
      assert.deepEqual(direct.body.roles, ['auditor']);
      // Admin roles at creation hit the floor even with no policy (seen above); security-admin is approved by... the only other admin.
      const sa = await must(api(url, 'POST', '/v1/users', { token: admin, body: { name: 'admin2', password: 'second-admin-pass', roles: ['security-admin'] } }), 202, 'admin2');
      assert.deepEqual(sa.body.approval.approverRoles.sort(), ['key-admin', 'security-admin']);
      assert.equal((await approve(keyadmin, sa.body.approval.id)).body.state, 'executed');
      pw.admin2 = 'second-admin-pass';
    });
  });

  describe('user lifecycle', () => {
    it('disable ends the user\'s sessions at once; enable lets them sign in again; never yourself', async () => {
      await must(api(url, 'POST', '/v1/users', { token: admin, body: { name: 'carol', password: 'carol-password-1', roles: [] } }), 200, 'carol');
      const s1 = await login(url, 'carol', 'carol-password-1');
      const s2 = await login(url, 'carol', 'carol-password-1');
      const off = await must(api(url, 'POST', '/v1/users/carol/disable', { token: admin, body: {} }), 200, 'disable');
      assert.equal(off.body.state, 'disabled');
      for (const s of [s1, s2]) assert.equal((await api(url, 'GET', '/v1/auth/whoami', { token: s })).status, 401);
      assert.equal((await api(url, 'POST', '/v1/auth/login', { body: { name: 'carol', password: 'carol-password-1' } })).status, 401);
      await must(api(url, 'POST', '/v1/users/carol/enable', { token: admin, body: {} }), 200, 'enable');
      assert.equal((await api(url, 'GET', '/v1/auth/whoami', { token: s1 })).status, 401, 'old sessions stay ended');
      await login(url, 'carol', 'carol-password-1');
      for (const verb of ['disable', 'enable']) {
        const r = await api(url, 'POST', `/v1/users/admin/${verb}`, { token: admin, body: {} });
        assert.equal(r.status, 403, r.text);
      }
      assert.equal((await api(url, 'DELETE', '/v1/users/admin', { token: admin })).status, 403);
    });

    it('delete removes the user and their credentials; the name is free again', async () => {
      const s = await login(url, 'carol', 'carol-password-1');
      await must(api(url, 'DELETE', '/v1/users/carol', { token: admin }), 200, 'delete');
      assert.equal((await api(url, 'GET', '/v1/auth/whoami', { token: s })).status, 401);
      assert.equal((await api(url, 'POST', '/v1/auth/login', { body: { name: 'carol', password: 'carol-password-1' } })).status, 401);
      assert.equal((await api(url, 'DELETE', '/v1/users/carol', { token: admin })).status, 404);
      await must(api(url, 'POST', '/v1/users', { token: admin, body: { name: 'carol', password: 'carol-password-2', roles: [] } }), 200, 'again');
    });

    it('changing your own password ends your other sessions, keeps this one', async () => {
      const here = await login(url, 'carol', 'carol-password-2');
      const there = await login(url, 'carol', 'carol-password-2');
      const wrong = await api(url, 'PUT', '/v1/auth/password', { token: here, body: { currentPassword: 'not-it-at-all', newPassword: 'carol-password-3' } });
      assert.equal(wrong.status, 403, wrong.text);
      await must(api(url, 'PUT', '/v1/auth/password', { token: here, body: { currentPassword: 'carol-password-2', newPassword: 'carol-password-3' } }), 200, 'change');
      assert.equal((await api(url, 'GET', '/v1/auth/whoami', { token: here })).status, 200);
      assert.equal((await api(url, 'GET', '/v1/auth/whoami', { token: there })).status, 401);
      assert.equal((await api(url, 'POST', '/v1/auth/login', { body: { name: 'carol', password: 'carol-password-2' } })).status, 401);
      await login(url, 'carol', 'carol-password-3');
      // An app has no password to change.
      assert.equal((await api(url, 'PUT', '/v1/auth/password', { token: victimKey, body: { currentPassword: 'x', newPassword: 'whatever-long-1' } })).status, 403);
    });

    it('a reset by a security-admin ends the target\'s sessions; an admin target needs another admin, and then works', async () => {
      const s = await login(url, 'carol', 'carol-password-3');
      await must(api(url, 'PUT', '/v1/users/carol/password', { token: admin, body: { password: 'carol-password-4' } }), 200, 'reset plain user');
      assert.equal((await api(url, 'GET', '/v1/auth/whoami', { token: s })).status, 401);
      await login(url, 'carol', 'carol-password-4');
      // ka2 forgot their password: admin asks, keyadmin (neither requester nor target) approves.
      const kaSession = await login(url, 'ka2', pwOf('ka2'));
      const r = await must(api(url, 'PUT', '/v1/users/ka2/password', { token: admin, body: { password: 'ka2-new-password' } }), 202, 'reset ka2');
      assert.equal((await approve(kaSession, r.body.approval.id)).status, 403, 'the target approves');
      assert.equal((await approve(keyadmin, r.body.approval.id)).body.state, 'executed');
      assert.equal((await api(url, 'GET', '/v1/auth/whoami', { token: kaSession })).status, 401);
      await login(url, 'ka2', 'ka2-new-password');
    });

    it('every lifecycle change is in the audit log, without passwords', async () => {
      const aud = await login(url, 'aud2', 'auditor-two-pass');
      const rows = await auditRecords(url, aud);
      const r = { text: rows.map((x) => JSON.stringify(x)).join('\n') };
      for (const op of ['user.disable', 'user.enable', 'user.delete', 'user.password', 'user.reset-password']) {
        assert.ok(rows.some((x) => x.operation === op && x.result === 'ok' && x.actor.startsWith('user:')), `no ok ${op} record`);
      }
      for (const pwd of ['carol-password-3', 'carol-password-4', 'ka2-new-password', 'taken-over-password-1']) assert.ok(!r.text.includes(pwd), 'a password in the audit log');
    });

    it('bad input on every new route: clear errors, the server keeps running', async () => {
      const cases: [string, string, unknown, number, string][] = [
        ['POST', '/v1/users/nobody/disable', {}, 404, 'not_found'],
        ['POST', '/v1/users/prod/disable', {}, 400, 'invalid_argument'],
        ['POST', '/v1/users/Bad%20Name/enable', {}, 400, 'invalid_argument'],
        ['DELETE', '/v1/users/nobody', undefined, 404, 'not_found'],
        ['DELETE', '/v1/users/prod', undefined, 400, 'invalid_argument'],
        ['PUT', '/v1/users/carol/password', { password: 'short' }, 400, 'invalid_argument'],
        ['PUT', '/v1/users/carol/password', {}, 400, 'invalid_argument'],
        ['PUT', '/v1/users/carol/password', { password: 'x'.repeat(2000) }, 400, 'invalid_argument'],
        ['PUT', '/v1/users/prod/password', { password: 'a-long-password-1' }, 400, 'invalid_argument'],
        ['PUT', '/v1/users/nobody/password', { password: 'a-long-password-1' }, 404, 'not_found'],
        ['PUT', '/v1/users/admin/password', { password: 'a-long-password-1' }, 403, 'permission_denied'],
        ['PUT', '/v1/auth/password', { currentPassword: pw.admin, newPassword: 'short' }, 400, 'invalid_argument'],
        ['PUT', '/v1/auth/password', { currentPassword: pw.admin }, 400, 'invalid_argument'],
        ['POST', '/v1/sys/init', { keyAdminName: 'Not A Name' }, 400, 'invalid_argument'],
      ];
      for (const [method, path, body, status, code] of cases) {
        const r = await api(url, method, path, { token: admin, body });
        assert.equal(r.status, status, `${method} ${path}: ${r.text}`);
        assert.equal(r.body.error.code, code, `${method} ${path}`);
        assert.doesNotMatch(r.text, /a-long-password-1|short"/, 'no password in the error');
      }
      assert.equal((await api(url, 'GET', '/v1/sys/health')).status, 200);
    });
  });
});

describe('adversary: the last active security-admin', () => {
  let srv: ServerProcess;

  after(async () => {
    await srv?.stop();
    if (srv) removeDir(srv.dir);
  });

  it('two security-admins disabling each other at once leave one active', async () => {
    srv = await startServerProcess();
    const url = srv.url;
    const init = await initServer(url);
    const admin = await login(url, 'admin', init.admin.password);
    const keyadmin = await login(url, 'keyadmin', init.keyAdmin.password);
    const r = await api(url, 'POST', '/v1/users', { token: admin, body: { name: 'admin2', password: 'admin2-password-1', roles: ['security-admin'] } });
    assert.equal(r.status, 202, r.text);
    assert.equal((await api(url, 'POST', `/v1/approvals/${r.body.approval.id}/approve`, { token: keyadmin, body: {} })).body.state, 'executed');
    const admin2 = await login(url, 'admin2', 'admin2-password-1');
    const [a, b] = await Promise.all([
      api(url, 'POST', '/v1/users/admin2/disable', { token: admin, body: {} }),
      api(url, 'POST', '/v1/users/admin/disable', { token: admin2, body: {} }),
    ]);
    const statuses = [a.status, b.status].sort();
    assert.equal(statuses.filter((s) => s === 200).length, 1, `${a.status} ${a.text} / ${b.status} ${b.text}`);
    // The loser was refused as the last admin's disabler, or had already lost its session.
    for (const x of [a, b]) if (x.status !== 200) assert.ok(['failed_precondition', 'unauthenticated'].includes(x.body.error.code), x.text);
    const winner = a.status === 200 ? admin : admin2;
    const users = await api(url, 'GET', '/v1/users', { token: winner });
    assert.equal(users.status, 200, users.text);
    assert.equal(users.body.users.filter((u: any) => u.state === 'active' && u.roles.includes('security-admin')).length, 1);
  });
});
