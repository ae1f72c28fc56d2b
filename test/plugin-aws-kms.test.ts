import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { stringify as toYaml } from 'yaml';
import { KmsStandIn } from './aws-kms-standin.js';
import { call, callError, grpc, kmsClients, logLines, removeDir, startPlugin, tempDir, waitFor, waitForError, type KmsClients, type PluginProcess, metric, type V2Encrypted } from './helpers.js';
import { byteForms } from './secret-forms.js';

// The KMS plugin with provider `aws-kms`, end to end: a real plugin process
// on a real unix socket, the official AWS SDK inside it, and a stand-in for
// AWS KMS on 127.0.0.1 (AWS itself cannot be reached from tests) that checks
// SigV4 signatures with the secret key and encrypts with real AES-GCM keys.
// The plugin gets its credentials as in production: from the environment.

const ACCESS_KEY_ID = 'AKIAE2EPLANTED000001';
const SECRET = 'e2e/Planted+SecretAccessKey0123456789abcd';
const WRONG_SECRET = 'e2e/Planted+WrongSecret0123456789abcdefgh';
const SESSION_TOKEN = 'e2e-planted-session-token-IQoJb3JpZ2luX2VjEJr//////////wEaCWV1';
const CLUSTER = 'e2e-aws';
const GRACE = '4s';
const KEK_ANNOTATION = 'kek.aws-kms.keyhaven.io';

// The spawned plugins inherit these: credentials from the environment only,
// nothing from this machine's shared files or instance metadata.
process.env.AWS_ACCESS_KEY_ID = ACCESS_KEY_ID;
process.env.AWS_SECRET_ACCESS_KEY = SECRET;
process.env.AWS_SESSION_TOKEN = SESSION_TOKEN;
process.env.AWS_CONFIG_FILE = '/nonexistent/aws-config';
process.env.AWS_SHARED_CREDENTIALS_FILE = '/nonexistent/aws-credentials';
process.env.AWS_EC2_METADATA_DISABLED = 'true';
delete process.env.AWS_PROFILE;

describe('KMS plugin with provider aws-kms against an AWS KMS stand-in', () => {
  const standIn = new KmsStandIn({ accessKeyId: ACCESS_KEY_ID, secretAccessKey: SECRET, sessionToken: SESSION_TOKEN });
  const dirs: string[] = [];
  const plugins: PluginProcess[] = [];
  const seeds: Buffer[] = [];
  let keyArn = '';
  let plugin: PluginProcess;
  let c: KmsClients;

  async function start(name: string, provider: Record<string, unknown> = {}): Promise<PluginProcess> {
    const dir = tempDir(`kh-aws-${name}-`);
    dirs.push(dir);
    const config = join(dir, 'plugin.yaml');
    writeFileSync(config, toYaml({ provider: { type: 'aws-kms', keyArn, endpoint: standIn.endpoint, cluster: CLUSTER, encryptionContext: { team: 'platform' }, ...provider } }), { mode: 0o600 });
    const socket = join(dir, 'kms.sock');
    const p = await startPlugin({
      dataDir: dir,
      socketPath: socket,
      command: ['plugin', '--config', config, '--socket', `unix://${socket}`, '--health-addr', '127.0.0.1:0', '--log-level', 'trace', '--status-cache-ttl', '100ms', '--grace-period', GRACE],
    });
    plugins.push(p);
    return p;
  }

  const seed = () => {
    const s = randomBytes(32);
    seeds.push(s);
    return s;
  };

  const status = async (k: KmsClients = c): Promise<string> => {
    const s = await call(k.v2, 'Status', {});
    assert.equal(s.version, 'v2');
    assert.equal(s.healthz, 'ok');
    return s.key_id as string;
  };

  const waitForStatusOk = (k: KmsClients = c) => waitFor(() => status(k), 'Status to answer ok');

  before(async () => {
    await standIn.start();
    keyArn = standIn.createKey();
    plugin = await start('main');
    c = kmsClients(plugin.socket);
  });

  after(async () => {
    c?.close();
    for (const p of plugins) await p.stop();
    await standIn.stop();
    for (const d of dirs) removeDir(d);
  });

  it('Status, v2 and v1beta1 Encrypt/Decrypt through the plugin socket; the stand-in saw signed calls with the cluster in the encryption context (stand-in)', async () => {
    const keyId = await status();
    assert.equal(keyId, `aws-kms:${keyArn}`);
    const s = seed();
    const e = await call<V2Encrypted>(c.v2, 'Encrypt', { plaintext: s, uid: randomUUID() });
    assert.equal(e.key_id, keyId);
    assert.deepEqual(Object.keys(e.annotations), [KEK_ANNOTATION]);
    assert.ok(e.ciphertext.length <= 1024);
    const d = await call(c.v2, 'Decrypt', { ciphertext: e.ciphertext, uid: randomUUID(), key_id: e.key_id, annotations: e.annotations });
    assert.deepEqual(d.plaintext, s);

    const v = await call(c.v1, 'Version', { version: 'v1beta1' });
    assert.equal(v.version, 'v1beta1');
    const s1 = seed();
    const e1 = await call(c.v1, 'Encrypt', { version: 'v1beta1', plain: s1 });
    assert.ok(e1.cipher.length > 0 && e1.cipher.length <= 1024);
    const d1 = await call(c.v1, 'Decrypt', { version: 'v1beta1', cipher: e1.cipher });
    assert.deepEqual(d1.plain, s1);

    const kekWraps = standIn.calls.filter((x) => x.op === 'Encrypt' && x.context?.['keyhaven:purpose'] === 'local-kek');
    assert.ok(kekWraps.length >= 1);
    assert.deepEqual(kekWraps[0]!.context, { team: 'platform', 'keyhaven:cluster': CLUSTER, 'keyhaven:purpose': 'local-kek' });
    assert.ok(standIn.calls.every((x) => x.accessKeyId === ACCESS_KEY_ID), 'every call was signed with the credentials from the environment');
  });

  it('bad input gets a precise error and the plugin keeps serving (stand-in)', async () => {
    const keyId = await status();
    const garbage = await callError(c.v2, 'Decrypt', { ciphertext: Buffer.from([0x7f, 1, 2, 3]), uid: 'bad-1', key_id: keyId, annotations: {} });
    assert.equal(garbage.code, grpc.status.INVALID_ARGUMENT);
    assert.match(garbage.details, /unknown format byte 0x7f/);
    const e = await call<V2Encrypted>(c.v2, 'Encrypt', { plaintext: seed(), uid: 'bad-2' });
    const otherKey = `aws-kms:arn:aws:kms:${standIn.region}:${standIn.account}:key/00000000-0000-4000-8000-000000000000`;
    const unknown = await callError(c.v2, 'Decrypt', { ciphertext: e.ciphertext, uid: 'bad-3', key_id: otherKey, annotations: e.annotations });
    assert.equal(unknown.code, grpc.status.NOT_FOUND);
    assert.match(unknown.details, /does not use/);
    const noAnnotation = await callError(c.v2, 'Decrypt', { ciphertext: e.ciphertext, uid: 'bad-4', key_id: e.key_id, annotations: {} });
    assert.equal(noAnnotation.code, grpc.status.INVALID_ARGUMENT);
    assert.match(noAnnotation.details, /kek\.aws-kms\.keyhaven\.io annotation is missing/);
    const tampered = Buffer.from(e.ciphertext);
    tampered[tampered.length - 1]! ^= 1;
    const bad = await callError(c.v2, 'Decrypt', { ciphertext: tampered, uid: 'bad-5', key_id: e.key_id, annotations: e.annotations });
    assert.equal(bad.code, grpc.status.INVALID_ARGUMENT);
    assert.match(bad.details, /failed authentication/);
    assert.equal(await status(), keyId, 'still serving');
  });

  it('a disabled key fails Status at once (no grace period), and Encrypt with it; enabling it again recovers (stand-in)', async () => {
    const keyId = await status();
    standIn.setKeyState(keyArn, 'Disabled');
    try {
      const err = await waitForError(c.v2, 'Status', {}, 'Status to fail for the disabled key');
      assert.equal(err.code, grpc.status.FAILED_PRECONDITION);
      assert.match(err.details, /is disabled/);
      const enc = await callError(c.v2, 'Encrypt', { plaintext: seed(), uid: randomUUID() });
      assert.equal(enc.code, grpc.status.FAILED_PRECONDITION);
    } finally {
      standIn.setKeyState(keyArn, 'Enabled');
    }
    assert.equal(await waitForStatusOk(), keyId);
  });

  it('access denied fails Status with PERMISSION_DENIED naming the missing permission; the metric counts it (stand-in)', async () => {
    const keyId = await status();
    standIn.fail('access-denied', { ops: ['Encrypt'] });
    try {
      const err = await waitForError(c.v2, 'Status', {}, 'Status to fail for access denied');
      assert.equal(err.code, grpc.status.PERMISSION_DENIED);
      assert.match(err.details, /not authorized to perform: kms:Encrypt/);
      assert.ok((await metric(plugin, 'keyhaven_plugin_key_server_calls_total', { server: standIn.endpoint, operation: 'encrypt', result: 'permission_denied' })) >= 1);
    } finally {
      standIn.heal();
    }
    assert.equal(await waitForStatusOk(), keyId);
  });

  it(`stand-in gone: Status keeps the last key_id for the grace period (${GRACE}), cached-KEK Decrypt keeps working, then Status fails; back again, Status recovers`, async () => {
    const keyId = await status();
    const s = seed();
    const e = await call<V2Encrypted>(c.v2, 'Encrypt', { plaintext: s, uid: randomUUID() });
    const port = standIn.port;
    await standIn.stop();
    try {
      // Status polls drive the checks, as the apiserver's do.
      const degraded = await waitFor(async () => {
        await call(c.v2, 'Status', {}).catch(() => {});
        return logLines(plugin.output()).find((l) => l.msg === 'key provider unreachable; Status keeps the last good key_id during the grace period');
      }, 'a degraded Status (the grace period)');
      assert.equal(degraded.keyId, keyId, 'Status answers the last good key_id during the grace period');
      const err = await waitForError(c.v2, 'Status', {}, 'Status to fail after the grace period');
      assert.equal(err.code, grpc.status.UNAVAILABLE);
      const d = await call(c.v2, 'Decrypt', { ciphertext: e.ciphertext, uid: randomUUID(), key_id: e.key_id, annotations: e.annotations });
      assert.deepEqual(d.plaintext, s, 'a cached KEK decrypts without KMS');
      const enc = await callError(c.v2, 'Encrypt', { plaintext: seed(), uid: randomUUID() });
      assert.equal(enc.code, grpc.status.UNAVAILABLE, 'Encrypt is refused once the grace period is over');
    } finally {
      await standIn.start(port);
    }
    assert.equal(await waitForStatusOk(), keyId);
  });

  it('wrong credentials fail Status with UNAUTHENTICATED (stand-in)', async () => {
    process.env.AWS_SECRET_ACCESS_KEY = WRONG_SECRET;
    let wrong: PluginProcess;
    try {
      wrong = await start('wrong');
    } finally {
      process.env.AWS_SECRET_ACCESS_KEY = SECRET;
    }
    const w = kmsClients(wrong.socket);
    try {
      const err = await waitForError(w.v2, 'Status', {}, 'Status to fail with wrong credentials');
      assert.equal(err.code, grpc.status.UNAUTHENTICATED);
      assert.match(err.details, /InvalidSignatureException/);
      assert.ok(standIn.calls.some((x) => x.result === 'InvalidSignatureException'), 'the stand-in recomputed the signature and refused it');
    } finally {
      w.close();
    }
  });

  it('no credential (access key, secret, session token) and no seed appears in any plugin\'s output at trace level (stand-in)', async () => {
    // The stand-in's signature error quotes the canonical request, session token included, as AWS does.
    assert.ok(standIn.calls.some((x) => x.result === 'InvalidSignatureException'));
    const secrets: Record<string, Buffer> = { accessKeyId: Buffer.from(ACCESS_KEY_ID), secret: Buffer.from(SECRET), wrongSecret: Buffer.from(WRONG_SECRET), sessionToken: Buffer.from(SESSION_TOKEN) };
    seeds.forEach((s, i) => Object.assign(secrets, Object.fromEntries(Object.entries(byteForms(s)).map(([f, b]) => [`seed${i}.${f}`, b]))));
    assert.ok(seeds.length >= 5);
    assert.ok(logLines(plugin.output()).some((l) => l.level === 'debug'), 'the plugin logged below info (it runs at trace)');
    for (const p of plugins) {
      const out = Buffer.from(p.output());
      assert.ok(logLines(p.output()).some((l) => l.msg === 'kms plugin listening'));
      for (const [name, b] of Object.entries(secrets)) assert.ok(!out.includes(b), `${name} appears in the plugin output`);
    }
  });
});
