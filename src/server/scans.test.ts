import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { SYSTEM } from '../access/access.js';
import { injectApi, openTestApp, type TestApp } from '../../test/server-app.js';

// Key_id lookup, scan reports and the retire check, in process.

let t: TestApp;
const api = (method: string, path: string, opts: { token?: string; body?: unknown } = {}) => injectApi(t, method, path, opts);

const scan = (over: Record<string, unknown> = {}) => ({
  scannedAt: new Date(Date.now() + 1000).toISOString(),
  source: 'etcd https://10.0.0.1:2379',
  objects: 10,
  plaintext: 2,
  byKeyId: [],
  byForm: [{ form: 'identity', count: 2 }, { form: 'kms-v2', provider: 'keyhaven', count: 8 }],
  ...over,
});

/** As if every node of `cluster` had moved to its current version `agoMs` ago. */
async function backdateMove(cluster: string, agoMs: number): Promise<void> {
  for (const r of await t.store.listPluginReports({})) {
    if (r.cluster === cluster) await t.store.upsertPluginReport({ ...r, version_since: new Date(Date.now() - agoMs).toISOString() });
  }
}

describe('key_id lookup, scan reports, retire check', () => {
  let k1v1: string;
  before(async () => {
    t = await openTestApp();
    const st = await api('POST', '/v1/keys/k1/status', { token: t.tokens.granted, body: { cluster: 'prod', node: 'cp-1' } });
    assert.equal(st.status, 200, st.text);
    k1v1 = st.body.keyId;
  });

  after(async () => {
    await t?.close();
  });

  it('resolves key_ids to key, version and state; foreign, malformed and hidden ones are unknown', async () => {
    const s = t.core.services();
    const k2 = await s.keys.get('k2');
    const k2v1 = `kh1:${s.storeId}:${k2.id}:1:${k2.versions[0]!.tag}`;
    const foreign = k1v1.replace(/^kh1:[0-9a-f]{16}/, `kh1:${randomBytes(8).toString('hex')}`);
    const wrongTag = k1v1.replace(/[0-9a-f]{16}$/, '0'.repeat(16));
    const neverIssued = k1v1.replace(/:1:/, ':7:');
    const ids = [k1v1, k2v1, foreign, wrongTag, neverIssued, 'k8s:enc:aescbc:v1:key1'];
    const res = await api('POST', '/v1/key-ids/resolve', { token: t.tokens.keyAdmin, body: { keyIds: ids } });
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(res.body.results[0], { keyId: k1v1, known: true, key: 'k1', version: 1, state: 'active', keyState: 'enabled', current: true, flags: [] });
    assert.equal(res.body.results[1].key, 'k2');
    assert.deepEqual(res.body.results.slice(2), ids.slice(2).map((keyId) => ({ keyId, known: false, flags: [] })));
    // The auditor reads the same.
    assert.deepEqual((await api('POST', '/v1/key-ids/resolve', { token: t.tokens.auditor, body: { keyIds: ids } })).body, res.body);
    // Apps learn only about keys they hold a grant on.
    const granted = await api('POST', '/v1/key-ids/resolve', { token: t.tokens.granted, body: { keyIds: [k1v1, k2v1] } });
    assert.equal(granted.body.results[0].known, true);
    assert.deepEqual(granted.body.results[1], { keyId: k2v1, known: false, flags: [] });
    const stranger = await api('POST', '/v1/key-ids/resolve', { token: t.tokens.stranger, body: { keyIds: [k1v1, k2v1] } });
    assert.deepEqual(stranger.body.results, [{ keyId: k1v1, known: false, flags: [] }, { keyId: k2v1, known: false, flags: [] }]);
    // The security-admin does not use this route.
    assert.equal((await api('POST', '/v1/key-ids/resolve', { token: t.tokens.admin, body: { keyIds: [] } })).status, 403);
  });

  it('resolve: a retired version says so; too many or too long key_ids are refused', async () => {
    const rot = await api('POST', '/v1/keys/k2/rotate', { token: t.tokens.keyAdmin, body: {} });
    assert.equal(rot.status, 200, rot.text);
    const pol = await api('PUT', '/v1/keys/k2/policy', { token: t.tokens.keyAdmin, body: { minDecryptionVersion: 2 } });
    assert.equal(pol.status, 200, pol.text);
    const s = t.core.services();
    const k2 = await s.keys.get('k2');
    const v1 = `kh1:${s.storeId}:${k2.id}:1:${k2.versions[0]!.tag}`;
    const res = await api('POST', '/v1/key-ids/resolve', { token: t.tokens.keyAdmin, body: { keyIds: [v1] } });
    assert.equal(res.body.results[0].state, 'retired');
    assert.deepEqual(res.body.results[0].flags, ['below-min-decryption']);
    assert.equal(res.body.results[0].current, false);
    const many = await api('POST', '/v1/key-ids/resolve', { token: t.tokens.keyAdmin, body: { keyIds: Array.from({ length: 1001 }, () => 'x') } });
    assert.equal(many.status, 400);
    assert.match(many.body.error.message, /at most 1000/);
    const long = await api('POST', '/v1/key-ids/resolve', { token: t.tokens.keyAdmin, body: { keyIds: ['x'.repeat(1025)] } });
    assert.equal(long.status, 400);
    assert.match(long.body.error.message, /at most 1024/);
  });

  it('scan reports: the latest per cluster is kept, with its reporter; bad reports are refused precisely', async () => {
    const a = await api('PUT', '/v1/clusters/edge/scan-report', { token: t.tokens.keyAdmin, body: scan({ byKeyId: [{ keyId: k1v1, count: 8 }] }) });
    assert.equal(a.status, 200, a.text);
    assert.equal(a.body.reporter, 'user:keyadmin');
    // An app reports only a cluster its own plugin reports (stranger runs none; granted runs prod's, not edge's).
    for (const [token, app] of [[t.tokens.stranger, 'stranger'], [t.tokens.granted, 'granted']] as const) {
      const forged = await api('PUT', '/v1/clusters/edge/scan-report', { token, body: scan({ objects: 0, plaintext: 0 }) });
      assert.equal(forged.status, 403, forged.text);
      assert.match(forged.body.error.message, new RegExp(`app "${app}" runs no KMS plugin that reports cluster "edge"`));
    }
    const b = await api('PUT', '/v1/clusters/edge/scan-report', { token: t.tokens.keyAdmin, body: scan({ source: 'snapshot nightly.db', objects: 3, plaintext: 0 }) });
    assert.equal(b.status, 200, b.text);
    const list = await api('GET', '/v1/clusters/scan-reports', { token: t.tokens.auditor });
    assert.equal(list.status, 200);
    const edge = list.body.reports.find((r: any) => r.cluster === 'edge');
    assert.equal(edge.source, 'snapshot nightly.db');
    assert.equal(edge.objects, 3);
    assert.deepEqual(edge.byForm, [{ form: 'identity', count: 2 }, { form: 'kms-v2', provider: 'keyhaven', count: 8 }]);
    for (const [body, field] of [
      [scan({ scannedAt: 'yesterday' }), /scannedAt/],
      [scan({ scannedAt: new Date(Date.now() + 6 * 60_000).toISOString() }), /scannedAt .* is more than 5 minutes after the server's time/],
      [scan({ source: 'tab\there' }), /source/],
      [scan({ source: 'x'.repeat(201) }), /source/],
      [scan({ objects: -1 }), /objects/],
      [scan({ plaintext: 11 }), /plaintext/],
      [scan({ objects: 1.5 }), /objects/],
      [scan({ byKeyId: [{ keyId: k1v1, count: 1 }, { keyId: k1v1, count: 2 }] }), /byKeyId/],
      [scan({ byForm: Array.from({ length: 201 }, () => ({ form: 'identity', count: 0 })) }), /byForm/],
      [scan({ extra: 1 }), /extra/],
    ] as const) {
      const r = await api('PUT', '/v1/clusters/edge/scan-report', { token: t.tokens.keyAdmin, body });
      assert.equal(r.status, 400, `${field}: ${r.text}`);
      assert.match(r.body.error.message, field);
    }
    const badName = await api('PUT', '/v1/clusters/Bad_Name/scan-report', { token: t.tokens.keyAdmin, body: scan() });
    assert.equal(badName.status, 400);
    assert.equal((await api('PUT', '/v1/clusters/edge/scan-report', { token: t.tokens.auditor, body: scan() })).status, 403);
  });

  it('retire check: not safe while a cluster reports the version, holds objects under it, or is unscanned; safe after', async () => {
    const check = async (v: number) => {
      const r = await api('GET', `/v1/keys/k1/versions/${v}/retire-check`, { token: t.tokens.auditor });
      assert.equal(r.status, 200, r.text);
      return r.body;
    };
    let c = await check(1);
    assert.equal(c.safe, false);
    assert.equal(c.keyId, k1v1);
    assert.deepEqual(c.clusters.map((x: any) => [x.cluster, x.node, x.keyVersion]), [['prod', 'cp-1', 1]]);
    assert.deepEqual(c.unscanned, ['prod']);
    assert.ok(c.reasons.some((x: string) => /current version/.test(x)));
    // edge's latest scan holds no object under v1 (the report with 8 was replaced).
    assert.deepEqual(c.objects, []);

    assert.equal((await api('POST', '/v1/keys/k1/rotate', { token: t.tokens.keyAdmin, body: {} })).status, 200);
    const st = await api('POST', '/v1/keys/k1/status', { token: t.tokens.granted, body: { cluster: 'prod', node: 'cp-1' } });
    assert.equal(st.body.version, 2);
    c = await check(1);
    assert.equal(c.safe, false);
    assert.deepEqual(c.clusters, []);
    assert.deepEqual(c.unscanned, ['prod']);
    assert.ok(c.reasons.some((x: string) => /never been scanned/.test(x)), c.reasons.join('; '));

    // A scan made before the cluster moved on does not count.
    const early = await api('PUT', '/v1/clusters/prod/scan-report', { token: t.tokens.keyAdmin, body: scan({ scannedAt: '2020-01-01T00:00:00Z' }) });
    assert.equal(early.status, 200);
    c = await check(1);
    assert.deepEqual(c.unscanned, ['prod']);
    assert.ok(c.reasons.some((x: string) => /scan it again/.test(x)), c.reasons.join('; '));

    // The cluster's own plugin app reports its scan, made seconds after the move:
    // the apiserver may still have been writing under v1, so it does not count yet.
    const own = await api('PUT', '/v1/clusters/prod/scan-report', { token: t.tokens.granted, body: scan({ byKeyId: [{ keyId: k1v1, count: 0 }, { keyId: st.body.keyId, count: 8 }] }) });
    assert.equal(own.status, 200, own.text);
    assert.equal(own.body.reporter, 'app:granted');
    c = await check(1);
    assert.equal(c.safe, false);
    assert.deepEqual(c.unscanned, ['prod']);
    assert.ok(c.reasons.some((x: string) => /less than 3 minutes after it stopped using version 1 .*up to 3 minutes/.test(x)), c.reasons.join('; '));
    // A scanner clock running ahead (within the 5 minutes allowed) does not help: the server's receipt time bounds it.
    await api('PUT', '/v1/clusters/prod/scan-report', { token: t.tokens.granted, body: scan({ scannedAt: new Date(Date.now() + 4 * 60_000).toISOString(), byKeyId: [{ keyId: st.body.keyId, count: 8 }] }) });
    assert.deepEqual((await check(1)).unscanned, ['prod']);

    // The cluster moved 10 minutes ago: a scan now counts.
    await backdateMove('prod', 10 * 60_000);
    await api('PUT', '/v1/clusters/prod/scan-report', { token: t.tokens.granted, body: scan({ byKeyId: [{ keyId: k1v1, count: 3 }] }) });
    c = await check(1);
    assert.equal(c.safe, false);
    assert.deepEqual(c.objects.map((o: any) => [o.cluster, o.count]), [['prod', 3]]);
    assert.deepEqual(c.unscanned, []);

    await api('PUT', '/v1/clusters/prod/scan-report', { token: t.tokens.granted, body: scan({ byKeyId: [{ keyId: k1v1, count: 0 }, { keyId: st.body.keyId, count: 8 }] }) });
    c = await check(1);
    assert.equal(c.safe, true, c.reasons.join('; '));
    assert.deepEqual(c.unreportedApps, []);
    assert.equal(c.reasons.length, 1);
    // The new version is not.
    assert.equal((await check(2)).safe, false);
  });

  it('retire check: a KMS v1 value in any cluster\'s latest scan leaves every version of every key in doubt', async () => {
    const v1 = async () => (await api('GET', '/v1/keys/k1/versions/1/retire-check', { token: t.tokens.keyAdmin })).body;
    assert.equal((await v1()).safe, true);
    const r = await api('PUT', '/v1/clusters/edge/scan-report', { token: t.tokens.keyAdmin, body: scan({ byForm: [{ form: 'kms-v1', provider: 'old', count: 2 }, { form: 'kms-v1', provider: 'older', count: 1 }] }) });
    assert.equal(r.status, 200, r.text);
    const c = await v1();
    assert.equal(c.safe, false);
    assert.ok(c.reasons.some((x: string) => /cluster edge .* found 3 KMS v1 values whose key version a scan cannot read; move them to KMS v2 first/.test(x)), c.reasons.join('; '));
    await api('PUT', '/v1/clusters/edge/scan-report', { token: t.tokens.keyAdmin, body: scan() });
    assert.equal((await v1()).safe, true);
  });

  it('retire check: an app that can decrypt with the key but never reported its version (Vault, DSM clients) is not safe; break-glass apps aside', async () => {
    const s = t.core.services();
    const check = async () => (await api('GET', '/v1/keys/k1/versions/1/retire-check', { token: t.tokens.keyAdmin })).body;
    assert.equal((await check()).safe, true);
    await s.access.createApp(SYSTEM, { name: 'vault-client' });
    await s.access.createApp(SYSTEM, { name: 'enc-only' });
    await s.access.createApp(SYSTEM, { name: 'glass', breakGlass: true });
    await s.access.setGrant(SYSTEM, 'vault-client', 'k1', ['decrypt']);
    await s.access.setGrant(SYSTEM, 'enc-only', 'k1', ['encrypt']);
    await s.access.setGrant(SYSTEM, 'glass', 'k1', ['decrypt']);
    let c = await check();
    assert.equal(c.safe, false);
    assert.deepEqual(c.unreportedApps, ['vault-client']);
    assert.ok(c.reasons.includes('app vault-client can decrypt with this key but has never reported which version it uses'), c.reasons.join('; '));
    await s.access.revokeGrant(SYSTEM, 'vault-client', 'k1');
    c = await check();
    assert.equal(c.safe, true, c.reasons.join('; '));
    assert.deepEqual(c.unreportedApps, []);
  });

  it('retire check: a key no cluster reported is not safe (unknown); bad versions are refused', async () => {
    const r = await api('GET', '/v1/keys/k2/versions/1/retire-check', { token: t.tokens.keyAdmin });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.body.safe, false);
    assert.ok(r.body.reasons.some((x: string) => /no cluster has reported/.test(x)));
    assert.equal((await api('GET', '/v1/keys/k2/versions/9/retire-check', { token: t.tokens.keyAdmin })).status, 404);
    assert.equal((await api('GET', '/v1/keys/nope/versions/1/retire-check', { token: t.tokens.keyAdmin })).status, 404);
    const bad = await api('GET', '/v1/keys/k2/versions/zero/retire-check', { token: t.tokens.keyAdmin });
    assert.equal(bad.status, 400);
    assert.match(bad.body.error.message, /version/);
    assert.equal((await api('GET', '/v1/keys/k2/versions/1/retire-check', { token: t.tokens.granted })).status, 403);
  });
});
