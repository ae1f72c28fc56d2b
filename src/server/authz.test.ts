import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { injectApi, openBareTestApp, type BareTestApp, type InjectedResult as ApiResult } from '../../test/server-app.js';

// The authorization matrix, in process: every route the server registers ×
// every kind of caller. Allowed cells must really work; denied cells answer
// 401/403 and leave an audit record carrying the request's id. Run in process
// (app.inject on the real app, core and SQLite file); the real-process
// authorization attacks live in test/adversary-sod.test.ts.

let t: BareTestApp;
const api = (_url: string, method: string, path: string, opts: { token?: string | undefined; body?: unknown } = {}) => injectApi(t, method, path, opts);

async function login(url: string, name: string, password: string): Promise<string> {
  const r = await api(url, 'POST', '/v1/auth/login', { body: { name, password } });
  if (r.status !== 200) throw new Error(`login as ${name} failed: ${r.status} ${r.text}`);
  return r.body.token as string;
}

interface Cast {
  admin: string;
  keyAdmin: string;
  keyAdmin2: string;
  auditor: string;
  appKey: string;
  strangerKey: string;
  passwords: Record<string, string>;
}

async function must(r: Promise<ApiResult>, what: string): Promise<ApiResult> {
  const res = await r;
  if (res.status >= 300) throw new Error(`${what} failed: ${res.status} ${res.text}`);
  return res;
}

/** Creates a user with roles; when the separation-of-duties floor files an approval request, `approver` approves it. */
async function createUserApproved(requester: string, approver: string, name: string, password: string, roles: string[]): Promise<void> {
  const r = await must(api('', 'POST', '/v1/users', { token: requester, body: { name, password, roles } }), `create user ${name}`);
  if (r.status !== 202) return;
  const a = await must(api('', 'POST', `/v1/approvals/${r.body.approval.id}/approve`, { token: approver, body: {} }), `approve roles of ${name}`);
  if (a.body.state !== 'executed') throw new Error(`roles of ${name} not given: ${a.text}`);
}

/** Initialises the server through its API and creates the users, apps and key k1 the matrix needs. */
async function setupCast(): Promise<Cast> {
  const init = (await must(api('', 'POST', '/v1/sys/init', { body: {} }), 'init')).body;
  const passwords: Record<string, string> = { [init.admin.name]: init.admin.password, [init.keyAdmin.name]: init.keyAdmin.password };
  const admin = await login('', init.admin.name, init.admin.password);
  const keyAdmin = await login('', init.keyAdmin.name, init.keyAdmin.password);
  for (const [name, roles] of [['admin2', ['security-admin']], ['keyadmin2', ['key-admin']], ['auditor', ['auditor']]] as const) {
    passwords[name] = `${name}-password-123`;
    await createUserApproved(admin, keyAdmin, name, passwords[name], [...roles]);
  }
  await must(api('', 'POST', '/v1/keys', { token: keyAdmin, body: { name: 'k1' } }), 'create key');
  const app = await must(api('', 'POST', '/v1/apps', { token: admin, body: { name: 'app1' } }), 'create app');
  const stranger = await must(api('', 'POST', '/v1/apps', { token: admin, body: { name: 'stranger' } }), 'create app');
  await must(api('', 'PUT', '/v1/apps/app1/grants/k1', { token: keyAdmin, body: { operations: ['encrypt', 'decrypt', 'rewrap', 'datakey'] } }), 'grant');
  return {
    admin,
    keyAdmin,
    keyAdmin2: await login('', 'keyadmin2', passwords.keyadmin2!),
    auditor: await login('', 'auditor', passwords.auditor!),
    appKey: app.body.apiKey,
    strangerKey: stranger.body.apiKey,
    passwords,
  };
}

type Caller = 'anon' | 'secAdmin' | 'keyAdmin' | 'auditor' | 'app' | 'stranger';
const CALLERS: readonly Caller[] = ['anon', 'secAdmin', 'keyAdmin', 'auditor', 'app', 'stranger'];
const ALL = CALLERS;
const PRINCIPALS: readonly Caller[] = ['secAdmin', 'keyAdmin', 'auditor', 'app', 'stranger'];

interface Req {
  path?: string;
  body?: unknown;
  token?: string;
}

interface RouteSpec {
  readonly method: string;
  /** As in the OpenAPI document. */
  readonly route: string;
  /** Callers the route serves; everyone else is refused. */
  readonly allow: readonly Caller[];
  /** Expected status of an allowed caller when it is not a 2xx (a documented business answer). */
  readonly status?: Partial<Record<Caller, number>>;
  readonly req?: (who: Caller) => Req | Promise<Req>;
}

/** Every audit record, read page by page until a short page. */
async function readAudit(url: string, token: string): Promise<any[]> {
  const out: any[] = [];
  let after = 0;
  for (;;) {
    const r = await api(url, 'GET', `/v1/audit?after=${after}&limit=5000`, { token });
    assert.equal(r.status, 200, r.text);
    const rows = r.text.split('\n').filter(Boolean).map((l) => JSON.parse(l));
    out.push(...rows);
    if (rows.length < 5000) return out;
    after = rows[rows.length - 1].seq;
  }
}

describe('server authorization matrix (in process)', () => {
  const url = '';
  let cast: Cast;
  let tokens: Record<Caller, string | undefined>;
  let k1Ciphertext: string;
  let approvalToApprove: string;
  let approvalToDeny: string;
  let recoveries: Record<'secAdmin' | 'keyAdmin' | 'app', string>;
  let k1KeyId: string;
  const denied: { requestId: string; result: string; caller: Caller; what: string }[] = [];

  const call = (method: string, path: string, who: Caller, r: Req = {}): Promise<ApiResult> =>
    api(url, method, r.path ?? path, { token: r.token ?? tokens[who], body: r.body });

  before(async () => {
    t = await openBareTestApp();
    cast = await setupCast();
    tokens = { anon: undefined, secAdmin: cast.admin, keyAdmin: cast.keyAdmin, auditor: cast.auditor, app: cast.appKey, stranger: cast.strangerKey };
    const ok = async (r: Promise<ApiResult>, what: string) => {
      const res = await r;
      assert.ok(res.status >= 200 && res.status < 300, `${what}: ${res.status} ${res.text}`);
      return res;
    };
    for (const k of ['k2', 'k3', 'k4']) await ok(api(url, 'POST', '/v1/keys', { token: cast.keyAdmin, body: { name: k } }), `create ${k}`);
    for (const n of ['scratchuser', 'deluser']) await ok(api(url, 'POST', '/v1/users', { token: cast.admin, body: { name: n, password: 'scratch-password-1', roles: [] } }), n);
    await ok(api(url, 'POST', '/v1/apps', { token: cast.admin, body: { name: 'scratchapp' } }), 'scratch app');
    const enc = await ok(api(url, 'POST', '/v1/keys/k1/encrypt', { token: cast.appKey, body: { plaintext: Buffer.from('matrix').toString('base64') } }), 'encrypt');
    k1Ciphertext = enc.body.ciphertext;
    // Two approval requests (one to approve, one to deny), then quorum off again.
    await ok(api(url, 'PUT', '/v1/sys/quorum', { token: cast.admin, body: { required: 1, operations: ['key.destroy'], ttlS: 3600 } }), 'quorum on');
    const a = await api(url, 'POST', '/v1/keys/k3/destroy', { token: cast.keyAdmin2, body: {} });
    const b = await api(url, 'POST', '/v1/keys/k4/destroy', { token: cast.keyAdmin2, body: {} });
    assert.equal(a.status, 202, a.text);
    assert.equal(b.status, 202, b.text);
    approvalToApprove = a.body.approval.id;
    approvalToDeny = b.body.approval.id;
    await ok(api(url, 'PUT', '/v1/sys/quorum', { token: cast.admin, body: { required: 0, operations: ['key.destroy'], ttlS: 3600 } }), 'quorum off');
    // Recoveries of app1, one for each caller allowed to close one.
    const rec = async () => (await ok(api(url, 'POST', '/v1/recoveries', { token: cast.appKey, body: { reason: 'matrix' } }), 'recovery')).body.id as string;
    recoveries = { secAdmin: await rec(), keyAdmin: await rec(), app: await rec() };
    // app1's plugin reports cluster matrix: app1 may then report matrix's scan.
    k1KeyId = (await ok(api(url, 'POST', '/v1/keys/k1/status', { token: cast.appKey, body: { cluster: 'matrix', node: 'cp-1' } }), 'status')).body.keyId;
  });

  after(async () => {
    await t?.close();
  });

  const lower = (who: Caller) => who.toLowerCase();
  const b64 = (s: string) => Buffer.from(s).toString('base64');

  const MATRIX: RouteSpec[] = [
    { method: 'GET', route: '/v1/sys/health', allow: ALL },
    { method: 'GET', route: '/v1/sys/seal-status', allow: ALL },
    // Anyone may call init, once: on an initialised server it is a 409 for all.
    { method: 'POST', route: '/v1/sys/init', allow: ALL, status: { anon: 409, secAdmin: 409, keyAdmin: 409, auditor: 409, app: 409, stranger: 409 }, req: () => ({ body: {} }) },
    { method: 'POST', route: '/v1/sys/unseal', allow: ALL, req: () => ({ body: {} }) },
    { method: 'GET', route: '/v1/sys/quorum', allow: ['secAdmin', 'keyAdmin', 'auditor'] },
    { method: 'PUT', route: '/v1/sys/quorum', allow: ['secAdmin'], req: () => ({ body: { required: 0, operations: ['key.destroy', 'app.grant'], ttlS: 3600 } }) },
    { method: 'POST', route: '/v1/auth/login', allow: ALL, req: () => ({ body: { name: 'auditor', password: cast.passwords.auditor } }) },
    {
      method: 'POST',
      route: '/v1/auth/logout',
      allow: PRINCIPALS,
      // An API key is not a session: apps get the documented 400.
      status: { app: 400, stranger: 400 },
      req: async (who) => {
        const names: Partial<Record<Caller, string>> = { secAdmin: 'admin', keyAdmin: 'keyadmin', auditor: 'auditor' };
        const n = names[who];
        return { body: {}, ...(n ? { token: await login(url, n, cast.passwords[n]!) } : {}) };
      },
    },
    { method: 'GET', route: '/v1/auth/whoami', allow: PRINCIPALS },
    { method: 'GET', route: '/v1/keys', allow: ['keyAdmin', 'secAdmin', 'auditor'] },
    { method: 'POST', route: '/v1/keys', allow: ['keyAdmin'], req: (who) => ({ body: { name: `made-by-${lower(who)}` } }) },
    { method: 'GET', route: '/v1/keys/{name}', allow: ['keyAdmin', 'secAdmin', 'auditor', 'app'], req: () => ({ path: '/v1/keys/k1' }) },
    { method: 'POST', route: '/v1/keys/{name}/rotate', allow: ['keyAdmin'], req: () => ({ path: '/v1/keys/k2/rotate', body: {} }) },
    { method: 'PUT', route: '/v1/keys/{name}/policy', allow: ['keyAdmin'], req: () => ({ path: '/v1/keys/k2/policy', body: { rotationPeriod: '30d' } }) },
    { method: 'POST', route: '/v1/keys/{name}/disable', allow: ['keyAdmin'], req: () => ({ path: '/v1/keys/k2/disable', body: {} }) },
    { method: 'POST', route: '/v1/keys/{name}/enable', allow: ['keyAdmin'], req: () => ({ path: '/v1/keys/k2/enable', body: {} }) },
    { method: 'POST', route: '/v1/keys/{name}/destroy', allow: ['keyAdmin'], req: () => ({ path: '/v1/keys/k2/destroy', body: { pendingDays: 7 } }) },
    { method: 'POST', route: '/v1/keys/{name}/cancel-destroy', allow: ['keyAdmin'], req: () => ({ path: '/v1/keys/k2/cancel-destroy', body: {} }) },
    { method: 'POST', route: '/v1/keys/{name}/encrypt', allow: ['app'], req: () => ({ path: '/v1/keys/k1/encrypt', body: { plaintext: b64('hello') } }) },
    { method: 'POST', route: '/v1/keys/{name}/decrypt', allow: ['app'], req: () => ({ path: '/v1/keys/k1/decrypt', body: { ciphertext: k1Ciphertext } }) },
    { method: 'POST', route: '/v1/keys/{name}/rewrap', allow: ['app'], req: () => ({ path: '/v1/keys/k1/rewrap', body: { ciphertext: k1Ciphertext } }) },
    { method: 'POST', route: '/v1/keys/{name}/datakey', allow: ['app'], req: () => ({ path: '/v1/keys/k1/datakey', body: {} }) },
    // Apps holding the encrypt grant on the key (stranger holds none).
    { method: 'POST', route: '/v1/keys/{name}/status', allow: ['app'], req: () => ({ path: '/v1/keys/k1/status', body: { cluster: 'matrix', node: 'cp-1' } }) },
    { method: 'GET', route: '/v1/clusters', allow: ['secAdmin', 'keyAdmin', 'auditor'] },
    // Apps learn only about keys they hold a grant on (others read as unknown, not refused).
    { method: 'POST', route: '/v1/key-ids/resolve', allow: ['keyAdmin', 'auditor', 'app', 'stranger'], req: () => ({ body: { keyIds: [k1KeyId] } }) },
    // An app reports only a cluster its own plugin reports (stranger runs none).
    { method: 'PUT', route: '/v1/clusters/{cluster}/scan-report', allow: ['keyAdmin', 'app'], req: () => ({ path: '/v1/clusters/matrix/scan-report', body: { scannedAt: '2026-01-01T00:00:00Z', source: 'etcd https://10.0.0.1:2379', objects: 1, plaintext: 0, byKeyId: [{ keyId: k1KeyId, count: 1 }], byForm: [{ form: 'kms-v2', provider: 'keyhaven', count: 1 }] } }) },
    { method: 'GET', route: '/v1/clusters/scan-reports', allow: ['secAdmin', 'keyAdmin', 'auditor'] },
    { method: 'GET', route: '/v1/keys/{name}/versions/{version}/retire-check', allow: ['keyAdmin', 'auditor'], req: () => ({ path: '/v1/keys/k1/versions/1/retire-check' }) },
    // An app holding a decrypt grant opens a recovery for itself (stranger holds none); users do not.
    // app1 already holds three open ones (setup), the most an app may: its fourth passes
    // authorization and meets the cap.
    { method: 'POST', route: '/v1/recoveries', allow: ['app'], status: { app: 409 }, req: () => ({ body: { reason: 'matrix', cluster: 'matrix' } }) },
    { method: 'GET', route: '/v1/recoveries', allow: ['secAdmin', 'keyAdmin', 'auditor'] },
    // An app reads its own recoveries only: another app's reads as missing.
    { method: 'GET', route: '/v1/recoveries/{id}', allow: ['secAdmin', 'keyAdmin', 'auditor', 'app', 'stranger'], status: { stranger: 404 }, req: () => ({ path: `/v1/recoveries/${recoveries.app}` }) },
    // Its app or an admin closes a recovery; another app is refused.
    {
      method: 'POST',
      route: '/v1/recoveries/{id}/close',
      allow: ['secAdmin', 'keyAdmin', 'app'],
      req: (who) => ({ path: `/v1/recoveries/${recoveries[who as keyof typeof recoveries] ?? recoveries.app}/close`, body: { objects: 1 } }),
    },
    { method: 'GET', route: '/v1/users', allow: ['secAdmin'] },
    { method: 'POST', route: '/v1/users', allow: ['secAdmin'], req: (who) => ({ body: { name: `u-${lower(who)}`, password: 'a-long-password-1', roles: [] } }) },
    { method: 'PUT', route: '/v1/users/{name}/roles', allow: ['secAdmin'], req: () => ({ path: '/v1/users/scratchuser/roles', body: { roles: ['auditor'] } }) },
    { method: 'POST', route: '/v1/users/{name}/unlock', allow: ['secAdmin'], req: () => ({ path: '/v1/users/scratchuser/unlock', body: {} }) },
    { method: 'POST', route: '/v1/users/{name}/disable', allow: ['secAdmin'], req: () => ({ path: '/v1/users/scratchuser/disable', body: {} }) },
    { method: 'POST', route: '/v1/users/{name}/enable', allow: ['secAdmin'], req: () => ({ path: '/v1/users/scratchuser/enable', body: {} }) },
    { method: 'PUT', route: '/v1/users/{name}/password', allow: ['secAdmin'], req: () => ({ path: '/v1/users/scratchuser/password', body: { password: 'scratch-password-2' } }) },
    { method: 'DELETE', route: '/v1/users/{name}', allow: ['secAdmin'], req: () => ({ path: '/v1/users/deluser' }) },
    // Any signed-in user changes their own password (apps have none: 403). A wrong
    // current password is the documented 403 here, so the cast keeps its sessions.
    {
      method: 'PUT',
      route: '/v1/auth/password',
      allow: ['secAdmin', 'keyAdmin', 'auditor'],
      status: { secAdmin: 403, keyAdmin: 403, auditor: 403 },
      req: () => ({ body: { currentPassword: 'not-the-password', newPassword: 'another-password-1' } }),
    },
    // Key-admins read apps too: they decide the grants.
    { method: 'GET', route: '/v1/apps', allow: ['secAdmin', 'keyAdmin'] },
    { method: 'POST', route: '/v1/apps', allow: ['secAdmin'], req: (who) => ({ body: { name: `a-${lower(who)}` } }) },
    { method: 'POST', route: '/v1/apps/{name}/rotate-key', allow: ['secAdmin'], req: () => ({ path: '/v1/apps/scratchapp/rotate-key', body: {} }) },
    // Grants are the key-admin's.
    { method: 'PUT', route: '/v1/apps/{name}/grants/{key}', allow: ['keyAdmin'], req: () => ({ path: '/v1/apps/scratchapp/grants/k1', body: { operations: ['encrypt'] } }) },
    { method: 'DELETE', route: '/v1/apps/{name}/grants/{key}', allow: ['keyAdmin'], req: () => ({ path: '/v1/apps/scratchapp/grants/k1' }) },
    { method: 'GET', route: '/v1/approvals', allow: ['secAdmin', 'keyAdmin', 'auditor'] },
    { method: 'GET', route: '/v1/approvals/{id}', allow: ['secAdmin', 'keyAdmin', 'auditor'], req: () => ({ path: `/v1/approvals/${approvalToApprove}` }) },
    // A key.destroy request: only another key-admin may decide it; a security-admin passes the route rule but not the request's.
    { method: 'POST', route: '/v1/approvals/{id}/approve', allow: ['keyAdmin'], req: () => ({ path: `/v1/approvals/${approvalToApprove}/approve`, body: {} }) },
    // Route open to admins; only the request's requester (keyadmin2 here) may collect, so others get 403.
    { method: 'POST', route: '/v1/approvals/{id}/collect', allow: ['secAdmin', 'keyAdmin'], status: { secAdmin: 403, keyAdmin: 403 }, req: () => ({ path: `/v1/approvals/${approvalToApprove}/collect`, body: {} }) },
    { method: 'POST', route: '/v1/approvals/{id}/deny', allow: ['keyAdmin'], req: () => ({ path: `/v1/approvals/${approvalToDeny}/deny`, body: {} }) },
    { method: 'GET', route: '/v1/audit', allow: ['auditor'], req: () => ({ path: '/v1/audit?limit=5' }) },
    { method: 'GET', route: '/v1/audit/verify', allow: ['auditor'] },
    { method: 'POST', route: '/v1/audit/verify', allow: ['auditor'], req: () => ({ body: { checkpoints: [{ v: 1, store: '00', seq: 1, hash: '0'.repeat(64), time: '2026-01-01T00:00:00Z', prev: '0'.repeat(64), mac: '0'.repeat(64) }] } }) },
    { method: 'GET', route: '/v1/openapi.json', allow: ALL },
    { method: 'GET', route: '/metrics', allow: ALL },
    // Last: it seals the server (unsealed again afterwards).
    { method: 'POST', route: '/v1/sys/seal', allow: ['secAdmin'], req: () => ({ body: {} }) },
  ];

  it('the matrix covers exactly the routes the server registers', async () => {
    const doc = await api(url, 'GET', '/v1/openapi.json');
    assert.equal(doc.status, 200);
    const served = new Set<string>(['GET /v1/openapi.json', 'GET /metrics']);
    for (const [path, item] of Object.entries(doc.body.paths as Record<string, Record<string, unknown>>)) {
      for (const m of Object.keys(item)) if (['get', 'put', 'post', 'delete', 'patch'].includes(m)) served.add(`${m.toUpperCase()} ${path}`);
    }
    const table = MATRIX.map((r) => `${r.method} ${r.route}`);
    assert.equal(new Set(table).size, table.length, 'a route appears twice in the matrix');
    assert.deepEqual([...served].sort(), [...table].sort());
  });

  it('every (route, caller) cell answers as the matrix says', async () => {
    for (const spec of MATRIX) {
      // Refusals first: an allowed call may change the state (approve, seal).
      const order = [...CALLERS.filter((c) => !spec.allow.includes(c)), ...CALLERS.filter((c) => spec.allow.includes(c))];
      for (const who of order) {
        const what = `${spec.method} ${spec.route} as ${who}`;
        const r = await call(spec.method, spec.route, who, spec.req ? await spec.req(who) : {});
        const requestId = r.headers.get('x-request-id');
        assert.match(requestId ?? '', /^[0-9a-f]{16}$/, `${what}: x-request-id`);
        if (spec.allow.includes(who)) {
          const want = spec.status?.[who];
          if (want !== undefined) assert.equal(r.status, want, `${what}: ${r.text}`);
          else assert.ok(r.status >= 200 && r.status < 300, `${what}: expected 2xx, got ${r.status} ${r.text.slice(0, 300)}`);
        } else {
          const want = who === 'anon' ? 401 : 403;
          assert.equal(r.status, want, `${what}: ${r.text.slice(0, 300)}`);
          assert.equal(r.body?.error?.code, who === 'anon' ? 'unauthenticated' : 'permission_denied', what);
          assert.equal(r.body.error.requestId, requestId, what);
          denied.push({ requestId: requestId!, result: r.body.error.code, caller: who, what });
        }
      }
      if (spec.route === '/v1/sys/seal') {
        const h = await api(url, 'GET', '/v1/sys/health');
        assert.equal(h.status, 503, 'sealed after POST /v1/sys/seal');
        // An operator seal: anonymous may not lift it, a security-admin may.
        const anon = await api(url, 'POST', '/v1/sys/unseal', { body: {} });
        assert.equal(anon.status, 401, anon.text);
        const u = await api(url, 'POST', '/v1/sys/unseal', { token: cast.admin, body: {} });
        assert.equal(u.status, 200, u.text);
        assert.equal(u.body.sealed, false);
      }
    }
    // Allowed calls had their effects.
    const k2 = await api(url, 'GET', '/v1/keys/k2', { token: cast.keyAdmin });
    assert.equal(k2.body.currentVersion, 2);
    assert.equal(k2.body.rotationPeriod, '30d');
    assert.equal(k2.body.state, 'disabled');
    const k3 = await api(url, 'GET', '/v1/keys/k3', { token: cast.keyAdmin });
    assert.equal(k3.body.state, 'pending_destruction');
    const k4 = await api(url, 'GET', '/v1/keys/k4', { token: cast.keyAdmin });
    assert.equal(k4.body.state, 'enabled');
    const denyInfo = await api(url, 'GET', `/v1/approvals/${approvalToDeny}`, { token: cast.keyAdmin });
    assert.equal(denyInfo.body.state, 'denied');
  });

  it('every refused cell left an audit record with its request id and result', async () => {
    assert.ok(denied.length > 100, `only ${denied.length} refused cells ran`);
    const records = await readAudit(url, cast.auditor);
    const byId = new Map(records.map((r) => [r.request_id, r]));
    const actors: Record<Caller, string> = { anon: 'anonymous', secAdmin: 'user:admin', keyAdmin: 'user:keyadmin', auditor: 'user:auditor', app: 'app:app1', stranger: 'app:stranger' };
    for (const d of denied) {
      const rec = byId.get(d.requestId);
      assert.ok(rec, `${d.what}: no audit record for request ${d.requestId}`);
      assert.equal(rec.result, d.result, d.what);
      assert.equal(rec.actor, actors[d.caller], d.what);
      assert.equal(JSON.parse(rec.details).status, d.result === 'unauthenticated' ? 401 : 403, d.what);
    }
  });

  describe('separation of duties', () => {
    it('a key-admin never obtains plaintext: every crypto route is 403, even on a key it created', async () => {
      const made = await api(url, 'POST', '/v1/keys', { token: cast.keyAdmin, body: { name: 'ka-own' } });
      assert.equal(made.status, 200, made.text);
      for (const key of ['k1', 'ka-own']) {
        for (const [op, body] of [
          ['encrypt', { plaintext: b64('x') }],
          ['decrypt', { ciphertext: k1Ciphertext }],
          ['rewrap', { ciphertext: k1Ciphertext }],
          ['datakey', { includePlaintext: true }],
          ['datakey', { batch: [{}] }],
        ] as const) {
          const r = await api(url, 'POST', `/v1/keys/${key}/${op}`, { token: cast.keyAdmin, body });
          assert.equal(r.status, 403, `${key}/${op}: ${r.text}`);
          assert.equal(r.body.error.code, 'permission_denied');
          assert.ok(!('plaintext' in r.body) && !('ciphertext' in r.body));
        }
      }
    });

    it('grants are for apps only: granting a key to a user is refused and gives no crypto use', async () => {
      for (const user of ['keyadmin', 'admin2', 'auditor']) {
        const r = await api(url, 'PUT', `/v1/apps/${user}/grants/k1`, { token: cast.keyAdmin, body: { operations: ['encrypt', 'decrypt'] } });
        assert.ok(r.status >= 400 && r.status < 500, `grant to ${user}: ${r.status} ${r.text}`);
        assert.equal(r.body.error.code, 'invalid_argument');
      }
      const enc = await api(url, 'POST', '/v1/keys/k1/encrypt', { token: cast.keyAdmin, body: { plaintext: b64('x') } });
      assert.equal(enc.status, 403);
    });

    it('grants are per operation', async () => {
      const made = await api(url, 'POST', '/v1/apps', { token: cast.admin, body: { name: 'enc-only' } });
      assert.equal(made.status, 200, made.text);
      const g = await api(url, 'PUT', '/v1/apps/enc-only/grants/k1', { token: cast.keyAdmin, body: { operations: ['encrypt'] } });
      assert.equal(g.status, 200, g.text);
      const token = made.body.apiKey as string;
      const enc = await api(url, 'POST', '/v1/keys/k1/encrypt', { token, body: { plaintext: b64('only encrypt') } });
      assert.equal(enc.status, 200, enc.text);
      for (const [op, body] of [['decrypt', { ciphertext: enc.body.ciphertext }], ['rewrap', { ciphertext: enc.body.ciphertext }], ['datakey', {}]] as const) {
        const r = await api(url, 'POST', `/v1/keys/k1/${op}`, { token, body });
        assert.equal(r.status, 403, `${op}: ${r.text}`);
        assert.ok(!('plaintext' in r.body));
      }
      assert.equal((await api(url, 'GET', '/v1/keys/k1', { token })).status, 200, 'any grant shows the key');
    });

    it('a security-admin cannot change their own roles', async () => {
      for (const roles of [[], ['security-admin', 'key-admin'], ['auditor']]) {
        const r = await api(url, 'PUT', '/v1/users/admin/roles', { token: cast.admin, body: { roles } });
        assert.equal(r.status, 403, r.text);
        assert.equal(r.body.error.code, 'permission_denied');
      }
      const me = await api(url, 'GET', '/v1/auth/whoami', { token: cast.admin });
      assert.deepEqual(me.body.roles, ['security-admin']);
    });

    it('apps cannot hold roles', async () => {
      for (const roles of [['key-admin'], ['security-admin'], ['auditor']]) {
        const r = await api(url, 'PUT', '/v1/users/app1/roles', { token: cast.admin, body: { roles } });
        assert.ok(r.status >= 400 && r.status < 500, r.text);
        assert.notEqual(r.status, 404);
      }
      const me = await api(url, 'GET', '/v1/auth/whoami', { token: cast.appKey });
      assert.equal(me.body.kind, 'app');
      assert.deepEqual(me.body.roles, []);
      const list = await api(url, 'GET', '/v1/keys', { token: cast.appKey });
      assert.equal(list.status, 403);
    });

    it('an app sees only keys it holds a grant on, and cannot tell missing keys from others', async () => {
      const cases: [string, string][] = [
        [cast.strangerKey, 'k1'],
        [cast.strangerKey, 'no-such-key'],
        [cast.appKey, 'k2'],
        [cast.appKey, 'no-such-key'],
      ];
      // Per route, the refusal reads the same whether the key exists or not.
      const messages = new Map<string, Set<string>>();
      const note = (route: string, msg: string, key: string) => {
        if (!messages.has(route)) messages.set(route, new Set());
        messages.get(route)!.add(msg.replace(key, '<key>'));
      };
      for (const [token, key] of cases) {
        const r = await api(url, 'GET', `/v1/keys/${key}`, { token });
        assert.equal(r.status, 403, `${key}: ${r.text}`);
        assert.equal(r.body.error.code, 'permission_denied');
        note('read', r.body.error.message, key);
        for (const op of ['encrypt', 'datakey']) {
          const c = await api(url, 'POST', `/v1/keys/${key}/${op}`, { token, body: op === 'encrypt' ? { plaintext: b64('x') } : {} });
          assert.equal(c.status, 403, `${key}/${op}: ${c.text}`);
          note(op, c.body.error.message, key);
        }
      }
      for (const [route, set] of messages) assert.equal(set.size, 1, `${route}: refusals differ between existing and missing keys: ${[...set].join(' | ')}`);
      const own = await api(url, 'GET', '/v1/keys/k1', { token: cast.appKey });
      assert.equal(own.status, 200);
      assert.equal(own.body.name, 'k1');
      assert.ok(!JSON.stringify(own.body).includes('material'));
    });
  });
});
