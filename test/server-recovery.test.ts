import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createKeyServerClient } from '../src/plugin/key-server-client.js';
import { cleanCliEnv, runCli } from './helpers.js';
import { api, auditRecords, setupCast, startServerProcess, type Cast, type ServerProcess } from './server-helpers.js';

// Break-glass recovery and the retire check against a real `keyhaven server`
// process: a break-glass app under a quorum policy opens a recovery (two
// admins approve), then decrypts through the plugin's key server client
// carrying the recovery id; the CLI's retire check turns from "no" to "yes"
// once the cluster's plugin moves to the new version and a scan shows no
// object under the old one.

let srv: ServerProcess;
let cast: Cast;
const b64 = (s: string) => Buffer.from(s).toString('base64');

async function ok(p: Promise<{ status: number; text: string; body: any }>, what: string, want = 200) {
  const r = await p;
  assert.equal(r.status, want, `${what}: ${r.text}`);
  return r;
}

function client(apiKey: string, recoveryId?: string) {
  return createKeyServerClient({
    servers: [srv.url],
    tls: {},
    apiKey: () => apiKey,
    cluster: 'prod',
    timeoutMs: 10_000,
    attemptTimeoutMs: 5_000,
    backoffMinMs: 50,
    backoffMaxMs: 500,
    ...(recoveryId !== undefined ? { recoveryId } : {}),
  });
}

function retireCheck(version: number) {
  return runCli(['key', 'retire-check', cast.key, '--version', String(version)], { env: { ...cleanCliEnv(), KEYHAVEN_ADDR: srv.url, KEYHAVEN_TOKEN: cast.auditor } });
}

describe('break-glass recovery and retire check (real server process)', () => {
  before(async () => {
    srv = await startServerProcess();
    cast = await setupCast(srv.url);
  });

  after(async () => {
    await srv?.stop();
  });

  it('a break-glass app under a quorum: start → 202 → two approvals → decrypts with the recovery id, audited with the reason', async () => {
    const enc = await ok(api(srv.url, 'POST', `/v1/keys/${cast.key}/encrypt`, { token: cast.appKey, body: { plaintext: b64('secret from the backup') } }), 'encrypt');
    const made = await ok(api(srv.url, 'POST', '/v1/apps', { token: cast.admin, body: { name: 'recovery', breakGlass: true } }), 'create break-glass app');
    const bg = made.body.apiKey as string;
    await ok(api(srv.url, 'PUT', `/v1/apps/recovery/grants/${cast.key}`, { token: cast.keyAdmin, body: { operations: ['decrypt'] } }), 'grant');
    await ok(api(srv.url, 'PUT', '/v1/sys/quorum', { token: cast.admin, body: { required: 2, operations: ['recovery.start'], ttlS: 3600 } }), 'quorum');

    const reason = 'INC-4711: etcd lost, restoring Secrets from the nightly snapshot';
    const start = await ok(api(srv.url, 'POST', '/v1/recoveries', { token: bg, body: { reason, cluster: 'prod' } }), 'start', 202);
    const { approval, recovery } = start.body;
    assert.equal(recovery.state, 'pending');

    // Not approved yet: the plugin client carrying the recovery id is refused.
    const early = client(bg, recovery.id);
    await assert.rejects(early.post('decrypt', `/v1/keys/${cast.key}/decrypt`, { ciphertext: enc.body.ciphertext }), /not open yet/);
    await early.close();

    const one = await ok(api(srv.url, 'POST', `/v1/approvals/${approval.id}/approve`, { token: cast.admin2, body: {} }), 'first approval');
    assert.equal(one.body.state, 'pending');
    const two = await ok(api(srv.url, 'POST', `/v1/approvals/${approval.id}/approve`, { token: cast.keyAdmin2, body: {} }), 'second approval');
    assert.equal(two.body.state, 'executed', two.text);
    const seen = await ok(api(srv.url, 'GET', `/v1/recoveries/${recovery.id}`, { token: bg }), 'read recovery');
    assert.equal(seen.body.state, 'open');

    const c = client(bg, recovery.id);
    try {
      const out = await c.post<{ plaintext: string }>('decrypt', `/v1/keys/${cast.key}/decrypt`, { ciphertext: enc.body.ciphertext }, { uid: 'recover-1' });
      assert.equal(Buffer.from(out.plaintext, 'base64').toString(), 'secret from the backup');
    } finally {
      await c.close();
    }
    // Without the header the same app is refused.
    const bare = await api(srv.url, 'POST', `/v1/keys/${cast.key}/decrypt`, { token: bg, body: { ciphertext: enc.body.ciphertext } });
    assert.equal(bare.status, 403, bare.text);
    await ok(api(srv.url, 'POST', `/v1/recoveries/${recovery.id}/close`, { token: bg, body: { objects: 1, failed: 0 } }), 'close');

    const records = await auditRecords(srv.url, cast.auditor);
    const started = records.find((r) => r.operation === 'recovery.start' && r.actor === 'app:recovery');
    assert.equal(JSON.parse(started.details).reason, reason);
    assert.equal(JSON.parse(started.details).recovery, recovery.id);
    assert.ok(records.some((r) => r.operation === 'recovery.open' && JSON.parse(r.details).approval === approval.id));
    const decrypts = records.filter((r) => r.operation === 'crypto.decrypt' && r.actor === 'app:recovery' && r.result === 'ok');
    assert.equal(decrypts.length, 1);
    const d = JSON.parse(decrypts[0].details);
    assert.equal(d.recovery, recovery.id);
    assert.equal(d.uid, 'recover-1');
    assert.ok(records.some((r) => r.operation === 'recovery.close' && JSON.parse(r.details).objects === 1));
    assert.ok(!JSON.stringify(records).includes(b64('secret from the backup')));
  });

  it('retire check (CLI): no while the cluster uses the version; yes once it moved on and a scan shows no object under it', async () => {
    const first = await ok(api(srv.url, 'POST', `/v1/keys/${cast.key}/status`, { token: cast.appKey, body: { cluster: 'prod', node: 'cp-1' } }), 'status v1');
    let r = await retireCheck(1);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stdout, /NOT safe to retire/);
    assert.match(r.stdout, /cluster prod node cp-1 still reports version 1/);

    await ok(api(srv.url, 'POST', `/v1/keys/${cast.key}/rotate`, { token: cast.keyAdmin, body: {} }), 'rotate');
    const moved = await ok(api(srv.url, 'POST', `/v1/keys/${cast.key}/status`, { token: cast.appKey, body: { cluster: 'prod', node: 'cp-1' } }), 'status v2');
    assert.equal(moved.body.version, 2);
    r = await retireCheck(1);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stdout, /never been scanned/);

    const report = {
      scannedAt: new Date(Date.now() + 1000).toISOString(),
      source: 'snapshot nightly.db',
      objects: 40,
      plaintext: 0,
      byKeyId: [{ keyId: first.body.keyId, count: 0 }, { keyId: moved.body.keyId, count: 40 }],
      byForm: [{ form: 'kms-v2', provider: 'keyhaven', count: 40 }],
    };
    await ok(api(srv.url, 'PUT', '/v1/clusters/prod/scan-report', { token: cast.appKey, body: report }), 'scan report');
    r = await retireCheck(1);
    assert.equal(r.code, 0, `${r.stdout}${r.stderr}`);
    assert.match(r.stdout, /version 1: safe to retire/);

    const json = await runCli(['key', 'retire-check', cast.key, '--version', '2', '-o', 'json'], { env: { ...cleanCliEnv(), KEYHAVEN_ADDR: srv.url, KEYHAVEN_TOKEN: cast.keyAdmin } });
    assert.equal(json.code, 1);
    const body = JSON.parse(json.stdout);
    assert.equal(body.safe, false);
    assert.deepEqual(body.objects, [{ cluster: 'prod', scannedAt: report.scannedAt, count: 40 }]);
  });
});
