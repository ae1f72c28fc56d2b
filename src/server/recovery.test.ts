import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { SYSTEM } from '../access/access.js';
import { injectApi, openTestApp, type TestApp } from '../../test/server-app.js';

// Break-glass recovery, in process: each attack is a test that fails if the
// attack works. A break-glass app decrypts only through the native API,
// inside an open, unexpired recovery of its own; it never encrypts.

let t: TestApp;
const b64 = (s: string) => Buffer.from(s).toString('base64');
const api = (method: string, path: string, opts: { token?: string; body?: unknown; headers?: Record<string, string> } = {}) => injectApi(t, method, path, opts);
const H = 'x-keyhaven-recovery';

describe('break-glass recovery', () => {
  let bg: string;
  let ciphertext: string;
  let keyAdmin2: string;

  const decrypt = (token: string, recovery?: string) => api('POST', '/v1/keys/k1/decrypt', { token, body: { ciphertext }, ...(recovery !== undefined ? { headers: { [H]: recovery } } : {}) });
  const start = async (token: string, body: unknown = { reason: 'etcd lost; restoring from nightly snapshot', cluster: 'prod' }) => api('POST', '/v1/recoveries', { token, body });
  // An app holds at most 3 recoveries pending or open: tests close what they open.
  const closeRec = async (id: string) => {
    const r = await api('POST', `/v1/recoveries/${id}/close`, { token: t.tokens.admin, body: {} });
    assert.equal(r.status, 200, r.text);
  };
  const denied = (r: { status: number; body: any; text: string }, message: RegExp, what: string) => {
    assert.equal(r.status, 403, `${what}: ${r.text}`);
    assert.equal(r.body.error.code, 'permission_denied', what);
    assert.match(r.body.error.message, message, what);
    assert.ok(!('plaintext' in r.body), what);
  };

  before(async () => {
    t = await openTestApp();
    const made = await api('POST', '/v1/apps', { token: t.tokens.admin, body: { name: 'bg', breakGlass: true } });
    assert.equal(made.status, 200, made.text);
    assert.equal(made.body.app.breakGlass, true);
    bg = made.body.apiKey;
    const g = await api('PUT', '/v1/apps/bg/grants/k1', { token: t.tokens.keyAdmin, body: { operations: ['encrypt', 'decrypt', 'rewrap', 'datakey'] } });
    assert.equal(g.status, 200, g.text);
    const enc = await api('POST', '/v1/keys/k1/encrypt', { token: t.tokens.granted, body: { plaintext: b64('backup secret') } });
    assert.equal(enc.status, 200, enc.text);
    ciphertext = enc.body.ciphertext;
    // A second key-admin: the security-admin who made "bg" may not approve its recoveries.
    const s = t.core.services();
    await s.access.createUser(SYSTEM, { name: 'keyadmin2', password: 'keyadmin2-password-1', roles: ['key-admin'] });
    keyAdmin2 = (await s.access.login('keyadmin2', 'keyadmin2-password-1', '127.0.0.1')).token;
  });

  after(async () => {
    await t?.close();
  });

  it('an app is break-glass only when created so; the flag shows on the app', async () => {
    const list = await api('GET', '/v1/apps', { token: t.tokens.admin });
    const byName = new Map<string, any>(list.body.apps.map((a: any) => [a.name, a]));
    assert.equal(byName.get('bg').breakGlass, true);
    assert.equal(byName.get('granted').breakGlass, undefined);
  });

  it('attack: a break-glass app decrypts without a recovery → 403', async () => {
    denied(await decrypt(bg), /break-glass app: it decrypts only inside an open recovery/, 'no header');
    denied(await decrypt(bg, 'not-an-id'), /names no recovery of app "bg"/, 'junk header');
    denied(await decrypt(bg, randomBytes(8).toString('hex')), /names no recovery of app "bg"/, 'unknown id');
  });

  it('attack: a break-glass app encrypts, rewraps, makes data keys or reports as a plugin → 403, even inside a recovery', async () => {
    const rec = await start(bg);
    assert.equal(rec.status, 201, rec.text);
    const headers = { [H]: rec.body.id };
    for (const [op, body] of [['encrypt', { plaintext: b64('x') }], ['rewrap', { ciphertext }], ['datakey', {}], ['status', {}]] as const) {
      const r = await api('POST', `/v1/keys/k1/${op}`, { token: bg, body, headers });
      assert.equal(r.status, 403, `${op}: ${r.text}`);
      assert.ok(!('ciphertext' in r.body) && !('plaintext' in r.body), op);
    }
    await closeRec(rec.body.id);
  });

  it('attack: a break-glass app uses the Vault or DSM dialect, even with an open recovery → 403', async () => {
    const rec = await start(bg);
    const headers = { [H]: rec.body.id };
    const vault = await api('POST', '/v1/transit/decrypt/k1', { body: { ciphertext: `vault:v1:${randomBytes(40).toString('base64')}` }, headers: { ...headers, 'x-vault-token': bg } });
    assert.equal(vault.status, 403, vault.text);
    assert.match(vault.text, /native API/);
    const dsmAuth = `Basic ${b64(`bg:${bg}`)}`;
    const dsm = await api('POST', '/crypto/v1/decrypt', { body: { key: { name: 'k1' }, mode: 'CBC', cipher: randomBytes(32).toString('base64'), iv: randomBytes(16).toString('base64') }, headers: { ...headers, authorization: dsmAuth } });
    assert.equal(dsm.status, 403, dsm.text);
    assert.match(dsm.text, /native API/);
    await closeRec(rec.body.id);
  });

  it('inside its open recovery a break-glass app decrypts, and the audit records carry the recovery and its reason', async () => {
    const rec = await start(bg);
    assert.equal(rec.status, 201, rec.text);
    assert.match(rec.body.id, /^[0-9a-f]{16}$/);
    assert.equal(rec.body.state, 'open');
    const ttl = Date.parse(rec.body.expiresAt) - Date.parse(rec.body.openedAt);
    assert.equal(ttl, 3600_000);
    const d = await decrypt(bg, rec.body.id);
    assert.equal(d.status, 200, d.text);
    assert.equal(Buffer.from(d.body.plaintext, 'base64').toString(), 'backup secret');
    const audit = await api('GET', '/v1/audit?limit=5000', { token: t.tokens.auditor });
    const rows = audit.text.split('\n').filter(Boolean).map((l) => JSON.parse(l));
    const startRec = rows.find((x) => x.operation === 'recovery.start' && JSON.parse(x.details).recovery === rec.body.id);
    assert.ok(startRec, 'recovery.start recorded');
    assert.equal(startRec.actor, 'app:bg');
    assert.equal(JSON.parse(startRec.details).reason, 'etcd lost; restoring from nightly snapshot');
    const dec = rows.find((x) => x.operation === 'crypto.decrypt' && x.request_id === d.headers.get('x-request-id'));
    assert.equal(JSON.parse(dec.details).recovery, rec.body.id);
    assert.ok(!audit.text.includes('backup secret'));
    await closeRec(rec.body.id);
  });

  it('attack: a break-glass app decrypts with another app\'s recovery → 403; a normal app cannot open one for it', async () => {
    const other = await start(t.tokens.granted);
    assert.equal(other.status, 201, other.text);
    assert.equal(other.body.app, 'granted');
    denied(await decrypt(bg, other.body.id), /names no recovery of app "bg"/, 'another app\'s recovery');
    // The body names no app: a recovery is always the caller's.
    const forBg = await start(t.tokens.granted, { reason: 'for bg', app: 'bg' });
    assert.equal(forBg.status, 400, forBg.text);
    const mine = await start(bg);
    denied(await decrypt(t.tokens.granted, mine.body.id), /names no recovery of app "granted"/, 'a normal app naming the break-glass app\'s recovery');
    // Another app cannot read or close it either.
    assert.equal((await api('GET', `/v1/recoveries/${mine.body.id}`, { token: t.tokens.granted })).status, 404);
    const close = await api('POST', `/v1/recoveries/${mine.body.id}/close`, { token: t.tokens.granted, body: {} });
    assert.equal(close.status, 403, close.text);
    assert.equal((await decrypt(bg, mine.body.id)).status, 200);
    await closeRec(other.body.id);
    await closeRec(mine.body.id);
  });

  it('attack: a break-glass app decrypts with a closed or an expired recovery → 403', async () => {
    const rec = await start(bg);
    assert.equal((await decrypt(bg, rec.body.id)).status, 200);
    const closed = await api('POST', `/v1/recoveries/${rec.body.id}/close`, { token: bg, body: { objects: 12, failed: 1 } });
    assert.equal(closed.status, 200, closed.text);
    assert.equal(closed.body.state, 'closed');
    assert.equal(closed.body.closedBy, 'app:bg');
    assert.deepEqual([closed.body.objects, closed.body.failed], [12, 1]);
    denied(await decrypt(bg, rec.body.id), /is closed/, 'closed');
    assert.equal((await api('POST', `/v1/recoveries/${rec.body.id}/close`, { token: bg, body: {} })).status, 409, 'closed once');

    const old = await start(bg);
    await t.store.updateRecovery(old.body.id, { expires_at: new Date(Date.now() - 1000).toISOString() });
    denied(await decrypt(bg, old.body.id), /expired at/, 'expired');
    assert.equal((await api('GET', `/v1/recoveries/${old.body.id}`, { token: bg })).body.state, 'expired');
  });

  it('normal apps are unchanged; a recovery they name must be their own and open, and is recorded', async () => {
    assert.equal((await decrypt(t.tokens.granted)).status, 200);
    const rec = await start(t.tokens.granted);
    const d = await decrypt(t.tokens.granted, rec.body.id);
    assert.equal(d.status, 200, d.text);
    const enc = await api('POST', '/v1/keys/k1/encrypt', { token: t.tokens.granted, body: { plaintext: b64('x') }, headers: { [H]: rec.body.id } });
    assert.equal(enc.status, 200, enc.text);
    denied(await decrypt(t.tokens.granted, 'ffffffffffffffff'), /names no recovery/, 'unknown recovery');
    await api('POST', `/v1/recoveries/${rec.body.id}/close`, { token: t.tokens.admin, body: {} });
    denied(await decrypt(t.tokens.granted, rec.body.id), /is closed/, 'closed by an admin');
  });

  it('recoveries: bad input is refused precisely; users cannot open one', async () => {
    for (const [body, msg] of [[{}, /reason/], [{ reason: '' }, /reason/], [{ reason: 'x'.repeat(501) }, /reason/], [{ reason: 'ok', cluster: 'Bad Name' }, /cluster/]] as const) {
      const r = await start(bg, body);
      assert.equal(r.status, 400, r.text);
      assert.match(r.body.error.message, msg);
    }
    const user = await start(t.tokens.keyAdmin);
    assert.equal(user.status, 403, user.text);
    const list = await api('GET', '/v1/recoveries', { token: t.tokens.auditor });
    assert.equal(list.status, 200);
    assert.ok(list.body.recoveries.length >= 5);
    assert.ok(list.body.recoveries.every((r: any) => ['bg', 'granted'].includes(r.app)));
    assert.equal((await api('GET', '/v1/recoveries', { token: bg })).status, 403);
  });

  it('an app without a decrypt grant opens no recovery; an app holds at most 3 pending or open', async () => {
    const none = await start(t.tokens.stranger);
    denied(none, /app "stranger" holds no decrypt grant on any key/, 'no grant');
    const encOnly = await t.core.services().access.createApp(SYSTEM, { name: 'enc-only' });
    await t.core.services().access.setGrant(SYSTEM, 'enc-only', 'k1', ['encrypt']);
    denied(await start(encOnly.apiKey), /holds no decrypt grant/, 'encrypt grant only');

    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      const r = await start(t.tokens.granted);
      assert.equal(r.status, 201, r.text);
      ids.push(r.body.id);
    }
    const fourth = await start(t.tokens.granted);
    assert.equal(fourth.status, 409, fourth.text);
    assert.equal(fourth.body.error.code, 'failed_precondition');
    assert.match(fourth.body.error.message, /app "granted" already has 3 recoveries pending or open/);
    for (const id of ids) assert.ok(fourth.body.error.message.includes(id));
    // An expired one no longer counts; a closed one neither.
    await t.store.updateRecovery(ids[0]!, { expires_at: new Date(Date.now() - 1000).toISOString() });
    const again = await start(t.tokens.granted);
    assert.equal(again.status, 201, again.text);
    for (const id of [...ids.slice(1), again.body.id]) await closeRec(id);
  });

  describe('under a quorum policy covering recovery.start', () => {
    before(async () => {
      const q = await api('PUT', '/v1/sys/quorum', { token: t.tokens.admin, body: { required: 2, operations: ['recovery.start'], ttlS: 3600 } });
      assert.equal(q.status, 200, q.text);
    });

    it('attack: decrypting in a recovery not yet approved → 403; the app cannot approve its own request; two admins open it', async () => {
      const r = await start(bg);
      assert.equal(r.status, 202, r.text);
      const { approval, recovery } = r.body;
      assert.equal(approval.operation, 'recovery.start');
      assert.equal(approval.requester, 'app:bg');
      assert.equal(approval.params.reason, 'etcd lost; restoring from nightly snapshot');
      assert.equal(recovery.state, 'pending');
      assert.equal(recovery.approval, approval.id);
      denied(await decrypt(bg, recovery.id), /not open yet/, 'pending');

      // The requester approving its own request: refused (apps may not approve at all).
      const self = await api('POST', `/v1/approvals/${approval.id}/approve`, { token: bg, body: {} });
      assert.equal(self.status, 403, self.text);
      // Nor may an auditor.
      assert.equal((await api('POST', `/v1/approvals/${approval.id}/approve`, { token: t.tokens.auditor, body: {} })).status, 403);
      // Nor the security-admin who made the app and so received its API key.
      denied(await api('POST', `/v1/approvals/${approval.id}/approve`, { token: t.tokens.admin, body: {} }), /you created app "bg"/, 'the app\'s creator');
      const first = await api('POST', `/v1/approvals/${approval.id}/approve`, { token: keyAdmin2, body: {} });
      assert.equal(first.status, 200, first.text);
      assert.equal(first.body.state, 'pending');
      assert.deepEqual(first.body.approvals.map((a: any) => a.name), ['user:keyadmin2']);
      denied(await decrypt(bg, recovery.id), /not open yet/, 'one approval of two');
      const again = await api('POST', `/v1/approvals/${approval.id}/approve`, { token: keyAdmin2, body: {} });
      assert.equal(again.status, 409, 'an approver counts once');

      const second = await api('POST', `/v1/approvals/${approval.id}/approve`, { token: t.tokens.keyAdmin, body: {} });
      assert.equal(second.status, 200, second.text);
      assert.equal(second.body.state, 'executed', second.text);
      const seen = await api('GET', `/v1/recoveries/${recovery.id}`, { token: bg });
      assert.equal(seen.body.state, 'open');
      const d = await decrypt(bg, recovery.id);
      assert.equal(d.status, 200, d.text);
    });

    it('a denied request never opens its recovery', async () => {
      const r = await start(bg);
      assert.equal(r.status, 202, r.text);
      const deny = await api('POST', `/v1/approvals/${r.body.approval.id}/deny`, { token: t.tokens.keyAdmin, body: {} });
      assert.equal(deny.status, 200, deny.text);
      denied(await decrypt(bg, r.body.recovery.id), /not open yet/, 'denied');
    });

    it('nor may the admin who last rotated the app\'s API key (it holds the key now), nor its creator still', async () => {
      const s = t.core.services();
      await s.access.createUser(SYSTEM, { name: 'admin2', password: 'admin2-password-1', roles: ['security-admin'] });
      const admin2 = (await s.access.login('admin2', 'admin2-password-1', '127.0.0.1')).token;
      const rot = await api('POST', '/v1/apps/bg/rotate-key', { token: admin2, body: {} });
      let key: string;
      if (rot.status === 202) {
        // The separation-of-duties floor: a key-admin consents, the requester collects the key.
        const yes = await api('POST', `/v1/approvals/${rot.body.approval.id}/approve`, { token: t.tokens.keyAdmin, body: {} });
        assert.equal(yes.body.state, 'executed', yes.text);
        key = (await api('POST', `/v1/approvals/${rot.body.approval.id}/collect`, { token: admin2, body: {} })).body.apiKey;
      } else {
        assert.equal(rot.status, 200, rot.text);
        key = rot.body.apiKey;
      }
      const r = await start(key);
      assert.equal(r.status, 202, r.text);
      const id = r.body.approval.id;
      denied(await api('POST', `/v1/approvals/${id}/approve`, { token: admin2, body: {} }), /you issued app "bg"'s current API key/, 'the rotator');
      denied(await api('POST', `/v1/approvals/${id}/approve`, { token: t.tokens.admin, body: {} }), /you created app "bg"/, 'the creator');
      assert.equal((await api('POST', `/v1/approvals/${id}/approve`, { token: t.tokens.keyAdmin, body: {} })).status, 200);
      const second = await api('POST', `/v1/approvals/${id}/approve`, { token: keyAdmin2, body: {} });
      assert.equal(second.body.state, 'executed', second.text);
    });
  });
});
