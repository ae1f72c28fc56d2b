import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { stringify as toYaml, parse as parseYaml } from 'yaml';
import { parsePluginConfig } from '../src/config/plugin-config.js';
import { encodeSecretProtobuf } from '../src/k8s/storage/k8s-object.js';
import { encodeKmsV2, sealKmsV2 } from '../src/k8s/storage/kms-v2.js';
import { createLogger } from '../src/log/logger.js';
import { createKeyServerClient } from '../src/plugin/key-server-client.js';
import { createPluginMetrics } from '../src/plugin/metrics.js';
import { buildProvider } from '../src/plugin/providers/registry.js';
import { ETCD_AVAILABLE, startEtcd } from './etcd.js';
import { cleanCliEnv, runCli } from './helpers.js';
import { ownedTempDir } from './reaper.js';
import { requireDependency } from './require.js';
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
    // Scanned seconds after the move: the apiserver may write under v1 for 3 more minutes.
    r = await retireCheck(1);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stdout, /less than 3 minutes after it stopped using version 1/);
    // As if the node had moved ten minutes before the scan.
    const db = new Database(join(srv.dir, 'keyhaven.db'));
    try {
      db.pragma('busy_timeout = 5000');
      const moved10 = db.prepare("update plugin_clusters set version_since = ? where cluster = 'prod'").run(new Date(Date.now() - 10 * 60_000).toISOString());
      assert.equal(moved10.changes, 1);
    } finally {
      db.close();
    }
    r = await retireCheck(1);
    assert.equal(r.code, 0, `${r.stdout}${r.stderr}`);
    assert.match(r.stdout, /version 1: safe to retire/);

    const json = await runCli(['key', 'retire-check', cast.key, '--version', '2', '-o', 'json'], { env: { ...cleanCliEnv(), KEYHAVEN_ADDR: srv.url, KEYHAVEN_TOKEN: cast.keyAdmin } });
    assert.equal(json.code, 1);
    const body = JSON.parse(json.stdout);
    assert.equal(body.safe, false);
    assert.deepEqual(body.objects, [{ cluster: 'prod', scannedAt: report.scannedAt, count: 40 }]);
  });

  it('keyhaven k8s recover through the key server: a break-glass app, the quorum approval, --recovery, every Secret back, every decrypt audited with the recovery', async (t) => {
    if (!requireDependency(t, ETCD_AVAILABLE, 'etcd-server and etcd-client (apt-get install etcd-server etcd-client)')) return;
    const dir = ownedTempDir('kh-recover-', t);
    const etcd = await startEtcd(t);
    const pluginYaml = (name: string, apiKey: string) => {
      writeFileSync(join(dir, `${name}.key`), apiKey, { mode: 0o600 });
      const file = join(dir, `${name}.yaml`);
      writeFileSync(file, toYaml({ provider: { type: 'keyhaven', servers: [srv.url], key: cast.key, cluster: 'prod', apiKeyFile: join(dir, `${name}.key`), allowInsecureHttp: true } }), { mode: 0o600 });
      return file;
    };
    // The cluster's own plugin (app1) wraps the seeds, local KEK and all, as in production.
    const cfg = parsePluginConfig(parseYaml(readFileSync(pluginYaml('app1', cast.appKey), 'utf8')), 'test');
    const { provider } = await buildProvider({ cfg, logger: createLogger({ level: 'silent' }), metrics: createPluginMetrics() });
    const planted: { name: string; data: Record<string, Buffer> }[] = [];
    try {
      // As the apiserver's first Status does: the plugin confirms its key before it wraps.
      await provider.healthCheck();
      for (let s = 0; s < 2; s++) {
        const seed = randomBytes(32);
        const w = await provider.encrypt(seed, { uid: 'seed', annotations: true });
        for (let i = 0; i < 3; i++) {
          const name = `s${s}-${i}`;
          const data = { password: randomBytes(20) };
          const key = `/registry/secrets/prod/${name}`;
          const sealed = sealKmsV2(encodeSecretProtobuf({ namespace: 'prod', name, data }), seed, key);
          await etcd.put(key, encodeKmsV2('keyhaven', { encryptedData: sealed, keyID: w.keyId, encryptedDEKSource: w.ciphertext, annotations: w.annotations ?? {}, encryptedDEKSourceType: 1 }));
          planted.push({ name, data });
        }
      }
    } finally {
      await provider.close();
    }
    // The scan (as a key-admin) maps the key_ids and reports the counts for retire-check.
    const asKeyAdmin = { ...cleanCliEnv(), KEYHAVEN_ADDR: srv.url, KEYHAVEN_TOKEN: cast.keyAdmin };
    const scan = await runCli(['k8s', 'scan', '--etcd', etcd.endpoint, '--report', 'prod', '-o', 'json'], { env: asKeyAdmin });
    assert.equal(scan.code, 0, scan.stderr);
    const scanned = JSON.parse(scan.stdout);
    assert.equal(scanned.keyIds.reduce((n: number, k: any) => n + k.count, 0), 6);
    for (const k of scanned.keyIds) assert.equal(k.key, cast.key);
    const reports = await ok(api(srv.url, 'GET', '/v1/clusters/scan-reports', { token: cast.auditor }), 'reports');
    assert.equal(reports.body.reports.find((r: any) => r.cluster === 'prod').objects, 6);

    // A wrong credential: one clear refusal before anything is read or written.
    const wrong = await runCli(['k8s', 'recover', '--etcd', etcd.endpoint, '--plugin-config', pluginYaml('wrong', `kha_${'x'.repeat(40)}`), '--reason', 'INC-9', '--out', join(dir, 'out-wrong')], { env: cleanCliEnv() });
    assert.equal(wrong.code, 5, wrong.stderr);
    assert.match(wrong.stderr, /refused recovery|unauthenticated|not valid|API key/i);
    assert.ok(!wrong.stderr.includes('x'.repeat(40)));
    const made = await ok(api(srv.url, 'POST', '/v1/apps', { token: cast.admin, body: { name: 'breakglass', breakGlass: true } }), 'create break-glass app');
    await ok(api(srv.url, 'PUT', `/v1/apps/breakglass/grants/${cast.key}`, { token: cast.keyAdmin, body: { operations: ['decrypt'] } }), 'grant');
    const bgYaml = pluginYaml('breakglass', made.body.apiKey);
    const env = cleanCliEnv();
    const reason = 'INC-9: prod etcd lost';
    // The quorum from the first test covers recovery.start: the first run files the request.
    const first = await runCli(['k8s', 'recover', '--etcd', etcd.endpoint, '--plugin-config', bgYaml, '--reason', reason, '--out', join(dir, 'out')], { env });
    assert.equal(first.code, 0, first.stderr);
    const id = /--recovery ([0-9a-f]+)/.exec(first.stdout)?.[1];
    const approvalId = /approval request (\S+) filed/.exec(first.stdout)?.[1];
    assert.ok(id && approvalId, first.stdout);
    // Not approved: a run naming it decrypts nothing.
    const early = await runCli(['k8s', 'recover', '--etcd', etcd.endpoint, '--plugin-config', bgYaml, '--recovery', id, '--out', join(dir, 'early')], { env });
    assert.equal(early.code, 4, early.stderr);
    assert.match(early.stderr, new RegExp(`recovery ${id} is still waiting for approval`));
    await ok(api(srv.url, 'POST', `/v1/approvals/${approvalId}/approve`, { token: cast.admin2, body: {} }), 'first approval');
    await ok(api(srv.url, 'POST', `/v1/approvals/${approvalId}/approve`, { token: cast.keyAdmin2, body: {} }), 'second approval');

    const out = join(dir, 'out');
    const r = await runCli(['k8s', 'recover', '--etcd', etcd.endpoint, '--plugin-config', bgYaml, '--recovery', id, '--out', out, '-o', 'json'], { env });
    assert.equal(r.code, 0, r.stderr + r.stdout);
    assert.equal(JSON.parse(r.stdout).written, 6);
    for (const p of planted) {
      const doc = parseYaml(readFileSync(join(out, 'secrets', 'prod', `${p.name}.yaml`), 'utf8'));
      assert.deepEqual(Buffer.from(doc.data.password, 'base64'), p.data.password);
    }
    const records = await auditRecords(srv.url, cast.auditor);
    const decrypts = records.filter((x) => x.operation === 'crypto.decrypt' && x.actor === 'app:breakglass' && x.result === 'ok');
    // Both seeds sit under one local KEK: one key server decrypt opens it, the seeds open locally.
    assert.ok(decrypts.length >= 1, `${decrypts.length} decrypts`);
    for (const d of decrypts) assert.equal(JSON.parse(d.details).recovery, id);
    assert.ok(records.some((x) => x.operation === 'recovery.close' && JSON.parse(x.details).objects === 6));
    for (const p of planted) assert.ok(!JSON.stringify(records).includes(p.data.password!.toString('base64')));
  });
});
