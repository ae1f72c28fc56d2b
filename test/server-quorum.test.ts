import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { removeDir } from './helpers.js';
import { api, createUserApproved, login, setupCast, startServerProcess, type ApiResult, type Cast, type ServerProcess } from './server-helpers.js';

// M-of-N approvals through the HTTP API: each guarded operation files a
// request (202), other eligible admins approve it, the last approval
// executes it; self-approval, double approval, wrong roles, denial and
// expiry are refused, and every step is in the audit log.

const ALL_OPS = ['key.destroy', 'key.disable', 'key.policy', 'app.grant', 'app.rotate-key', 'admin.add', 'admin.remove', 'quorum.set'];

async function readAudit(url: string, token: string): Promise<any[]> {
  const out: any[] = [];
  let after = 0;
  for (;;) {
    const r = await api(url, 'GET', `/v1/audit?after=${after}&limit=5000`, { token });
    assert.equal(r.status, 200, r.text);
    const rows = r.text.split('\n').filter(Boolean).map((l) => JSON.parse(l));
    out.push(...rows.map((x) => ({ ...x, details: x.details ? JSON.parse(x.details) : {} })));
    if (rows.length < 5000) return out;
    after = rows[rows.length - 1].seq;
  }
}

describe('server quorum approvals', () => {
  let srv: ServerProcess;
  let url: string;
  let cast: Cast;
  let plainUserPassword: string;
  let app2Key: string;

  const must = async (r: Promise<ApiResult>, status: number, what: string): Promise<ApiResult> => {
    const res = await r;
    assert.equal(res.status, status, `${what}: ${res.text.slice(0, 400)}`);
    return res;
  };
  const approve = (token: string, id: string) => api(url, 'POST', `/v1/approvals/${id}/approve`, { token, body: {} });
  const deny = (token: string, id: string) => api(url, 'POST', `/v1/approvals/${id}/deny`, { token, body: {} });
  const getKey = async (name: string) => (await must(api(url, 'GET', `/v1/keys/${name}`, { token: cast.keyAdmin }), 200, `read ${name}`)).body;
  const getApproval = async (id: string) => (await must(api(url, 'GET', `/v1/approvals/${id}`, { token: cast.auditor }), 200, `read approval ${id}`)).body;

  /** Sends a guarded request and checks it became a pending approval rather than acting. */
  const request = async (method: string, path: string, token: string, body: unknown, operation: string, requester: string) => {
    const r = await must(api(url, method, path, { token, body }), 202, `${method} ${path}`);
    const a = r.body.approval;
    assert.match(a.id, /^[0-9a-f]{16}$/);
    assert.equal(a.operation, operation);
    assert.equal(a.state, 'pending');
    assert.equal(a.required, 2);
    assert.equal(a.requester, requester);
    assert.deepEqual(a.approvals, []);
    return { id: a.id as string, requestId: r.headers.get('x-request-id')! };
  };

  /** Two distinct eligible approvals; the first leaves it pending, the second executes it. */
  const approveTwice = async (id: string, first: string, second: string, firstName: string, secondName: string) => {
    const one = await must(approve(first, id), 200, 'first approval');
    assert.equal(one.body.state, 'pending');
    assert.deepEqual(one.body.approvals.map((x: any) => x.name), [firstName]);
    assert.equal((await getApproval(id)).state, 'pending');
    const again = await approve(first, id);
    assert.equal(again.status, 409, `same admin approving twice: ${again.text}`);
    const firstUser = firstName.replace(/^user:/, '');
    const otherSession = await login(url, firstUser, cast.passwords[firstUser]!);
    assert.equal((await approve(otherSession, id)).status, 409, 'same admin approving again from another session');
    assert.equal((await getApproval(id)).approvals.length, 1);
    const two = await must(approve(second, id), 200, 'second approval');
    assert.equal(two.body.state, 'executed', JSON.stringify(two.body));
    assert.deepEqual(two.body.approvals.map((x: any) => x.name), [firstName, secondName]);
    assert.equal((await getApproval(id)).state, 'executed');
    const late = await approve(first, id);
    assert.equal(late.status, 409, late.text);
    return two.body;
  };

  const checkAudit = async (id: string, opts: { requester: string; approvers: string[]; operation: string }) => {
    const recs = (await readAudit(url, cast.auditor)).filter((r) => r.details.approval === id);
    const req = recs.filter((r) => r.operation === 'approval.request');
    assert.equal(req.length, 1, `approval.request records for ${id}`);
    assert.equal(req[0].actor, opts.requester);
    assert.equal(req[0].details.operation, opts.operation);
    // The HTTP record of the guarded call itself.
    assert.ok(recs.some((r) => r.actor === opts.requester && r.result === 'approval_requested' && r.details.status === 202), 'guarded call record');
    const approvals = recs.filter((r) => r.operation === 'approval.approve' && r.result === 'ok' && r.details.required === 2);
    assert.deepEqual(approvals.map((r) => r.actor), opts.approvers);
    assert.deepEqual(approvals.map((r) => r.details.approvals), opts.approvers.map((_, i) => i + 1));
    return recs;
  };

  before(async () => {
    srv = await startServerProcess();
    url = srv.url;
    cast = await setupCast(url);
    for (const k of ['kd', 'kx', 'kp', 'kdeny', 'kexp']) await must(api(url, 'POST', '/v1/keys', { token: cast.keyAdmin, body: { name: k } }), 200, `create ${k}`);
    app2Key = (await must(api(url, 'POST', '/v1/apps', { token: cast.admin, body: { name: 'app2' } }), 200, 'create app2')).body.apiKey;
    plainUserPassword = 'plain-user-password-1';
    await must(api(url, 'POST', '/v1/users', { token: cast.admin, body: { name: 'plainuser', password: plainUserPassword, roles: [] } }), 200, 'plain user');
    // An admin role needs another admin's yes even before any policy applies.
    await createUserApproved(url, cast.admin, cast.keyAdmin, 'exadmin', 'ex-admin-password-1', ['key-admin']);
  });

  after(async () => {
    await srv?.stop();
    if (srv) removeDir(srv.dir);
  });

  it('a quorum policy is set (directly, while none applies)', async () => {
    const r = await must(api(url, 'PUT', '/v1/sys/quorum', { token: cast.admin, body: { required: 2, operations: ALL_OPS, ttlS: 3600 } }), 200, 'set policy');
    assert.equal(r.body.required, 2);
    const got = await must(api(url, 'GET', '/v1/sys/quorum', { token: cast.keyAdmin }), 200, 'read policy');
    assert.deepEqual({ ...got.body, operations: [...got.body.operations].sort() }, { required: 2, operations: [...ALL_OPS].sort(), ttlS: 3600 });
  });

  it('key destroy: requester, auditor, app and wrong-role admins cannot approve; two key-admins execute it', async () => {
    const { id } = await request('POST', '/v1/keys/kd/destroy', cast.keyAdmin, { pendingDays: 7 }, 'key.destroy', 'user:keyadmin');
    assert.equal((await getKey('kd')).state, 'enabled', 'nothing happens before approval');
    const refusals: [string, string, number][] = [
      ['requester', cast.keyAdmin, 403],
      ['auditor', cast.auditor, 403],
      ['security-admin', cast.admin, 403],
      ['app', cast.appKey, 403],
      ['nobody', '', 401],
    ];
    const deniedIds: string[] = [];
    for (const [who, token, status] of refusals) {
      const r = token ? await approve(token, id) : await api(url, 'POST', `/v1/approvals/${id}/approve`, { body: {} });
      assert.equal(r.status, status, `${who}: ${r.text}`);
      deniedIds.push(r.headers.get('x-request-id')!);
    }
    assert.equal((await getApproval(id)).approvals.length, 0);
    // Another session of the requester is still the requester.
    const otherSession = await login(url, 'keyadmin', cast.passwords.keyadmin!);
    assert.equal((await approve(otherSession, id)).status, 403);
    const done = await approveTwice(id, cast.keyAdmin2, cast.keyAdmin3, 'user:keyadmin2', 'user:keyadmin3');
    assert.equal(done.result.state, 'pending_destruction');
    const k = await getKey('kd');
    assert.equal(k.state, 'pending_destruction');
    assert.ok(k.destroyAt);
    const recs = await checkAudit(id, { requester: 'user:keyadmin', approvers: ['user:keyadmin2', 'user:keyadmin3'], operation: 'key.destroy' });
    const all = await readAudit(url, cast.auditor);
    for (const rid of deniedIds) {
      const rec = all.find((r) => r.request_id === rid);
      assert.ok(rec, `refused approval ${rid} audited`);
      assert.equal(rec.operation, 'approval.approve');
      assert.ok(['permission_denied', 'unauthenticated'].includes(rec.result), rec.result);
    }
    // The requester's own attempt reached the request and names it.
    assert.ok(recs.some((r) => r.actor === 'user:keyadmin' && r.operation === 'approval.approve' && r.result === 'permission_denied'));
    // The destruction itself is recorded in the requester's name.
    assert.ok(all.some((r) => r.operation === 'key.destroy.schedule' && r.key_name === 'kd' && r.actor === 'user:keyadmin' && r.result === 'ok'));
  });

  it('key disable goes through approval', async () => {
    const { id } = await request('POST', '/v1/keys/kx/disable', cast.keyAdmin2, {}, 'key.disable', 'user:keyadmin2');
    assert.equal((await getKey('kx')).state, 'enabled');
    await approveTwice(id, cast.keyAdmin3, cast.keyAdmin, 'user:keyadmin3', 'user:keyadmin');
    assert.equal((await getKey('kx')).state, 'disabled');
    await checkAudit(id, { requester: 'user:keyadmin2', approvers: ['user:keyadmin3', 'user:keyadmin'], operation: 'key.disable' });
  });

  it('key policy goes through approval', async () => {
    const { id } = await request('PUT', '/v1/keys/kp/policy', cast.keyAdmin, { rotationPeriod: '30d' }, 'key.policy', 'user:keyadmin');
    assert.equal((await getKey('kp')).rotationPeriod, null);
    await approveTwice(id, cast.keyAdmin3, cast.keyAdmin2, 'user:keyadmin3', 'user:keyadmin2');
    const k = await getKey('kp');
    assert.equal(k.rotationPeriod, '30d');
    assert.ok(k.nextRotationAt);
    await checkAudit(id, { requester: 'user:keyadmin', approvers: ['user:keyadmin3', 'user:keyadmin2'], operation: 'key.policy' });
  });

  it('an app grant goes through approval by key-admins only, then works', async () => {
    const app2 = app2Key;
    const enc = () => api(url, 'POST', '/v1/keys/k1/encrypt', { token: app2, body: { plaintext: Buffer.from('granted').toString('base64') } });
    const { id } = await request('PUT', '/v1/apps/app2/grants/k1', cast.keyAdmin, { operations: ['encrypt'] }, 'app.grant', 'user:keyadmin');
    assert.equal((await enc()).status, 403, 'no grant before approval');
    for (const token of [cast.keyAdmin, cast.auditor, cast.admin]) assert.equal((await approve(token, id)).status, 403);
    await approveTwice(id, cast.keyAdmin2, cast.keyAdmin3, 'user:keyadmin2', 'user:keyadmin3');
    let r = await enc();
    for (let i = 0; i < 30 && r.status !== 200; i++) {
      await new Promise((res) => setTimeout(res, 100));
      r = await enc();
    }
    assert.equal(r.status, 200, r.text);
    assert.match(r.body.ciphertext, /^kh:v1:/);
    await checkAudit(id, { requester: 'user:keyadmin', approvers: ['user:keyadmin2', 'user:keyadmin3'], operation: 'app.grant' });
  });

  it('rotating an app\'s API key goes through approval by key-admins; only the requester collects the new key, once', async () => {
    const { id } = await request('POST', '/v1/apps/app2/rotate-key', cast.admin, {}, 'app.rotate-key', 'user:admin');
    const whoami = (token: string) => api(url, 'GET', '/v1/auth/whoami', { token });
    assert.equal((await whoami(app2Key)).status, 200, 'the old key works while the request is pending');
    assert.equal((await approve(cast.admin2, id)).status, 403, 'a security-admin cannot approve a new app key');
    const done = await approveTwice(id, cast.keyAdmin2, cast.keyAdmin3, 'user:keyadmin2', 'user:keyadmin3');
    assert.doesNotMatch(JSON.stringify(done), /kha_/, 'the approval record holds no key');
    assert.doesNotMatch(JSON.stringify(await getApproval(id)), /kha_/);
    for (const token of [cast.admin2, cast.admin3, cast.keyAdmin, cast.keyAdmin2, cast.keyAdmin3]) assert.equal((await api(url, 'POST', `/v1/approvals/${id}/collect`, { token, body: {} })).status, 403);
    const got = await must(api(url, 'POST', `/v1/approvals/${id}/collect`, { token: cast.admin, body: {} }), 200, 'collect');
    assert.match(got.body.apiKey, /^kha_/);
    assert.equal((await api(url, 'POST', `/v1/approvals/${id}/collect`, { token: cast.admin, body: {} })).status, 404, 'collected once only');
    let old = await whoami(app2Key);
    for (let i = 0; i < 40 && old.status !== 401; i++) {
      await new Promise((res) => setTimeout(res, 100));
      old = await whoami(app2Key);
    }
    assert.equal(old.status, 401, 'the old key stopped working');
    assert.equal((await whoami(got.body.apiKey)).body.name, 'app2');
    app2Key = got.body.apiKey;
  });

  it('adding an admin role goes through approval (role change and user creation)', async () => {
    const { id } = await request('PUT', '/v1/users/plainuser/roles', cast.admin2, { roles: ['key-admin'] }, 'admin.add', 'user:admin2');
    let who = await must(api(url, 'GET', '/v1/auth/whoami', { token: await login(url, 'plainuser', plainUserPassword) }), 200, 'whoami');
    assert.deepEqual(who.body.roles, []);
    // Adding key-admin needs the yes of people who hold it.
    assert.deepEqual((await getApproval(id)).approverRoles, ['key-admin']);
    assert.equal((await approve(cast.admin, id)).status, 403, 'a security-admin cannot approve adding key-admin');
    await approveTwice(id, cast.keyAdmin, cast.keyAdmin3, 'user:keyadmin', 'user:keyadmin3');
    who = await must(api(url, 'GET', '/v1/auth/whoami', { token: await login(url, 'plainuser', plainUserPassword) }), 200, 'whoami');
    assert.deepEqual(who.body.roles, ['key-admin']);
    await checkAudit(id, { requester: 'user:admin2', approvers: ['user:keyadmin', 'user:keyadmin3'], operation: 'admin.add' });

    // A new user with an admin role is made without it; the role waits for approval.
    const made = await must(api(url, 'POST', '/v1/users', { token: cast.admin, body: { name: 'newadmin', password: 'new-admin-password-1', roles: ['security-admin'] } }), 202, 'create admin');
    assert.deepEqual(made.body.user.roles, []);
    assert.equal(made.body.approval.operation, 'admin.add');
    const newId = made.body.approval.id as string;
    const mk = async () => (await must(api(url, 'GET', '/v1/users', { token: cast.admin }), 200, 'users')).body.users.find((u: any) => u.name === 'newadmin');
    assert.deepEqual((await mk()).roles, []);
    assert.equal((await approve(cast.keyAdmin, newId)).status, 403, 'a key-admin cannot approve adding security-admin while other security-admins exist');
    await approveTwice(newId, cast.admin2, cast.admin3, 'user:admin2', 'user:admin3');
    assert.deepEqual((await mk()).roles, ['security-admin']);
  });

  it('removing an admin role goes through approval', async () => {
    const { id } = await request('PUT', '/v1/users/exadmin/roles', cast.admin3, { roles: [] }, 'admin.remove', 'user:admin3');
    const roles = async () => (await must(api(url, 'GET', '/v1/users', { token: cast.admin }), 200, 'users')).body.users.find((u: any) => u.name === 'exadmin').roles;
    assert.deepEqual(await roles(), ['key-admin']);
    await approveTwice(id, cast.admin2, cast.admin, 'user:admin2', 'user:admin');
    assert.deepEqual(await roles(), []);
    await checkAudit(id, { requester: 'user:admin3', approvers: ['user:admin2', 'user:admin'], operation: 'admin.remove' });
  });

  it('deny: a wrong-role admin or an auditor cannot deny; an eligible admin can; the requester may withdraw', async () => {
    const { id } = await request('POST', '/v1/keys/kdeny/disable', cast.keyAdmin, {}, 'key.disable', 'user:keyadmin');
    assert.equal((await deny(cast.admin, id)).status, 403, 'security-admin denying a key operation');
    assert.equal((await deny(cast.auditor, id)).status, 403, 'auditor denying');
    await must(approve(cast.keyAdmin2, id), 200, 'one approval');
    const d = await must(deny(cast.keyAdmin3, id), 200, 'deny');
    assert.equal(d.body.state, 'denied');
    assert.ok(d.body.decidedAt);
    const late = await approve(cast.keyAdmin3, id);
    assert.equal(late.status, 409, late.text);
    assert.equal((await deny(cast.keyAdmin2, id)).status, 409, 'denying twice');
    assert.equal((await getApproval(id)).state, 'denied');
    assert.equal((await getKey('kdeny')).state, 'enabled', 'a denied request never acts');

    const w = await request('POST', '/v1/keys/kdeny/destroy', cast.keyAdmin2, {}, 'key.destroy', 'user:keyadmin2');
    const withdrawn = await must(deny(cast.keyAdmin2, w.id), 200, 'withdraw');
    assert.equal(withdrawn.body.state, 'denied');
    assert.equal((await getKey('kdeny')).state, 'enabled');

    const recs = (await readAudit(url, cast.auditor)).filter((r) => r.operation === 'approval.deny' && r.result === 'ok' && r.details.operation);
    assert.ok(recs.some((r) => r.details.approval === id && r.actor === 'user:keyadmin3'));
    assert.ok(recs.some((r) => r.details.approval === w.id && r.actor === 'user:keyadmin2'));
  });

  it('expiry: a request past its expiry cannot be approved and is marked expired', async () => {
    const { id } = await request('POST', '/v1/keys/kexp/disable', cast.keyAdmin, {}, 'key.disable', 'user:keyadmin');
    await must(approve(cast.keyAdmin2, id), 200, 'one approval before expiry');
    const db = new Database(join(srv.dir, 'keyhaven.db'));
    try {
      db.pragma('busy_timeout = 5000');
      const changed = db.prepare('update approvals set expires_at = ? where id = ?').run(new Date(Date.now() - 60_000).toISOString(), id);
      assert.equal(changed.changes, 1);
    } finally {
      db.close();
    }
    const r = await approve(cast.keyAdmin3, id);
    assert.equal(r.status, 409, r.text);
    assert.equal(r.body.error.code, 'failed_precondition');
    const info = await getApproval(id);
    assert.equal(info.state, 'expired');
    assert.equal(info.approvals.length, 1);
    assert.equal((await getKey('kexp')).state, 'enabled');
    const listed = await must(api(url, 'GET', '/v1/approvals?state=expired', { token: cast.keyAdmin }), 200, 'list expired');
    assert.ok(listed.body.approvals.some((a: any) => a.id === id));
    const recs = (await readAudit(url, cast.auditor)).filter((x) => x.details.approval === id);
    const exp = recs.filter((x) => x.operation === 'approval.expire');
    assert.equal(exp.length, 1);
    assert.equal(exp[0].actor, 'system:quorum');
    assert.equal(exp[0].details.operation, 'key.disable');
    assert.ok(recs.some((x) => x.operation === 'approval.approve' && x.request_id === r.headers.get('x-request-id') && x.result === 'failed_precondition'));
  });

  it('changing the quorum policy itself needs approval', async () => {
    const { id } = await request('PUT', '/v1/sys/quorum', cast.admin, { required: 1, operations: ALL_OPS, ttlS: 600 }, 'quorum.set', 'user:admin');
    const read = async () => (await must(api(url, 'GET', '/v1/sys/quorum', { token: cast.auditor }), 200, 'read policy')).body;
    assert.equal((await read()).required, 2);
    assert.equal((await approve(cast.keyAdmin, id)).status, 403, 'a key-admin cannot approve quorum.set');
    await approveTwice(id, cast.admin3, cast.admin2, 'user:admin3', 'user:admin2');
    const p = await read();
    assert.equal(p.required, 1);
    assert.equal(p.ttlS, 600);
    await checkAudit(id, { requester: 'user:admin', approvers: ['user:admin3', 'user:admin2'], operation: 'quorum.set' });
    const all = await readAudit(url, cast.auditor);
    assert.ok(all.some((r) => r.operation === 'quorum.set' && r.actor === 'user:admin' && r.result === 'ok' && r.details.required === 1));
  });
});
