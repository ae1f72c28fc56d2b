import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { injectApi, openTestApp, type TestApp } from '../../test/server-app.js';

// Adversary tests of the retire check: each fails while the check can be led
// to say "safe" for a version whose objects may still be in a cluster's etcd.

let t: TestApp;
const api = (method: string, path: string, opts: { token?: string; body?: unknown } = {}) => injectApi(t, method, path, opts);

const report = (over: Record<string, unknown> = {}) => ({
  scannedAt: new Date(Date.now() + 1000).toISOString(),
  source: 'etcd https://10.0.0.1:2379',
  objects: 10,
  plaintext: 0,
  byKeyId: [],
  byForm: [],
  ...over,
});

describe('retire check adversary', () => {
  before(async () => {
    t = await openTestApp();
  });

  after(async () => {
    await t?.close();
  });

  /** Cluster `cluster` (app "granted") uses key k, then moves to v2: retiring v1 hinges on the cluster's scan. */
  const movedOn = async (key: string, cluster: string): Promise<{ v1: string; v2: string }> => {
    const g = await api('PUT', `/v1/apps/granted/grants/${key}`, { token: t.tokens.keyAdmin, body: { operations: ['encrypt', 'decrypt'] } });
    assert.equal(g.status, 200, g.text);
    const s1 = await api('POST', `/v1/keys/${key}/status`, { token: t.tokens.granted, body: { cluster, node: 'cp-1' } });
    assert.equal(s1.status, 200, s1.text);
    assert.equal((await api('POST', `/v1/keys/${key}/rotate`, { token: t.tokens.keyAdmin, body: {} })).status, 200);
    const s2 = await api('POST', `/v1/keys/${key}/status`, { token: t.tokens.granted, body: { cluster, node: 'cp-1' } });
    assert.equal(s2.body.version, 2);
    return { v1: s1.body.keyId, v2: s2.body.keyId };
  };

  const check = async (key: string, v: number) => {
    const r = await api('GET', `/v1/keys/${key}/versions/${v}/retire-check`, { token: t.tokens.keyAdmin });
    assert.equal(r.status, 200, r.text);
    return r.body;
  };

  it('KMS v1 objects (no key_id in etcd, but wrapped by a keyhaven key version) keep a version from being "safe"', async () => {
    // The plugin serves v1beta1 too: a KMS v1 value's DEK is a keyhaven ciphertext of
    // whatever version was current. The scan counts such values only per provider,
    // so the check cannot tell they are not under v1: it must not say safe.
    const { v2 } = await movedOn('k1', 'legacy');
    const put = await api('PUT', '/v1/clusters/legacy/scan-report', {
      token: t.tokens.granted,
      body: report({ byKeyId: [{ keyId: v2, count: 4 }], byForm: [{ form: 'kms-v1', provider: 'keyhaven', count: 6 }, { form: 'kms-v2', provider: 'keyhaven', count: 4 }] }),
    });
    assert.equal(put.status, 200, put.text);
    const c = await check('k1', 1);
    assert.equal(c.safe, false, `6 KMS v1 values of unknown key version, yet: ${c.reasons.join('; ')}`);
  });

  it('an app without any grant (or another cluster\'s app) cannot make a cluster "scanned clean" by uploading its report', async () => {
    const { v1, v2 } = await movedOn('k2', 'prod');
    // The honest scan: 5 objects still under v1.
    const honest = await api('PUT', '/v1/clusters/prod/scan-report', { token: t.tokens.granted, body: report({ byKeyId: [{ keyId: v1, count: 5 }, { keyId: v2, count: 5 }] }) });
    assert.equal(honest.status, 200, honest.text);
    assert.equal((await check('k2', 1)).safe, false);
    // "stranger" holds no grant and runs no plugin for cluster prod.
    const forged = await api('PUT', '/v1/clusters/prod/scan-report', { token: t.tokens.stranger, body: report({ byKeyId: [{ keyId: v2, count: 10 }] }) });
    assert.notEqual(forged.status, 200, 'an app with no grant replaced cluster prod\'s scan report');
    const c = await check('k2', 1);
    assert.equal(c.safe, false, `a forged report made v1 "safe": ${c.reasons.join('; ')}`);
  });

  it('a scan report dated in the future is refused (it would count as "scanned after" every later move)', async () => {
    const r = await api('PUT', '/v1/clusters/future/scan-report', { token: t.tokens.keyAdmin, body: report({ scannedAt: '2099-01-01T00:00:00Z' }) });
    assert.equal(r.status, 400, r.text);
    assert.match(r.body.error.message, /scannedAt/);
  });

  it('a scan made seconds after the cluster\'s plugin moved on does not prove the version unused (the apiserver writes with its old key_id for up to 3 minutes)', async () => {
    const s = t.core.services();
    await s.keys.create('k4', 'system');
    const { v2 } = await movedOn('k4', 'fast');
    // Scanned 5 s after the move: values the apiserver wrote under v1 in the next minutes are not in it.
    const r = await api('PUT', '/v1/clusters/fast/scan-report', { token: t.tokens.granted, body: report({ scannedAt: new Date(Date.now() + 5000).toISOString(), byKeyId: [{ keyId: v2, count: 10 }] }) });
    assert.equal(r.status, 200, r.text);
    const c = await check('k4', 1);
    assert.equal(c.safe, false, `a scan 5 s after the move counted: ${c.reasons.join('; ')}`);
  });
});
