import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { stringify as toYaml } from 'yaml';
import { call, callError, grpc, kmsClients, logLines, removeDir, startPlugin, tempDir, waitFor, type KmsClients, type PluginProcess, freePort, type V2Encrypted } from './helpers.js';
import { dsmAd, packDsmCiphertext } from '../src/plugin/providers/fortanix-dsm-format.js';
import { byteForms } from './secret-forms.js';
import { api, auditRecords, login, rotateAppKeyApproved, setupCast, startServerProcess, type Cast, type ServerProcess } from './server-helpers.js';

// The KMS plugin with provider `fortanix-dsm`, end to end against keyhaven's
// own Fortanix DSM API: a real `keyhaven server` process on 127.0.0.1, a real
// plugin process on a real unix socket, real gRPC. The plugin speaks DSM's
// documented REST API (session auth, key listing, /crypto/v1/keys/{kid}/
// encrypt|decrypt with AES-GCM); the app authenticates with its DSM API key,
// base64("<app name>:<keyhaven API key>") (docs/compat-dsm.md). Changes made
// on the server (rekey, disable, key rotation, grant revocation, the server
// stopping) are waited for, never timed.

const KEY = 'k8s-secrets';
// The server's session lifetime: short, so the plugin renews its session (at 2/3) several times during the run.
const SESSION_TTL = '6s';
const GRACE = '8s';
const CLUSTER = 'prod-eu-1';

const dsmApiKey = (appKey: string) => Buffer.from(`app1:${appKey}`).toString('base64');

describe('KMS plugin with the fortanix-dsm provider against keyhaven\'s DSM API', () => {
  const dirs: string[] = [];
  let port = 0;
  let serverDir = '';
  let srv: ServerProcess | undefined;
  let url = '';
  let cast: Cast;
  let apiKeyFile = '';
  let plugin: PluginProcess | undefined;
  let c: KmsClients | undefined;
  /** Every API key the app has had (keyhaven form and DSM form): none may reach the plugin's log. */
  const secrets: string[] = [];
  const written: Array<{ v2?: V2Encrypted; v1?: Buffer; seed: Buffer }> = [];
  /** Output of plugin processes stopped during the run. */
  let earlierOutput = '';

  // Sessions last SESSION_TTL for users too: log in afresh for each administrative step.
  const as = (user: 'admin' | 'keyadmin' | 'auditor') => login(url, user === 'admin' ? Object.keys(cast.passwords)[0]! : user, cast.passwords[user === 'admin' ? Object.keys(cast.passwords)[0]! : user]!);

  const startServer = async (sessionTTL = SESSION_TTL) => {
    srv = await startServerProcess({ dir: serverDir, config: { listen: `127.0.0.1:${port}`, auth: { sessionTTL } } });
    url = srv.url;
  };

  const startDsmPlugin = async (dir: string): Promise<PluginProcess> => {
    const config = join(dir, 'plugin.yaml');
    writeFileSync(
      config,
      toYaml({
        provider: { type: 'fortanix-dsm', cluster: CLUSTER, endpoints: [url], apiKeyFile, keyName: KEY, backoff: { min: '100ms', max: '1s' } },
        status: { cacheTTL: '100ms', gracePeriod: GRACE, recheckInterval: '500ms' },
      }),
      { mode: 0o600 },
    );
    const socket = join(dir, 'kms.sock');
    // trace: the most the plugin ever logs, so the secret scan below covers everything.
    return startPlugin({ dataDir: dir, socketPath: socket, command: ['plugin', '--config', config, '--socket', `unix://${socket}`, '--health-addr', '127.0.0.1:0', '--log-level', 'trace'] });
  };

  /** The current object of KEY as the app sees it through DSM's key listing. */
  const currentKid = async (): Promise<string> => {
    const r = await fetch(`${url}/crypto/v1/keys?name=${KEY}`, { headers: { authorization: `Basic ${dsmApiKey(cast.appKey)}` } });
    assert.equal(r.status, 200);
    const list = (await r.json()) as Array<{ kid: string; name: string }>;
    assert.equal(list.length, 1);
    return list[0]!.kid;
  };

  const status = async (): Promise<string> => {
    const s = await call(c!.v2, 'Status', {});
    assert.equal(s.version, 'v2');
    assert.equal(s.healthz, 'ok');
    return s.key_id as string;
  };
  const encryptV2 = (seed: Buffer) => call<V2Encrypted>(c!.v2, 'Encrypt', { plaintext: seed, uid: randomUUID() });
  const decryptV2 = async (e: V2Encrypted) => (await call(c!.v2, 'Decrypt', { ciphertext: e.ciphertext, uid: randomUUID(), key_id: e.key_id, annotations: e.annotations })).plaintext as Buffer;
  const encryptV1 = async (seed: Buffer) => (await call(c!.v1, 'Encrypt', { version: 'v1beta1', plain: seed })).cipher as Buffer;
  const decryptV1 = async (cipher: Buffer) => (await call(c!.v1, 'Decrypt', { version: 'v1beta1', cipher })).plain as Buffer;

  /** Every ciphertext written so far still decrypts to its seed. */
  const allStillDecrypt = async () => {
    for (const w of written) {
      if (w.v2) assert.deepEqual(await decryptV2(w.v2), w.seed);
      if (w.v1) assert.deepEqual(await decryptV1(w.v1), w.seed);
    }
  };

  const waitStatus = (keyId: string, what: string) => waitFor(async () => ((await status().catch(() => '')) === keyId ? true : undefined), what, 30_000);
  const waitStatusError = (what: string) =>
    waitFor(async () => {
      try {
        await call(c!.v2, 'Status', {});
        return undefined;
      } catch (e) {
        return e as grpc.ServiceError;
      }
    }, what, 30_000);

  before(async () => {
    port = await freePort();
    serverDir = tempDir('kh-dsm-srv-');
    dirs.push(serverDir);
    // Set up with the default session lifetime (setupCast's tokens must outlive it), then run with the short one.
    await startServer('8h');
    cast = await setupCast(url, KEY);
    await srv!.stop();
    await startServer();
    const dir = tempDir('kh-dsm-plugin-');
    dirs.push(dir);
    apiKeyFile = join(dir, 'dsm-api-key');
    writeFileSync(apiKeyFile, `${dsmApiKey(cast.appKey)}\n`, { mode: 0o600 });
    secrets.push(cast.appKey, dsmApiKey(cast.appKey));
    plugin = await startDsmPlugin(dir);
    c = kmsClients(plugin.socket);
  });

  after(async () => {
    c?.close();
    await plugin?.stop();
    await srv?.stop();
    for (const d of dirs) removeDir(d);
  });

  it('Status, Encrypt and Decrypt (v2 and v1beta1) go through DSM under the app\'s grants, audited by the server', async () => {
    const kid = await currentKid();
    assert.equal(await status(), `dsm:${kid}`);
    const seed = randomBytes(32);
    const e = await encryptV2(seed);
    assert.equal(e.key_id, `dsm:${kid}`);
    assert.deepEqual(e.annotations, {});
    assert.ok(e.ciphertext.length > 32 && e.ciphertext.length <= 1024);
    assert.ok(!e.ciphertext.includes(seed));
    assert.deepEqual(await decryptV2(e), seed);

    const v = await call(c!.v1, 'Version', { version: 'v1beta1' });
    assert.equal(v.version, 'v1beta1');
    const seed1 = randomBytes(32);
    const v1 = await encryptV1(seed1);
    assert.deepEqual(await decryptV1(v1), seed1);
    // Both API versions share one format: a v1beta1 ciphertext decrypts through v2 with its kid as key_id.
    assert.deepEqual(await decryptV2({ ciphertext: v1, key_id: `dsm:${kid}`, annotations: {} }), seed1);
    written.push({ v2: e, seed }, { v1, seed: seed1 });

    // The server audited the app's DSM calls like native ones: its principal, the key, the version.
    const rows = await auditRecords(url, await as('auditor'), 'principal=app:app1');
    const ops = rows.filter((r) => r.operation === 'dsm.encrypt' || r.operation === 'dsm.decrypt');
    assert.ok(ops.length >= 4, `audited DSM calls: ${ops.length}`);
    assert.ok(ops.every((r) => r.key_name === KEY && r.key_version === 1 && r.result === 'ok'));
    assert.ok(rows.some((r) => r.operation === 'dsm.session.auth' && r.result === 'ok'));
  });

  it('refuses bad input with a precise error and keeps serving', async () => {
    const kid = await currentKid();
    const e = await callError(c!.v2, 'Decrypt', { ciphertext: Buffer.from('not a dsm ciphertext'), uid: 'bad-1', key_id: `dsm:${kid}`, annotations: {} });
    assert.equal(e.code, grpc.status.INVALID_ARGUMENT);
    assert.match(e.details, /not written by the fortanix-dsm provider/);
    const good = written[0]!.v2!;
    const stranger = await callError(c!.v2, 'Decrypt', { ciphertext: good.ciphertext, uid: 'bad-2', key_id: `dsm:${randomUUID()}`, annotations: {} });
    assert.equal(stranger.code, grpc.status.NOT_FOUND);
    assert.match(stranger.details, new RegExp(`which is not DSM key "${KEY}", an object it replaced \\(links.replaced\\) or one of provider.previousKids`));

    // The same DSM object and app, another cluster name in the additional data (etcd data copied
    // from another cluster): written straight through DSM's REST API, packed as the plugin packs it.
    const auth = await fetch(`${url}/sys/v1/session/auth`, { method: 'POST', headers: { authorization: `Basic ${dsmApiKey(cast.appKey)}` } });
    assert.equal(auth.status, 200);
    const token = ((await auth.json()) as { access_token: string }).access_token;
    const seed = randomBytes(32);
    const r = await fetch(`${url}/crypto/v1/keys/${kid}/encrypt`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ alg: 'AES', mode: 'GCM', plain: seed.toString('base64'), ad: dsmAd('prod-us-2', kid).toString('base64'), tag_len: 128 }),
    });
    assert.equal(r.status, 200);
    const out = (await r.json()) as { cipher: string; iv: string; tag: string };
    const copied = packDsmCiphertext({ kid, iv: Buffer.from(out.iv, 'base64'), tag: Buffer.from(out.tag, 'base64'), cipher: Buffer.from(out.cipher, 'base64') });
    for (const key_id of [`dsm:${kid}`, undefined]) {
      const x = key_id ? await callError(c!.v2, 'Decrypt', { ciphertext: copied, uid: 'bad-5', key_id, annotations: {} }) : await callError(c!.v1, 'Decrypt', { version: 'v1beta1', cipher: copied });
      assert.equal(x.code, grpc.status.INVALID_ARGUMENT);
      assert.match(x.details, new RegExp(`does not verify under DSM key ${kid} for cluster "${CLUSTER}"`));
    }
    // The same request with this cluster's name opens: only the cluster name differs.
    const r2 = await fetch(`${url}/crypto/v1/keys/${kid}/encrypt`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ alg: 'AES', mode: 'GCM', plain: seed.toString('base64'), ad: dsmAd(CLUSTER, kid).toString('base64'), tag_len: 128 }),
    });
    const out2 = (await r2.json()) as { cipher: string; iv: string; tag: string };
    const ours = packDsmCiphertext({ kid, iv: Buffer.from(out2.iv, 'base64'), tag: Buffer.from(out2.tag, 'base64'), cipher: Buffer.from(out2.cipher, 'base64') });
    assert.deepEqual(await decryptV2({ ciphertext: ours, key_id: `dsm:${kid}`, annotations: {} }), seed);
    const tampered = Buffer.from(good.ciphertext);
    tampered[tampered.length - 1]! ^= 1;
    const t = await callError(c!.v2, 'Decrypt', { ciphertext: tampered, uid: 'bad-3', key_id: good.key_id, annotations: {} });
    assert.equal(t.code, grpc.status.INVALID_ARGUMENT);
    assert.match(t.details, /does not verify/);
    const tooBig = await callError(c!.v2, 'Encrypt', { plaintext: randomBytes(4096), uid: 'bad-4' });
    assert.equal(tooBig.code, grpc.status.INVALID_ARGUMENT);
    assert.equal(await status(), `dsm:${kid}`);
    await allStillDecrypt();
  });

  it('a rekey on the server changes the key_id within one check; old ciphertexts still decrypt', async () => {
    const before = await status();
    const r = await api(url, 'POST', `/v1/keys/${KEY}/rotate`, { token: await as('keyadmin'), body: {} });
    assert.equal(r.status, 200, r.text);
    const kid2 = await currentKid();
    assert.notEqual(`dsm:${kid2}`, before);
    await waitStatus(`dsm:${kid2}`, 'the new kid in Status');
    const seed = randomBytes(32);
    const e = await encryptV2(seed);
    assert.equal(e.key_id, `dsm:${kid2}`);
    const v1 = await encryptV1(seed);
    written.push({ v2: e, v1, seed });
    await allStillDecrypt();
    assert.ok(logLines(plugin!.output()).some((l) => l.msg === 'DSM security object changed (rekey); new writes use the new kid, old ones still decrypt' && l.kid === kid2));
  });

  it('a disabled key fails Status at once; enabling it recovers', async () => {
    const keyId = await status();
    assert.equal((await api(url, 'POST', `/v1/keys/${KEY}/disable`, { token: await as('keyadmin'), body: {} })).status, 200);
    const e = await waitStatusError('Status to fail on the disabled key');
    assert.equal(e.code, grpc.status.FAILED_PRECONDITION);
    assert.match(e.details, /disabled/);
    const w = await callError(c!.v2, 'Encrypt', { plaintext: randomBytes(32), uid: 'disabled' });
    assert.equal(w.code, grpc.status.FAILED_PRECONDITION);
    // What was written still reads.
    await allStillDecrypt();
    assert.equal((await api(url, 'POST', `/v1/keys/${KEY}/enable`, { token: await as('keyadmin'), body: {} })).status, 200);
    await waitStatus(keyId, 'Status to recover after enable');
  });

  it('a revoked grant, then a rotated API key, fail Status with a clear log line; restoring them recovers', async () => {
    const keyId = await status();
    assert.equal((await api(url, 'DELETE', `/v1/apps/app1/grants/${KEY}`, { token: await as('keyadmin') })).status, 200);
    const e = await waitStatusError('Status to fail without the grant');
    // The app sees no object of that name any more (keyhaven lists only granted keys, as DSM lists only the app's groups).
    assert.equal(e.code, grpc.status.NOT_FOUND, e.details);
    assert.match(e.details, new RegExp(`DSM key "${KEY}" does not exist, or this app's groups do not hold it`));
    assert.ok(
      logLines(plugin!.output()).some((l) => l.msg === 'Status fails: the apiserver will stop writing with this plugin' && /does not exist, or this app's groups do not hold it/.test(String((l.err as { message?: string })?.message))),
      'a log line says why Status fails',
    );
    const grant = await api(url, 'PUT', `/v1/apps/app1/grants/${KEY}`, { token: await as('keyadmin'), body: { operations: ['encrypt', 'decrypt'] } });
    assert.equal(grant.status, 200, grant.text);
    await waitStatus(keyId, 'Status to recover after the grant is back');

    // The app's API key is rotated on the server: the plugin's session runs out and a new one is refused.
    // app1 holds grants: a key-admin approves the new key and the requester collects it.
    const fresh = await rotateAppKeyApproved(url, await as('admin'), await as('keyadmin'), 'app1');
    secrets.push(fresh, dsmApiKey(fresh));
    const u = await waitStatusError('Status to fail with the old API key');
    assert.equal(u.code, grpc.status.UNAUTHENTICATED);
    assert.match(u.details, /DSM refused the app's API key/);
    const line = logLines(plugin!.output()).find((l) => l.msg === 'Status fails: the apiserver will stop writing with this plugin' && /API key/.test(String((l.err as { message?: string })?.message)));
    assert.ok(line, 'a log line says the API key was refused');
    // The new key goes into the file: the plugin reads it again after the refusal, without a restart.
    writeFileSync(apiKeyFile, `${dsmApiKey(fresh)}\n`, { mode: 0o600 });
    await waitStatus(keyId, 'Status to recover with the new API key');
    cast.appKey = fresh;
    await allStillDecrypt();
  });

  it('the server going away: Status keeps the key_id for the grace period, then fails; a restart recovers', async () => {
    const keyId = await status();
    await srv!.stop();
    // The first Status after the server stops is well inside the grace period.
    assert.equal(await status(), keyId);
    const enc = await callError(c!.v2, 'Encrypt', { plaintext: randomBytes(32), uid: 'down' });
    assert.equal(enc.code, grpc.status.UNAVAILABLE);
    const e = await waitStatusError('Status to fail once the grace period is over');
    assert.equal(e.code, grpc.status.UNAVAILABLE);
    assert.ok(logLines(plugin!.output()).some((l) => l.msg === 'key provider unreachable; Status keeps the last good key_id during the grace period'));
    await startServer();
    await waitStatus(keyId, 'Status to recover after the server restarts');
    await allStillDecrypt();
  });

  it('a plugin restart recovers the same key_id and reads everything written (the object before the rekey through links.replaced)', async () => {
    const keyId = await status();
    c!.close();
    const dir = plugin!.dataDir;
    const out = plugin!.output();
    await plugin!.stop();
    plugin = await startDsmPlugin(dir);
    c = kmsClients(plugin.socket);
    assert.equal(await status(), keyId);
    await allStillDecrypt();
    earlierOutput += out;
  });

  it('neither an API key, a session token nor a seed ever reaches the plugin\'s log (trace level)', async () => {
    const out = `${earlierOutput}\n${plugin!.output()}`;
    const raw = Buffer.from(out, 'utf8');
    for (const w of written) {
      for (const [form, b] of Object.entries(byteForms(w.seed))) assert.ok(!raw.includes(b), `a seed (${form}) reached the log`);
    }
    assert.ok(logLines(out).some((l) => l.level === 'debug' && l.msg === 'DSM session renewed'), 'sessions were renewed during the run');
    for (const s of secrets) {
      assert.ok(!out.includes(s), 'an API key reached the log');
      assert.ok(!out.includes(s.slice(-24)), 'part of an API key reached the log');
    }
    assert.doesNotMatch(out, /kha_[A-Za-z0-9_-]{8,}/);
    assert.doesNotMatch(out, /khs_[A-Za-z0-9_-]{8,}/, 'a session token reached the log');
    assert.doesNotMatch(out, /Bearer [A-Za-z0-9]|Basic [A-Za-z0-9]/);
  });
});
