import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseKeyId } from '../src/keys/key-id.js';
import { cleanCliEnv, cliExpect, removeDir, runCli, tempDir, waitFor, type CliResult } from './helpers.js';
import { api, auditRecords, setupCast, startServerProcess, type ApiResult, type Cast, type ServerProcess } from './server-helpers.js';

// The KMS plugin's remote provider on a real `keyhaven server`: the per-key
// status probe (a real self-test, refused like encrypt), the cluster reports
// it records, and how operators read them (API and CLI).

describe('plugin status probes and cluster reports', () => {
  let srv: ServerProcess;
  let url: string;
  let cast: Cast;
  let cliHome: string;
  let app2Key: string;

  const probe = (token: string, key: string, body?: unknown, headers?: Record<string, string>) =>
    api(url, 'POST', `/v1/keys/${key}/status`, { token, ...(body === undefined ? {} : { body }), ...(headers ? { headers } : {}) });
  const mustOk = async (r: Promise<ApiResult> | ApiResult, what: string) => {
    const res = await r;
    assert.ok(res.status >= 200 && res.status < 300, `${what}: ${res.status} ${res.text}`);
    return res;
  };
  const clusters = async (q = '', token = cast.auditor) => (await mustOk(api(url, 'GET', `/v1/clusters${q}`, { token }), `GET /v1/clusters${q}`)).body.clusters as any[];
  const find = (rows: any[], app: string, cluster: string, node: string) => rows.find((r) => r.app === app && r.cluster === cluster && r.node === node);

  const kh = (args: string[], token?: string): Promise<CliResult> =>
    runCli(args, { env: { ...cleanCliEnv(), KEYHAVEN_ADDR: url, XDG_CONFIG_HOME: cliHome, ...(token ? { KEYHAVEN_TOKEN: token } : {}) } });
  const { ok, json } = cliExpect(kh);

  before(async () => {
    srv = await startServerProcess();
    url = srv.url;
    cast = await setupCast(url);
    cliHome = tempDir('kh-clusters-cli-');
    for (const k of ['k2', 'k3']) await mustOk(api(url, 'POST', '/v1/keys', { token: cast.keyAdmin, body: { name: k } }), `create ${k}`);
    const app2 = await mustOk(api(url, 'POST', '/v1/apps', { token: cast.admin, body: { name: 'app2' } }), 'create app2');
    app2Key = app2.body.apiKey;
    await mustOk(api(url, 'PUT', '/v1/apps/app2/grants/k2', { token: cast.keyAdmin, body: { operations: ['encrypt', 'decrypt'] } }), 'grant app2 k2');
    await mustOk(api(url, 'PUT', '/v1/apps/app1/grants/k3', { token: cast.keyAdmin, body: { operations: ['encrypt', 'decrypt'] } }), 'grant app1 k3');
  });

  after(async () => {
    await srv?.stop();
    if (srv) removeDir(srv.dir);
    if (cliHome) removeDir(cliHome);
  });

  it('a probe self-tests the current version; its key_id changes with a rotation, the store id does not', async () => {
    const first = await mustOk(probe(cast.appKey, 'k1', {}), 'probe');
    assert.deepEqual(Object.keys(first.body).sort(), ['keyId', 'liveKeyIds', 'minDecryptionVersion', 'name', 'state', 'version']);
    assert.deepEqual(first.body.liveKeyIds, [first.body.keyId]);
    assert.equal(first.body.name, 'k1');
    assert.equal(first.body.version, 1);
    assert.equal(first.body.minDecryptionVersion, 1);
    assert.equal(first.body.state, 'enabled');
    const p1 = parseKeyId(first.body.keyId);
    assert.equal(p1.version, 1);
    assert.match(p1.storeId, /^[0-9a-f]{16}$/);
    // Stable while nothing changes; a bare POST (no body) is a probe too.
    const bare = await mustOk(probe(cast.appKey, 'k1'), 'bare probe');
    assert.equal(bare.body.keyId, first.body.keyId);

    await mustOk(api(url, 'POST', '/v1/keys/k1/rotate', { token: cast.keyAdmin, body: {} }), 'rotate');
    const second = await mustOk(probe(cast.appKey, 'k1', {}), 'probe after rotate');
    assert.equal(second.body.version, 2);
    assert.notEqual(second.body.keyId, first.body.keyId);
    const p2 = parseKeyId(second.body.keyId);
    assert.equal(p2.version, 2);
    assert.equal(p2.storeId, p1.storeId, 'the store id is stable across rotations');
    assert.equal(p2.keyRef, p1.keyRef, 'same key');
    assert.notEqual(p2.tag, p1.tag, 'each version has its own tag');
    assert.deepEqual(second.body.liveKeyIds, [first.body.keyId, second.body.keyId], 'both versions still decrypt');

    // The minimum decryption version is the key's policy.
    await mustOk(api(url, 'PUT', '/v1/keys/k1/policy', { token: cast.keyAdmin, body: { minDecryptionVersion: 2 } }), 'policy');
    const retired = (await mustOk(probe(cast.appKey, 'k1', {}), 'probe')).body;
    assert.equal(retired.minDecryptionVersion, 2);
    assert.deepEqual(retired.liveKeyIds, [second.body.keyId], 'a retired version\'s key_id is no longer live');
    await mustOk(api(url, 'PUT', '/v1/keys/k1/policy', { token: cast.keyAdmin, body: { minDecryptionVersion: 1 } }), 'policy back');
    assert.deepEqual(await clusters(), [], 'probes without a cluster record nothing');
  });

  it('reports with cluster and node are listed by GET /v1/clusters (filters by key and app) and GET /v1/apps', async () => {
    const current = (await mustOk(probe(cast.appKey, 'k1', {}), 'probe')).body;
    const oldKeyId = current.keyId.replace(/:2:([0-9a-f]{16})$/, ':1:$1');
    // cp-1 still writes with version 1 (the key_id its apiserver has); cp-2 reports no key_id; cp-3 another provider's.
    const r1 = await mustOk(probe(cast.appKey, 'k1', { cluster: 'prod-eu-1', node: 'cp-1', pluginVersion: '0.3.0', keyId: oldKeyId, lastSuccess: '2026-01-31T12:00:00+01:00' }), 'report cp-1');
    assert.equal(r1.body.version, 2, 'the answer names the current version');
    await mustOk(probe(cast.appKey, 'k1', { cluster: 'prod-eu-1', node: 'cp-2' }), 'report cp-2');
    await mustOk(probe(cast.appKey, 'k1', { cluster: 'prod-eu-1', node: 'CP-3.example.com', keyId: 'vault:transit:7' }), 'report cp-3');
    await mustOk(probe(app2Key, 'k2', { cluster: 'edge', node: 'n1', pluginVersion: '0.2.9' }), 'report app2');

    const all = await clusters();
    assert.deepEqual(
      all.map((c) => `${c.app}/${c.cluster}/${c.node}`),
      // By app name, then cluster and node (SQLite compares bytes: upper case first).
      ['app1/prod-eu-1/CP-3.example.com', 'app1/prod-eu-1/cp-1', 'app1/prod-eu-1/cp-2', 'app2/edge/n1'],
    );
    const cp1 = find(all, 'app1', 'prod-eu-1', 'cp-1');
    assert.deepEqual(Object.keys(cp1).sort(), ['app', 'cluster', 'firstSeen', 'key', 'keyId', 'keyVersion', 'lastSeen', 'lastSuccess', 'node', 'pluginVersion', 'source']);
    assert.equal(cp1.key, 'k1');
    assert.equal(cp1.keyId, oldKeyId);
    assert.equal(cp1.keyVersion, 1, 'the version the plugin writes with, read from its key_id');
    assert.equal(cp1.pluginVersion, '0.3.0');
    assert.equal(cp1.lastSuccess, '2026-01-31T11:00:00.000Z', 'normalised to UTC');
    assert.equal(cp1.source, '127.0.0.1');
    assert.equal(cp1.firstSeen, cp1.lastSeen);
    assert.ok(Math.abs(Date.parse(cp1.lastSeen) - Date.now()) < 60_000, cp1.lastSeen);
    const cp2 = find(all, 'app1', 'prod-eu-1', 'cp-2');
    assert.equal(cp2.keyId, current.keyId, 'no key_id reported: the current one');
    assert.equal(cp2.keyVersion, 2);
    assert.equal(cp2.pluginVersion, '');
    assert.equal(cp2.lastSuccess, null);
    const cp3 = find(all, 'app1', 'prod-eu-1', 'CP-3.example.com');
    assert.equal(cp3.keyId, 'vault:transit:7');
    assert.equal(cp3.keyVersion, 2, 'a key_id keyhaven did not issue: the current version');
    const n1 = find(all, 'app2', 'edge', 'n1');
    assert.equal(n1.key, 'k2');
    assert.equal(n1.keyVersion, 1);

    // Filters.
    assert.deepEqual((await clusters('?key=k1')).map((c) => c.node).sort(), ['CP-3.example.com', 'cp-1', 'cp-2']);
    assert.deepEqual((await clusters('?key=k2')).map((c) => `${c.app}/${c.node}`), ['app2/n1']);
    assert.deepEqual((await clusters('?app=app2')).map((c) => `${c.app}/${c.node}`), ['app2/n1']);
    assert.deepEqual((await clusters('?app=app1&key=k1')).length, 3);
    assert.deepEqual(await clusters('?app=app1&key=k2'), []);
    assert.deepEqual(await clusters('?key=k3'), []);
    assert.equal((await api(url, 'GET', '/v1/clusters?key=no-such-key', { token: cast.keyAdmin })).status, 404);
    assert.equal((await api(url, 'GET', '/v1/clusters?app=no-such-app', { token: cast.keyAdmin })).status, 404);
    // Every reader role sees the same list.
    assert.deepEqual(await clusters('', cast.keyAdmin), all);
    assert.deepEqual(await clusters('', cast.admin), all);

    const apps = (await mustOk(api(url, 'GET', '/v1/apps', { token: cast.admin }), 'GET /v1/apps')).body.apps as any[];
    const app1 = apps.find((a) => a.name === 'app1');
    assert.deepEqual(
      app1.clusters.map((c: any) => `${c.cluster}/${c.node}`),
      ['prod-eu-1/CP-3.example.com', 'prod-eu-1/cp-1', 'prod-eu-1/cp-2'],
    );
    const c1 = app1.clusters.find((c: any) => c.node === 'cp-1');
    assert.deepEqual(c1, { cluster: 'prod-eu-1', node: 'cp-1', key: 'k1', keyVersion: 1, keyId: oldKeyId, pluginVersion: '0.3.0', lastSuccess: '2026-01-31T11:00:00.000Z', lastSeen: cp1.lastSeen });
    assert.deepEqual(apps.find((a) => a.name === 'stranger').clusters, []);
    assert.equal(apps.find((a) => a.name === 'app2').clusters.length, 1);
    // The OpenAPI document describes the field.
    const doc = (await api(url, 'GET', '/v1/openapi.json')).body;
    assert.ok(JSON.stringify(doc.paths['/v1/apps'].get.responses['200']).includes('lastSeen'), 'GET /v1/apps documents clusters');
    assert.ok(doc.paths['/v1/keys/{name}/status']?.post, 'the status route is documented');
    assert.ok(doc.paths['/v1/clusters']?.get, 'the cluster list is documented');
  });

  it('a second report updates lastSeen and the rest but keeps firstSeen', async () => {
    const before = find(await clusters(), 'app1', 'prod-eu-1', 'cp-1');
    await sleep(20);
    const current = (await mustOk(probe(cast.appKey, 'k1', { cluster: 'prod-eu-1', node: 'cp-1', pluginVersion: '0.4.0' }), 'second report')).body;
    const afterRow = find(await clusters(), 'app1', 'prod-eu-1', 'cp-1');
    assert.equal(afterRow.firstSeen, before.firstSeen);
    assert.ok(afterRow.lastSeen > before.lastSeen, `${afterRow.lastSeen} > ${before.lastSeen}`);
    assert.equal(afterRow.pluginVersion, '0.4.0');
    assert.equal(afterRow.keyId, current.keyId, 'now on the current key_id');
    assert.equal(afterRow.keyVersion, 2);
    assert.equal(afterRow.lastSuccess, null);
    assert.equal((await clusters('?key=k1')).length, 3, 'same node: updated, not added');
  });

  it('a disabled key answers 409 key_disabled and records nothing; enabled again, 200', async () => {
    const before = find(await clusters(), 'app1', 'prod-eu-1', 'cp-2');
    await mustOk(api(url, 'POST', '/v1/keys/k1/disable', { token: cast.keyAdmin, body: {} }), 'disable');
    await sleep(5);
    const r = await probe(cast.appKey, 'k1', { cluster: 'prod-eu-1', node: 'cp-2' });
    assert.equal(r.status, 409, r.text);
    assert.equal(r.body.error.code, 'key_disabled');
    assert.deepEqual(find(await clusters(), 'app1', 'prod-eu-1', 'cp-2'), before, 'a refused probe is not a report');
    await mustOk(api(url, 'POST', '/v1/keys/k1/enable', { token: cast.keyAdmin, body: {} }), 'enable');
    const again = await probe(cast.appKey, 'k1', {});
    assert.equal(again.status, 200, again.text);
    assert.equal(again.body.state, 'enabled');
  });

  it('a key pending destruction answers 410 key_destroyed', async () => {
    await mustOk(probe(cast.appKey, 'k3', {}), 'probe k3');
    await mustOk(api(url, 'POST', '/v1/keys/k3/destroy', { token: cast.keyAdmin, body: { pendingDays: 7 } }), 'destroy k3');
    const r = await probe(cast.appKey, 'k3', {});
    assert.equal(r.status, 410, r.text);
    assert.equal(r.body.error.code, 'key_destroyed');
  });

  it('only apps holding the encrypt and decrypt grants may probe: revoked, encrypt-only, decrypt-only, no grant, missing key, users', async () => {
    const made = await mustOk(api(url, 'POST', '/v1/apps', { token: cast.admin, body: { name: 'probe-app' } }), 'create app');
    const token = made.body.apiKey as string;
    await mustOk(api(url, 'PUT', '/v1/apps/probe-app/grants/k1', { token: cast.keyAdmin, body: { operations: ['encrypt', 'decrypt'] } }), 'grant');
    await mustOk(probe(token, 'k1', {}), 'probe with the grant');
    await mustOk(api(url, 'PUT', '/v1/apps/probe-app/grants/k1', { token: cast.keyAdmin, body: { operations: ['encrypt'] } }), 'encrypt-only grant');
    // Grants are cached for up to 2 s.
    const encryptOnly = await waitFor(async () => {
      const r = await probe(token, 'k1', {});
      return r.status === 403 ? r : undefined;
    }, 'a probe without the decrypt grant to be refused');
    assert.match(encryptOnly.body.error.message, /no decrypt grant on key "k1"/);
    await mustOk(api(url, 'DELETE', '/v1/apps/probe-app/grants/k1', { token: cast.keyAdmin }), 'revoke');
    const revoked = await probe(token, 'k1', { cluster: 'revoked', node: 'n1' });
    assert.equal(revoked.status, 403, revoked.text);
    assert.equal(revoked.body.error.code, 'permission_denied');
    await mustOk(api(url, 'PUT', '/v1/apps/probe-app/grants/k1', { token: cast.keyAdmin, body: { operations: ['decrypt'] } }), 'decrypt-only grant');
    const decryptOnly = await probe(token, 'k1', {});
    assert.equal(decryptOnly.status, 403, 'decrypt alone does not allow a probe');
    assert.deepEqual(await clusters('?app=probe-app'), []);

    // No grant on an existing key and a missing key read the same.
    const existing = await probe(cast.strangerKey, 'k1', {});
    const missing = await probe(cast.strangerKey, 'no-such-key', {});
    for (const r of [existing, missing]) {
      assert.equal(r.status, 403, r.text);
      assert.equal(r.body.error.code, 'permission_denied');
    }
    assert.equal(existing.body.error.message.replace('k1', '<key>'), missing.body.error.message.replace('no-such-key', '<key>'));
    // An app with a grant on another key only.
    const other = await probe(app2Key, 'k1', {});
    assert.equal(other.status, 403);
    assert.equal(other.body.error.message.replace('k1', '<key>'), missing.body.error.message.replace('no-such-key', '<key>'));

    for (const user of [cast.admin, cast.keyAdmin, cast.auditor]) {
      const r = await probe(user, 'k1', {});
      assert.equal(r.status, 403, r.text);
      assert.equal(r.body.error.code, 'permission_denied');
    }
    const anon = await api(url, 'POST', '/v1/keys/k1/status', { body: {} });
    assert.equal(anon.status, 401);
    // Apps do not read the cluster list.
    assert.equal((await api(url, 'GET', '/v1/clusters', { token: cast.appKey })).status, 403);
  });

  it('the audit record of a probe names the app, the key and version, the cluster and uid headers', async () => {
    const headers = { 'x-keyhaven-cluster': 'prod-eu-1', 'x-keyhaven-uid': 'apiserver-uid-42' };
    const r = await mustOk(probe(cast.appKey, 'k1', { cluster: 'prod-eu-1', node: 'cp-1', pluginVersion: '0.4.0' }, headers), 'probe');
    const denied = await probe(cast.strangerKey, 'k1', {}, headers);
    assert.equal(denied.status, 403);
    const plain = await mustOk(probe(cast.appKey, 'k1', {}), 'probe without a report');
    const records = await auditRecords(url, cast.auditor, 'operation=plugin.status');
    const rec = (res: ApiResult) => {
      const hits = records.filter((x) => x.request_id === res.headers.get('x-request-id'));
      assert.equal(hits.length, 1, 'one record per request');
      return { ...hits[0], details: JSON.parse(hits[0].details) };
    };
    const ok1 = rec(r);
    assert.equal(ok1.actor, 'app:app1');
    assert.equal(ok1.operation, 'plugin.status');
    assert.equal(ok1.key_name, 'k1');
    assert.equal(ok1.key_version, 2);
    assert.equal(ok1.result, 'ok');
    assert.equal(ok1.details.cluster, 'prod-eu-1');
    assert.equal(ok1.details.uid, 'apiserver-uid-42');
    assert.equal(ok1.details.reported, true);
    assert.equal(ok1.details.role, 'app');
    assert.equal(ok1.details.status, 200);
    const no = rec(denied);
    assert.equal(no.actor, 'app:stranger');
    assert.equal(no.result, 'permission_denied');
    assert.equal(no.details.cluster, 'prod-eu-1');
    assert.equal(rec(plain).details.reported, undefined);
    // Never the self-test's bytes or key material: only ids.
    for (const x of records) assert.ok(!/plaintext|ciphertext/i.test(JSON.stringify(x)), JSON.stringify(x));
  });

  it('the CLI: cluster list (table, filters, json) and app list show the reports', async () => {
    const table = await ok(['cluster', 'list'], cast.auditor);
    const lines = table.stdout.trimEnd().split('\n');
    assert.match(lines[0]!, /^APP\s+CLUSTER\s+NODE\s+KEY\s+VERSION\s+PLUGIN\s+LAST-SEEN\s+LAST-SUCCESS$/);
    assert.ok(lines.some((l) => /^app1\s+prod-eu-1\s+cp-1\s+k1\s+v2\s+0\.4\.0\s+(?:now|\d+[smhd] ago)\s+-$/.test(l)), table.stdout);
    assert.ok(lines.some((l) => /^app2\s+edge\s+n1\s+k2\s+v1\s+0\.2\.9\s/.test(l)), table.stdout);
    const onlyK2 = await ok(['cluster', 'list', '--key', 'k2'], cast.keyAdmin);
    assert.equal(onlyK2.stdout.trimEnd().split('\n').length, 2, onlyK2.stdout);
    assert.match(onlyK2.stdout, /app2\s+edge\s+n1/);
    assert.match((await ok(['cluster', 'list', '--app', 'app2', '--key', 'k1'], cast.keyAdmin)).stdout, /^no cluster has reported$/m);
    const asJson = await json(['cluster', 'list', '--app', 'app1'], cast.admin);
    assert.deepEqual(asJson, { clusters: await clusters('?app=app1') });
    const missing = await kh(['cluster', 'list', '--key', 'no-such-key'], cast.auditor);
    assert.equal(missing.code, 3, missing.stderr);
    assert.match(missing.stderr, /key "no-such-key" does not exist/);
    const help = await ok(['cluster', 'list', '--help'], cast.auditor);
    assert.match(help.stdout, /--key <name>/);
    assert.match(help.stdout, /reportInterval/);

    const apps = await ok(['app', 'list'], cast.admin);
    const appLines = apps.stdout.split('\n');
    const at = appLines.findIndex((l) => l.startsWith('app1 '));
    assert.ok(at > 0, apps.stdout);
    assert.match(appLines.slice(at + 1, at + 4).join('\n'), /^\s+cluster prod-eu-1 {2}node cp-1 {2}key k1 v2 {2}last seen (?:now|\d+[smhd] ago)$/m);
    assert.match(apps.stdout, /^\s+cluster edge {2}node n1 {2}key k2 v1 {2}last seen /m);
    const appsJson = await json<{ apps: Array<{ name: string; clusters: unknown[] }> }>(['app', 'list'], cast.admin);
    assert.equal(appsJson.apps.find((a) => a.name === 'app1')!.clusters.length, 3);
  });
});
