import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { removeDir } from './helpers.js';
import { api, login, setupCast, startServerProcess, type ApiResult, type Cast, type ServerProcess } from './server-helpers.js';

// Bad input on every route: malformed, mistyped, incomplete, oversized or
// tampered requests, bad path parameters, unknown routes, huge headers and
// bad credentials. Each answer is a 4xx in the documented error shape (never
// a 500), echoes no secret-looking input, and the server keeps serving.

const MARKER = 'Zq7SECRETMARKERx';
const b64 = (s: string | Buffer) => Buffer.from(s).toString('base64');

interface RawAnswer {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** Sends bytes on a fresh connection and reads the answer until the server closes or 2 s pass. */
function rawHttp(url: string, data: string): Promise<RawAnswer> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const sock = connect(Number(u.port), u.hostname);
    const chunks: Buffer[] = [];
    const finish = () => {
      const text = Buffer.concat(chunks).toString('latin1');
      const at = text.indexOf('\r\n\r\n');
      if (at < 0) return reject(new Error(`no HTTP answer: ${JSON.stringify(text.slice(0, 200))}`));
      const [statusLine, ...lines] = text.slice(0, at).split('\r\n');
      const headers: Record<string, string> = {};
      for (const l of lines) headers[l.slice(0, l.indexOf(':')).toLowerCase()] = l.slice(l.indexOf(':') + 1).trim();
      let body = text.slice(at + 4);
      if (headers['content-length']) body = body.slice(0, Number(headers['content-length']));
      resolve({ status: Number(statusLine!.split(' ')[1]), headers, body });
    };
    const timer = setTimeout(() => sock.end(), 2000);
    sock.on('data', (d) => chunks.push(d));
    sock.on('close', () => {
      clearTimeout(timer);
      finish();
    });
    sock.on('error', () => {});
    sock.write(data);
  });
}

function flip(ciphertext: string, index: number): string {
  const at = ciphertext.indexOf(':', 3);
  const blob = Buffer.from(ciphertext.slice(at + 1), 'base64');
  const i = index < 0 ? blob.length + index : index;
  blob[i] = blob[i]! ^ 0x01;
  return `${ciphertext.slice(0, at + 1)}${blob.toString('base64')}`;
}

describe('server bad input', () => {
  let srv: ServerProcess;
  let url: string;
  let cast: Cast;
  let ctK1: string;
  let ctK1WithContext: string;
  let ctK2: string;
  let logoutSession: string;
  const requestIds: string[] = [];

  before(async () => {
    // Durability is not under test here; skipping fsync keeps the many requests quick.
    srv = await startServerProcess({ config: { audit: { fsync: false } } });
    url = srv.url;
    cast = await setupCast(url);
    const ok = async (r: Promise<ApiResult>, what: string) => {
      const res = await r;
      assert.ok(res.status >= 200 && res.status < 300, `${what}: ${res.status} ${res.text}`);
      return res;
    };
    for (const k of ['k2', 'kscratch']) await ok(api(url, 'POST', '/v1/keys', { token: cast.keyAdmin, body: { name: k } }), `create ${k}`);
    await ok(api(url, 'PUT', '/v1/apps/app1/grants/k2', { token: cast.keyAdmin, body: { operations: ['encrypt', 'decrypt'] } }), 'grant k2');
    await ok(api(url, 'POST', '/v1/users', { token: cast.admin, body: { name: 'scratchuser', password: 'scratch-password-1', roles: [] } }), 'user');
    await ok(api(url, 'POST', '/v1/apps', { token: cast.admin, body: { name: 'scratchapp' } }), 'app');
    ctK1 = (await ok(api(url, 'POST', '/v1/keys/k1/encrypt', { token: cast.appKey, body: { plaintext: b64('hello k1') } }), 'enc')).body.ciphertext;
    ctK1WithContext = (await ok(api(url, 'POST', '/v1/keys/k1/encrypt', { token: cast.appKey, body: { plaintext: b64('with ctx'), context: b64('ctx-a') } }), 'enc')).body.ciphertext;
    ctK2 = (await ok(api(url, 'POST', '/v1/keys/k2/encrypt', { token: cast.appKey, body: { plaintext: b64('hello k2') } }), 'enc')).body.ciphertext;
    logoutSession = await login(url, 'auditor', cast.passwords.auditor!);
  });

  after(async () => {
    await srv?.stop();
    if (srv) removeDir(srv.dir);
  });

  /** The server still answers a real request end to end. */
  const alive = async (after: string) => {
    const r = await api(url, 'POST', '/v1/keys/k1/decrypt', { token: cast.appKey, body: { ciphertext: ctK1 } });
    assert.equal(r.status, 200, `server not serving after ${after}: ${r.status} ${r.text.slice(0, 200)}`);
    assert.equal(Buffer.from(r.body.plaintext, 'base64').toString(), 'hello k1');
  };

  /** A refused request: 4xx, the error shape, no echo of secrets, then a good request. */
  const refused = async (what: string, r: ApiResult, want: { status?: number | number[]; code?: string | string[] } = {}, secrets: string[] = []) => {
    assert.ok(r.status >= 400 && r.status < 500, `${what}: expected 4xx, got ${r.status} ${r.text.slice(0, 300)}`);
    if (want.status !== undefined) assert.ok([want.status].flat().includes(r.status), `${what}: status ${r.status}, wanted ${want.status}: ${r.text.slice(0, 300)}`);
    assert.match(r.headers.get('content-type') ?? '', /^application\/json/, `${what}: content-type`);
    const e = r.body?.error;
    assert.ok(e && typeof e === 'object', `${what}: not the error shape: ${r.text.slice(0, 300)}`);
    assert.deepEqual(Object.keys(r.body), ['error'], what);
    assert.equal(typeof e.code, 'string', what);
    assert.equal(typeof e.message, 'string', what);
    assert.ok(e.message.length > 0, what);
    assert.equal(e.requestId, r.headers.get('x-request-id'), `${what}: requestId`);
    if (want.code !== undefined) assert.ok([want.code].flat().includes(e.code), `${what}: code ${e.code}, wanted ${want.code}: ${e.message}`);
    for (const s of [MARKER, ...secrets]) assert.ok(!r.text.includes(s), `${what}: the answer echoes ${s.slice(0, 12)}…`);
    requestIds.push(e.requestId);
    await alive(what);
  };

  interface BodyRoute {
    method: string;
    path: string;
    token?: () => string;
    /** A body the route accepts (never sent as is). */
    valid: Record<string, unknown>;
    required: string[];
    /** Fields where null is a valid value. */
    nullable?: string[];
  }

  const bodyRoutes = (): BodyRoute[] => [
    { method: 'POST', path: '/v1/sys/init', valid: { shares: 1, threshold: 1, adminName: 'x' }, required: [] },
    { method: 'POST', path: '/v1/sys/unseal', valid: { share: 'abc' }, required: [] },
    { method: 'POST', path: '/v1/sys/seal', token: () => cast.admin, valid: {}, required: [] },
    { method: 'PUT', path: '/v1/sys/quorum', token: () => cast.admin, valid: { required: 0, operations: ['key.destroy'], ttlS: 3600 }, required: ['required', 'operations', 'ttlS'] },
    { method: 'POST', path: '/v1/auth/login', valid: { name: 'admin', password: 'whatever-password' }, required: ['name', 'password'] },
    { method: 'POST', path: '/v1/auth/logout', token: () => logoutSession, valid: {}, required: [] },
    { method: 'POST', path: '/v1/keys', token: () => cast.keyAdmin, valid: { name: 'newkey', rotationPeriod: '30d' }, required: ['name'], nullable: ['rotationPeriod'] },
    { method: 'POST', path: '/v1/keys/kscratch/rotate', token: () => cast.keyAdmin, valid: {}, required: [] },
    { method: 'PUT', path: '/v1/keys/kscratch/policy', token: () => cast.keyAdmin, valid: { rotationPeriod: '30d', minDecryptionVersion: 1 }, required: [], nullable: ['rotationPeriod'] },
    { method: 'POST', path: '/v1/keys/kscratch/disable', token: () => cast.keyAdmin, valid: {}, required: [] },
    { method: 'POST', path: '/v1/keys/kscratch/enable', token: () => cast.keyAdmin, valid: {}, required: [] },
    { method: 'POST', path: '/v1/keys/kscratch/destroy', token: () => cast.keyAdmin, valid: { pendingDays: 7 }, required: [] },
    { method: 'POST', path: '/v1/keys/kscratch/cancel-destroy', token: () => cast.keyAdmin, valid: {}, required: [] },
    { method: 'POST', path: '/v1/keys/k1/encrypt', token: () => cast.appKey, valid: { plaintext: b64('x'), context: b64('c') }, required: ['plaintext'] },
    { method: 'POST', path: '/v1/keys/k1/decrypt', token: () => cast.appKey, valid: { ciphertext: ctK1, context: b64('c') }, required: ['ciphertext'] },
    { method: 'POST', path: '/v1/keys/k1/rewrap', token: () => cast.appKey, valid: { ciphertext: ctK1, context: b64('c') }, required: ['ciphertext'] },
    { method: 'POST', path: '/v1/keys/k1/datakey', token: () => cast.appKey, valid: { bytes: 32, context: b64('c'), includePlaintext: true }, required: [] },
    // node is required only with cluster (present in `valid`).
    { method: 'POST', path: '/v1/keys/k1/status', token: () => cast.appKey, valid: { cluster: 'prod-eu-1', node: 'cp-1.example.com', pluginVersion: 'v0.1.0', keyId: 'kh1:0123456789abcdef:0123456789abcdef:1:0123456789abcdef', lastSuccess: '2026-01-31T12:00:00Z' }, required: ['node'] },
    { method: 'POST', path: '/v1/users', token: () => cast.admin, valid: { name: 'someone', password: 'someone-password-1', roles: ['auditor'] }, required: ['name', 'password'] },
    { method: 'PUT', path: '/v1/users/scratchuser/roles', token: () => cast.admin, valid: { roles: ['auditor'] }, required: ['roles'] },
    { method: 'POST', path: '/v1/users/scratchuser/unlock', token: () => cast.admin, valid: {}, required: [] },
    { method: 'POST', path: '/v1/users/scratchuser/disable', token: () => cast.admin, valid: {}, required: [] },
    { method: 'POST', path: '/v1/users/scratchuser/enable', token: () => cast.admin, valid: {}, required: [] },
    { method: 'PUT', path: '/v1/users/scratchuser/password', token: () => cast.admin, valid: { password: 'scratch-password-2' }, required: ['password'] },
    { method: 'PUT', path: '/v1/auth/password', token: () => cast.auditor, valid: { currentPassword: 'auditor-password-123', newPassword: 'auditor-password-456' }, required: ['currentPassword', 'newPassword'] },
    { method: 'POST', path: '/v1/apps', token: () => cast.admin, valid: { name: 'someapp', description: 'd', certFingerprint: 'ab'.repeat(32) }, required: ['name'] },
    { method: 'POST', path: '/v1/apps/scratchapp/rotate-key', token: () => cast.admin, valid: {}, required: [] },
    { method: 'PUT', path: '/v1/apps/scratchapp/grants/k1', token: () => cast.keyAdmin, valid: { operations: ['encrypt'] }, required: ['operations'] },
    { method: 'POST', path: '/v1/approvals/0123456789abcdef/approve', token: () => cast.keyAdmin, valid: {}, required: [] },
    { method: 'POST', path: '/v1/approvals/0123456789abcdef/deny', token: () => cast.keyAdmin, valid: {}, required: [] },
    { method: 'POST', path: '/v1/approvals/0123456789abcdef/collect', token: () => cast.keyAdmin, valid: {}, required: [] },
    { method: 'POST', path: '/v1/key-ids/resolve', token: () => cast.keyAdmin, valid: { keyIds: ['kh1:0123456789abcdef:0123456789abcdef:1:0123456789abcdef'] }, required: ['keyIds'] },
    { method: 'PUT', path: '/v1/clusters/prod-eu-1/scan-report', token: () => cast.keyAdmin, valid: { scannedAt: '2026-01-31T12:00:00Z', source: 'etcd https://10.0.0.1:2379', objects: 2, plaintext: 0, byKeyId: [{ keyId: 'kh1:0123456789abcdef:0123456789abcdef:1:0123456789abcdef', count: 2 }], byForm: [{ form: 'kms-v2', provider: 'keyhaven', count: 2 }] }, required: ['scannedAt', 'source', 'objects', 'plaintext', 'byKeyId', 'byForm'] },
    { method: 'POST', path: '/v1/recoveries', token: () => cast.appKey, valid: { reason: 'INC-1: restore', cluster: 'prod-eu-1' }, required: ['reason'] },
    { method: 'POST', path: '/v1/recoveries/0123456789abcdef/close', token: () => cast.appKey, valid: { objects: 1, failed: 0 }, required: [] },
    { method: 'POST', path: '/v1/audit/verify', token: () => cast.auditor, valid: { checkpoints: [{ v: 1, store: '00', seq: 1, hash: '0'.repeat(64), time: '2026-01-01T00:00:00Z', prev: '0'.repeat(64), mac: '0'.repeat(64) }], at: ['w:1'] }, required: ['checkpoints'] },
  ];

  /** A value of another JSON type than `v`, carrying the marker where it is a string. */
  const wrongType = (v: unknown): unknown => (typeof v === 'string' ? 12345 : typeof v === 'number' ? `${MARKER}7` : typeof v === 'boolean' ? `${MARKER}true` : Array.isArray(v) ? `${MARKER}list` : [MARKER]);

  it('every body route refuses malformed JSON, wrong content types, wrong shapes, missing and extra fields, oversized bodies', async () => {
    const routes = bodyRoutes();
    // The table must cover every POST and PUT route the server has.
    const doc = await api(url, 'GET', '/v1/openapi.json');
    const withBody = new Set<string>();
    for (const [p, item] of Object.entries(doc.body.paths as Record<string, Record<string, unknown>>)) {
      for (const m of ['post', 'put']) if (m in item) withBody.add(`${m.toUpperCase()} ${p}`);
    }
    const covered = new Set(routes.map((r) => `${r.method} ${r.path.replace(/^\/v1\/keys\/(kscratch|k1)\//, '/v1/keys/{name}/').replace(/^\/v1\/users\/scratchuser\//, '/v1/users/{name}/').replace(/^\/v1\/apps\/scratchapp\/grants\/k1$/, '/v1/apps/{name}/grants/{key}').replace(/^\/v1\/apps\/scratchapp\//, '/v1/apps/{name}/').replace(/^\/v1\/approvals\/[0-9a-f]{16}\//, '/v1/approvals/{id}/').replace(/^\/v1\/recoveries\/[0-9a-f]{16}\//, '/v1/recoveries/{id}/').replace(/^\/v1\/clusters\/prod-eu-1\//, '/v1/clusters/{cluster}/')}`));
    assert.deepEqual([...withBody].sort(), [...covered].sort());

    for (const r of routes) {
      const token = r.token?.();
      const send = (body: string | undefined, headers: Record<string, string> = {}) => api(url, r.method, r.path, { token, body, headers: { 'content-type': 'application/json', ...headers } });
      const what = (c: string) => `${r.method} ${r.path}: ${c}`;
      await refused(what('malformed JSON'), await send(`{"name": "${MARKER}", `), { status: 400, code: 'invalid_argument' });
      await refused(what('trailing garbage'), await send(`${JSON.stringify(r.valid)} x`), { status: 400, code: 'invalid_argument' });
      await refused(what('form content type'), await send(new URLSearchParams({ a: MARKER }).toString(), { 'content-type': 'application/x-www-form-urlencoded' }), { status: [400, 415], code: 'invalid_argument' });
      await refused(what('text/plain'), await send(JSON.stringify(r.valid), { 'content-type': 'text/plain' }), { status: [400, 415], code: 'invalid_argument' });
      for (const top of ['[]', `"${MARKER}"`, 'null']) await refused(what(`body ${top.slice(0, 8)}`), await send(top), { status: 400, code: 'invalid_argument' });
      for (const [field, v] of Object.entries(r.valid)) {
        await refused(what(`${field} of the wrong type`), await send(JSON.stringify({ ...r.valid, [field]: wrongType(v) })), { status: 400, code: 'invalid_argument' });
        if (!r.nullable?.includes(field)) await refused(what(`${field} null`), await send(JSON.stringify({ ...r.valid, [field]: null })), { status: 400, code: 'invalid_argument' });
      }
      for (const field of r.required) {
        const body = { ...r.valid };
        delete body[field];
        await refused(what(`missing ${field}`), await send(JSON.stringify(body)), { status: 400, code: 'invalid_argument' });
      }
      await refused(what('extra field'), await send(JSON.stringify({ ...r.valid, unexpected: MARKER })), { status: 400, code: 'invalid_argument' });
      await refused(what('prototype poisoning'), await send(`{"__proto__": {"admin": true}, "x": "${MARKER}"}`), { status: 400, code: 'invalid_argument' });
      await refused(what('oversized body'), await send(JSON.stringify({ ...r.valid, pad: MARKER.repeat(70_000) })), { status: 413, code: 'too_large' });
    }
    // The scratch objects were never touched.
    const k = await api(url, 'GET', '/v1/keys/kscratch', { token: cast.keyAdmin });
    assert.equal(k.body.state, 'enabled');
    assert.equal(k.body.currentVersion, 1);
    assert.equal(k.body.rotationPeriod, null);
    const q = await api(url, 'GET', '/v1/sys/quorum', { token: cast.admin });
    assert.equal(q.body.required, 0);
    assert.deepEqual(q.body.operations.length, 9, "the default policy lists every guardable operation");
    assert.equal((await api(url, 'GET', '/v1/auth/whoami', { token: logoutSession })).status, 200, 'logout never ran');
    assert.equal((await api(url, 'GET', '/v1/sys/health')).status, 200, 'seal never ran');
  });

  it('DELETE and GET routes refuse bad bodies and bad query strings', async () => {
    const del = (body: string, ct = 'application/json') => api(url, 'DELETE', '/v1/apps/scratchapp/grants/k1', { token: cast.keyAdmin, body, headers: { 'content-type': ct } });
    await refused('DELETE malformed JSON', await del(`{"a": "${MARKER}`), { status: 400 });
    await refused('DELETE form body', await del('a=b', 'application/x-www-form-urlencoded'), { status: [400, 415] });
    const aud = (q: string) => api(url, 'GET', `/v1/audit?${q}`, { token: cast.auditor });
    for (const q of ['limit=abc', 'limit=0', 'limit=100001', 'after=-1', 'since=yesterday', `until=${MARKER}`, 'principal=' + 'x'.repeat(200), 'extra=1', 'limit=1&limit=2']) {
      await refused(`GET /v1/audit?${q.slice(0, 30)}`, await aud(q), { status: 400, code: 'invalid_argument' });
    }
    for (const q of [`state=${MARKER}`, 'state=', 'other=1']) {
      await refused(`GET /v1/approvals?${q}`, await api(url, 'GET', `/v1/approvals?${q}`, { token: cast.keyAdmin }), { status: 400, code: 'invalid_argument' });
    }
  });

  it('plugin status reports and the cluster list: bad names, oversized fields and filters get precise messages', async () => {
    const status = (body: unknown) => api(url, 'POST', '/v1/keys/k1/status', { token: cast.appKey, body });
    const message = (r: ApiResult) => r.body?.error?.message as string;
    const badClusters: [string, RegExp][] = [
      ['', /^body\.cluster: must have at least 1 character$/],
      ['x'.repeat(64), /^body\.cluster: must have at most 63 characters$/],
      [MARKER.repeat(100), /^body\.cluster: must have at most 63 characters$/],
      ['Prod', /^body\.cluster: must be a cluster name/],
      ['-prod', /^body\.cluster: must be a cluster name/],
      ['prod-', /^body\.cluster: must be a cluster name/],
      ['prod.', /^body\.cluster: must be a cluster name/],
      ['prod_eu', /^body\.cluster: must be a cluster name/],
      ['prod eu', /^body\.cluster: must be a cluster name/],
      ['pröd', /^body\.cluster: must be a cluster name/],
      ['prod\n', /^body\.cluster: must be a cluster name/],
    ];
    for (const [cluster, want] of badClusters) {
      const r = await status({ cluster, node: 'cp-1' });
      await refused(`cluster ${JSON.stringify(cluster).slice(0, 20)}`, r, { status: 400, code: 'invalid_argument' });
      assert.match(message(r), want, JSON.stringify(cluster).slice(0, 20));
    }
    const fields: [Record<string, unknown>, RegExp][] = [
      [{ cluster: 'prod' }, /^body\.node: is required when cluster is given$/],
      [{ cluster: 'prod', node: '' }, /^body\.node: must have at least 1 character$/],
      [{ cluster: 'prod', node: 'n'.repeat(254) }, /^body\.node: must have at most 253 characters$/],
      [{ cluster: 'prod', node: 'cp_1' }, /^body\.node: must be a host name/],
      [{ cluster: 'prod', node: '-cp1' }, /^body\.node: must be a host name/],
      [{ cluster: 'prod', node: 'cp-1', pluginVersion: '' }, /^body\.pluginVersion: must have at least 1 character$/],
      [{ cluster: 'prod', node: 'cp-1', pluginVersion: 'v'.repeat(65) }, /^body\.pluginVersion: must have at most 64 characters$/],
      [{ cluster: 'prod', node: 'cp-1', pluginVersion: '0.1 beta' }, /^body\.pluginVersion: must be printable ASCII without spaces$/],
      [{ cluster: 'prod', node: 'cp-1', keyId: 'k'.repeat(1025) }, /^body\.keyId: must have at most 1024 characters$/],
      [{ cluster: 'prod', node: 'cp-1', keyId: `${MARKER}\u0000` }, /^body\.keyId: must be printable ASCII without spaces$/],
      [{ cluster: 'prod', node: 'cp-1', lastSuccess: 'yesterday' }, /^body\.lastSuccess: must be an ISO 8601 date-time/],
      [{ cluster: 'prod', node: 'cp-1', lastSuccess: '2026-02-30T00:00:00Z' }, /^body\.lastSuccess: must be an ISO 8601 date-time/],
      [{ cluster: 'prod', node: 'cp-1', lastSuccess: `2026-01-01T00:00:00.${'1'.repeat(100)}Z` }, /^body\.lastSuccess: must have at most 64 characters$/],
      [{ cluster: 'prod', node: 'cp-1', lastSuccess: 1769860800000 }, /^body\.lastSuccess: /],
    ];
    for (const [body, want] of fields) {
      const r = await status(body);
      await refused(`status ${JSON.stringify(body).slice(0, 60)}`, r, { status: 400, code: 'invalid_argument' });
      assert.match(message(r), want, JSON.stringify(body).slice(0, 60));
    }
    // None of the refused reports was recorded.
    const listed = await api(url, 'GET', '/v1/clusters', { token: cast.auditor });
    assert.equal(listed.status, 200, listed.text);
    assert.deepEqual(listed.body.clusters, []);
    // A bare POST, an empty object and fields without a cluster are valid probes.
    for (const body of [undefined, {}, { pluginVersion: '0.1.0' }]) {
      const r = await api(url, 'POST', '/v1/keys/k1/status', { token: cast.appKey, ...(body === undefined ? {} : { body }) });
      assert.equal(r.status, 200, `${JSON.stringify(body)}: ${r.text}`);
    }

    const list = (q: string) => api(url, 'GET', `/v1/clusters?${q}`, { token: cast.auditor });
    for (const [q, want] of [
      ['key=bad%20name', /^querystring\.key: must be a key name/],
      [`key=${'x'.repeat(129)}`, /^querystring\.key: must be a key name/],
      ['app=Admin', /^querystring\.app: must be a user or app name/],
      [`app=${MARKER}`, /^querystring\.app: must be a user or app name/],
      ['key=k1&key=k2', /^querystring\.key: /],
      ['cluster=prod', /^querystring: /],
    ] as const) {
      const r = await list(q);
      await refused(`GET /v1/clusters?${q.slice(0, 30)}`, r, { status: 400, code: 'invalid_argument' });
      assert.match(message(r), want, q.slice(0, 30));
    }
    await refused('clusters of an unknown key', await list('key=no-such-key'), { status: 404, code: 'not_found' });
    await refused('clusters of an unknown app', await list('app=no-such-app'), { status: 404, code: 'not_found' });
    await refused('clusters of a user', await list('app=auditor'), { status: 404, code: 'not_found' });
  });

  it('crypto inputs: bad base64, limits, batches', async () => {
    const enc = (body: unknown) => api(url, 'POST', '/v1/keys/k1/encrypt', { token: cast.appKey, body });
    for (const p of [`${MARKER}!!`, 'AAA', 'AA=A', 'A===', ' AAAA', 'AAAA\n', 'YWJj-_==']) {
      await refused(`plaintext ${JSON.stringify(p).slice(0, 12)}`, await enc({ plaintext: p }), { status: 400, code: 'invalid_argument' });
      await refused(`context ${JSON.stringify(p).slice(0, 12)}`, await enc({ plaintext: b64('x'), context: p }), { status: 400, code: 'invalid_argument' });
    }
    const ok64 = await enc({ plaintext: Buffer.alloc(64 * 1024, 7).toString('base64') });
    assert.equal(ok64.status, 200, `64 KiB plaintext: ${ok64.text.slice(0, 200)}`);
    for (const n of [64 * 1024 + 1, 64 * 1024 + 2, 64 * 1024 + 3, 200 * 1024]) {
      await refused(`plaintext of ${n} bytes`, await enc({ plaintext: Buffer.alloc(n, 7).toString('base64') }), { status: [400, 413], code: ['invalid_argument', 'too_large'] });
    }
    for (const n of [4 * 1024 + 1, 4 * 1024 + 2, 8 * 1024]) {
      await refused(`context of ${n} bytes`, await enc({ plaintext: b64('x'), context: Buffer.alloc(n, 1).toString('base64') }), { status: [400, 413], code: ['invalid_argument', 'too_large'] });
    }
    const item = { plaintext: b64('b') };
    assert.equal((await enc({ batch: Array(1000).fill(item) })).status, 200, 'a batch of 1000');
    await refused('batch of 1001', await enc({ batch: Array(1001).fill(item) }), { status: [400, 413], code: ['invalid_argument', 'too_large'] });
    await refused('empty batch', await enc({ batch: [] }), { status: 400 });
    await refused('batch not a list', await enc({ batch: { plaintext: b64('x') } }), { status: 400 });
    await refused('batch with a bad item', await enc({ batch: [item, { plaintext: `${MARKER}!` }] }), { status: 400 });
    await refused('batch and single together', await enc({ batch: [item], plaintext: b64('x') }), { status: 400 });
    const dk = (body: unknown) => api(url, 'POST', '/v1/keys/k1/datakey', { token: cast.appKey, body });
    for (const bytes of [0, 15, 65, -1, 32.5, 1e309]) await refused(`datakey bytes ${bytes}`, await dk({ bytes }), { status: 400 });
    await refused('datakey bytes as a huge literal', await api(url, 'POST', '/v1/keys/k1/datakey', { token: cast.appKey, body: '{"bytes": 1e999}' }), { status: 400 });
    const dec = (body: unknown) => api(url, 'POST', '/v1/keys/k1/decrypt', { token: cast.appKey, body });
    for (const c of ['kh:v1:', `kh:v1:${MARKER}!`, 'vault:v1:AAAA', 'kh:1:AAAA', 'kh:vx:AAAA', `kh:v1:${'A'.repeat(200_004)}`, `kh:v${'9'.repeat(11)}:AAAA`]) {
      await refused(`ciphertext ${c.slice(0, 16)}`, await dec({ ciphertext: c }), { status: 400 });
    }
  });

  it('tampered ciphertexts are refused with 400', async () => {
    const dec = (ciphertext: string, context?: string, key = 'k1') => api(url, 'POST', `/v1/keys/${key}/decrypt`, { token: cast.appKey, body: { ciphertext, ...(context ? { context } : {}) } });
    const rew = (ciphertext: string) => api(url, 'POST', '/v1/keys/k1/rewrap', { token: cast.appKey, body: { ciphertext } });
    assert.equal((await dec(ctK1)).status, 200);
    const blobLen = Buffer.from(ctK1.slice(ctK1.indexOf(':', 3) + 1), 'base64').length;
    for (const i of [0, 1, 5, 9, 12, 14, 20, blobLen - 17, blobLen - 1]) {
      const r = await dec(flip(ctK1, i));
      await refused(`byte ${i} flipped`, r, { status: [400, 404], code: ['integrity', 'invalid_argument', 'unknown_key_id'] }, [b64('hello k1')]);
    }
    // A flip in the sealed part (after the header) is an authentication failure.
    await refused('ciphertext body flipped', await dec(flip(ctK1, -1)), { status: 400, code: 'integrity' });
    await refused('nonce flipped', await dec(flip(ctK1, 14)), { status: 400, code: 'integrity' });
    await refused('rewrap of a flipped ciphertext', await rew(flip(ctK1, -1)), { status: 400, code: 'integrity' });
    await refused('truncated', await dec(`kh:v1:${Buffer.from(ctK1.slice(6), 'base64').subarray(0, 20).toString('base64')}`), { status: 400 });
    await refused('label changed to v2', await dec(ctK1.replace(/^kh:v1:/, 'kh:v2:')), { status: 400 });
    await refused('label changed to v0', await dec(ctK1.replace(/^kh:v1:/, 'kh:v0:')), { status: 400 });
    await refused('label changed to a huge version', await dec(ctK1.replace(/^kh:v1:/, 'kh:v4294967296:')), { status: 400 });
    await refused('ciphertext of another key', await dec(ctK2), { status: 400 });
    await refused('ciphertext of another key, rewrap', await rew(ctK2), { status: 400 });
    await refused('ciphertext of k1 at k2', await dec(ctK1, undefined, 'k2'), { status: 400 });
    assert.equal((await dec(ctK1WithContext, b64('ctx-a'))).status, 200);
    await refused('context mismatch', await dec(ctK1WithContext, b64('ctx-b')), { status: 400, code: 'integrity' }, [b64('with ctx')]);
    await refused('context missing', await dec(ctK1WithContext), { status: 400, code: 'integrity' });
    await refused('context where none was bound', await dec(ctK1, b64('ctx-a')), { status: 400, code: 'integrity' });
    // In a batch, each bad item fails alone.
    const batch = await api(url, 'POST', '/v1/keys/k1/decrypt', { token: cast.appKey, body: { batch: [{ ciphertext: ctK1 }, { ciphertext: flip(ctK1, -1) }, { ciphertext: ctK2 }] } });
    assert.equal(batch.status, 200, batch.text);
    assert.equal(Buffer.from(batch.body.batch[0].plaintext, 'base64').toString(), 'hello k1');
    assert.equal(batch.body.batch[1].error.code, 'integrity');
    assert.ok(batch.body.batch[2].error, 'another key\'s ciphertext in a batch');
    assert.ok(!('plaintext' in batch.body.batch[2]));
  });

  it('bad path parameters', async () => {
    const badKeys = ['bad%20name', '-lead', '.hidden', 'x'.repeat(129), 'x'.repeat(5000), '%C3%A9', 'a%2Fb', 'a%00b', 'k1%0A', '%E0%A4%A', `${MARKER}%3Cscript%3E`];
    for (const k of badKeys) {
      await refused(`GET key ${k.slice(0, 20)}`, await api(url, 'GET', `/v1/keys/${k}`, { token: cast.keyAdmin }), { status: 400, code: 'invalid_argument' });
      await refused(`encrypt key ${k.slice(0, 20)}`, await api(url, 'POST', `/v1/keys/${k}/encrypt`, { token: cast.appKey, body: { plaintext: b64('x') } }), { status: [400, 403] });
      await refused(`rotate key ${k.slice(0, 20)}`, await api(url, 'POST', `/v1/keys/${k}/rotate`, { token: cast.keyAdmin, body: {} }), { status: 400 });
    }
    // A 128-character name is valid: it can be created and addressed.
    const long = `L${'x'.repeat(127)}`;
    assert.equal((await api(url, 'POST', '/v1/keys', { token: cast.keyAdmin, body: { name: long } })).status, 200);
    const got = await api(url, 'GET', `/v1/keys/${long}`, { token: cast.keyAdmin });
    assert.equal(got.status, 200, `GET a 128-character key name: ${got.text.slice(0, 200)}`);
    await refused('unknown key', await api(url, 'GET', '/v1/keys/no-such-key', { token: cast.keyAdmin }), { status: 404, code: 'not_found' });
    for (const n of ['Admin', 'a b', '-x', 'x'.repeat(65), '%C3%A9']) {
      await refused(`roles of ${n.slice(0, 10)}`, await api(url, 'PUT', `/v1/users/${n}/roles`, { token: cast.admin, body: { roles: [] } }), { status: 400 });
      await refused(`rotate-key of ${n.slice(0, 10)}`, await api(url, 'POST', `/v1/apps/${n}/rotate-key`, { token: cast.admin, body: {} }), { status: 400 });
      await refused(`grant for ${n.slice(0, 10)}`, await api(url, 'PUT', `/v1/apps/${n}/grants/k1`, { token: cast.keyAdmin, body: { operations: ['encrypt'] } }), { status: 400 });
    }
    await refused('grant on a bad key name', await api(url, 'PUT', '/v1/apps/scratchapp/grants/bad%20key', { token: cast.keyAdmin, body: { operations: ['encrypt'] } }), { status: 400 });
    await refused('grant on a missing key', await api(url, 'PUT', '/v1/apps/scratchapp/grants/no-such-key', { token: cast.keyAdmin, body: { operations: ['encrypt'] } }), { status: 404 });
    await refused('grant for a missing app', await api(url, 'PUT', '/v1/apps/no-such-app/grants/k1', { token: cast.keyAdmin, body: { operations: ['encrypt'] } }), { status: 404 });
    await refused('revoke a grant that does not exist', await api(url, 'DELETE', '/v1/apps/scratchapp/grants/k1', { token: cast.keyAdmin }), { status: 404 });
    for (const id of ['xyz', '0123456789abcde', '0123456789ABCDEF', '0123456789abcdef0', 'g123456789abcdef', `${MARKER}`]) {
      await refused(`approval id ${id}`, await api(url, 'GET', `/v1/approvals/${id}`, { token: cast.keyAdmin }), { status: 400, code: 'invalid_argument' });
      await refused(`approve ${id}`, await api(url, 'POST', `/v1/approvals/${id}/approve`, { token: cast.keyAdmin, body: {} }), { status: 400, code: 'invalid_argument' });
      await refused(`deny ${id}`, await api(url, 'POST', `/v1/approvals/${id}/deny`, { token: cast.keyAdmin, body: {} }), { status: 400, code: 'invalid_argument' });
      await refused(`collect ${id}`, await api(url, 'POST', `/v1/approvals/${id}/collect`, { token: cast.keyAdmin, body: {} }), { status: 400, code: 'invalid_argument' });
    }
    await refused('unknown approval', await api(url, 'GET', '/v1/approvals/0123456789abcdef', { token: cast.keyAdmin }), { status: 404, code: 'not_found' });
    await refused('approve unknown', await api(url, 'POST', '/v1/approvals/0123456789abcdef/approve', { token: cast.keyAdmin, body: {} }), { status: 404, code: 'not_found' });
  });

  it('unknown routes and methods answer 404 in the error shape', async () => {
    for (const [m, p] of [
      ['GET', '/'],
      ['GET', '/v1'],
      ['GET', '/v1/nope'],
      ['GET', '/v2/keys'],
      ['POST', '/v1/keys/k1/explode'],
      ['DELETE', '/v1/keys'],
      ['PATCH', '/v1/keys/k1'],
      ['PUT', '/v1/sys/health'],
      ['GET', '/v1/keys/k1/encrypt'],
      ['GET', `/v1/${'x'.repeat(3000)}`],
    ] as const) {
      const r = await api(url, m, p, { token: cast.keyAdmin });
      await refused(`${m} ${p.slice(0, 30)}`, r, { status: 404, code: 'not_found' }, [cast.keyAdmin]);
    }
  });

  it('huge headers and malformed HTTP get an answer in the error shape, and the server keeps serving', async () => {
    const huge = await rawHttp(url, `GET /v1/sys/health HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`);
    assert.equal(huge.status, 431, `huge header: ${huge.status}`);
    const body = JSON.parse(huge.body);
    assert.deepEqual(Object.keys(body), ['error']);
    assert.equal(body.error.code, 'too_large');
    assert.equal(body.error.requestId, huge.headers['x-request-id']);
    assert.equal(typeof body.error.code, 'string');
    assert.equal(typeof body.error.message, 'string');
    assert.equal(typeof body.error.requestId, 'string');
    await alive('huge header');
    const many = await rawHttp(url, `GET /v1/sys/health HTTP/1.1\r\nHost: x\r\n${Array.from({ length: 3000 }, (_, i) => `X-H${i}: v`).join('\r\n')}\r\n\r\n`);
    assert.ok(many.status >= 400 && many.status < 500, `many headers: ${many.status}`);
    assert.ok(JSON.parse(many.body).error.code);
    await alive('many headers');
    const bearer = await rawHttp(url, `GET /v1/auth/whoami HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${MARKER}${'b'.repeat(20_000)}\r\n\r\n`);
    assert.ok(bearer.status >= 400 && bearer.status < 500);
    assert.ok(!bearer.body.includes(MARKER));
    assert.ok(JSON.parse(bearer.body).error.code);
    const garbage = await rawHttp(url, `NOT HTTP AT ALL ${MARKER}\r\n\r\n`);
    assert.equal(garbage.status, 400, `garbage: ${garbage.status}`);
    assert.equal(JSON.parse(garbage.body).error.code, 'invalid_argument');
    assert.ok(!garbage.body.includes(MARKER));
    await alive('garbage request');
  });

  it('bad credentials: garbage, wrong prefix, unknown, malformed headers; never echoed', async () => {
    const ak = cast.appKey;
    // <prefix>_<16 hex id>_<secret>
    const secretPart = ak.slice(21);
    const cases: [string, string][] = [
      ['garbage', `Bearer ${MARKER}`],
      ['wrong prefix', `Bearer khx_${ak.slice(4)}`],
      ['api key as a session', `Bearer khs_${ak.slice(4)}`],
      ['valid format, unknown id', `Bearer kha_0123456789abcdef_${secretPart}`],
      ['known id, wrong secret', `Bearer ${ak.slice(0, 21)}${MARKER}${'A'.repeat(43 - MARKER.length)}`],
      ['token with a space', `Bearer ${ak} extra`],
      ['no scheme', ak],
      ['basic', `Basic ${b64(`app1:${ak}`)}`],
      ['empty bearer', 'Bearer '],
      ['lower-case scheme', `bearer ${MARKER}`],
      ['overlong', `Bearer ${MARKER}${'x'.repeat(2000)}`],
    ];
    for (const [what, h] of cases) {
      const r = await api(url, 'GET', '/v1/auth/whoami', { headers: { authorization: h } });
      await refused(`credentials: ${what}`, r, { status: 401, code: 'unauthenticated' }, [ak, secretPart, `${MARKER}${'A'.repeat(43 - MARKER.length)}`]);
      const e = await api(url, 'POST', '/v1/keys/k1/encrypt', { headers: { authorization: h }, body: { plaintext: b64('x') } });
      await refused(`credentials on encrypt: ${what}`, e, { status: 401, code: 'unauthenticated' }, [ak, secretPart]);
    }
    const pw = `${MARKER}-password`;
    await refused('wrong password', await api(url, 'POST', '/v1/auth/login', { body: { name: 'admin', password: pw } }), { status: 401, code: 'unauthenticated' }, [pw]);
    await refused('overlong password', await api(url, 'POST', '/v1/auth/login', { body: { name: 'admin', password: pw.repeat(100) } }), { status: 400 }, [pw]);
    await refused('weak password for a new user', await api(url, 'POST', '/v1/users', { token: cast.admin, body: { name: 'weak', password: MARKER.slice(0, 10), roles: [] } }), { status: 400 }, [MARKER.slice(0, 10)]);
    await refused('password of the wrong type', await api(url, 'POST', '/v1/users', { token: cast.admin, body: { name: 'weak', password: [pw], roles: [] } }), { status: 400 }, [pw]);
    await refused('unknown role', await api(url, 'POST', '/v1/users', { token: cast.admin, body: { name: 'weak', password: pw, roles: ['root'] } }), { status: 400 }, [pw]);
  });

  it('every refused request with a request id has its audit record', async () => {
    assert.ok(requestIds.length > 300, `only ${requestIds.length} refusals ran`);
    const seen = new Set<string>();
    let after = 0;
    for (;;) {
      const r = await api(url, 'GET', `/v1/audit?after=${after}&limit=10000`, { token: cast.auditor });
      const rows = r.text.split('\n').filter(Boolean).map((l) => JSON.parse(l));
      for (const row of rows) seen.add(row.request_id);
      if (rows.length < 10000) break;
      after = rows[rows.length - 1].seq;
    }
    const missing = requestIds.filter((id) => !seen.has(id));
    assert.deepEqual(missing, []);
  });
});
