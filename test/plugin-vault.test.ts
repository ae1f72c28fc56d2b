import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { stringify as toYaml } from 'yaml';
import { byteForms } from './secret-forms.js';
import { call, callError, grpc, kmsClients, logLines, removeDir, startPlugin, tempDir, waitFor, type KmsClients, type PluginProcess, freePort, type V2Encrypted } from './helpers.js';
import { startVaultStandin, type VaultStandin } from './plugin-vault-standin.js';
import { api, auditRecords, rotateAppKeyApproved, setupCast, startServerProcess, type Cast, type ServerProcess } from './server-helpers.js';

// The KMS plugin with provider `vault`, end to end: a real `keyhaven server`
// process serving its Vault Transit API plays the Vault (the app's API key is
// the Vault token, in a 0600 token file), a real plugin process on a real unix
// socket, real gRPC. AppRole and Kubernetes logins, which keyhaven does not
// serve, run against the stand-in Vault (test/plugin-vault-standin.ts).

const KEY = 'kubernetes-secrets';
const GRACE_MS = 6000;
const KEY_ID = /^vault:transit\/kubernetes-secrets:v(\d+)(:[0-9a-f]{16})?$/;

async function status(c: KmsClients): Promise<string> {
  const s = await call(c.v2, 'Status', {});
  assert.equal(s.version, 'v2');
  assert.equal(s.healthz, 'ok');
  return s.key_id as string;
}

const versionOf = (keyId: string) => Number(KEY_ID.exec(keyId)?.[1]);

async function startVaultPlugin(dir: string, provider: Record<string, unknown>): Promise<PluginProcess> {
  const config = join(dir, 'plugin.yaml');
  writeFileSync(config, toYaml({ provider: { type: 'vault', backoff: { min: '100ms', max: '1s' }, ...provider } }), { mode: 0o600 });
  const socket = join(dir, 'kms.sock');
  return startPlugin({
    dataDir: dir,
    socketPath: socket,
    command: ['plugin', '--config', config, '--socket', `unix://${socket}`, '--health-addr', '127.0.0.1:0', '--log-level', 'trace', '--status-cache-ttl', '100ms', '--grace-period', `${GRACE_MS}ms`],
  });
}

/** Polls Status until it fails; returns the error (the grace period may have to run out first). */
async function statusFails(c: KmsClients, what: string): Promise<grpc.ServiceError> {
  return waitFor(
    async () => {
      try {
        await call(c.v2, 'Status', {});
        return undefined;
      } catch (e) {
        return e as grpc.ServiceError;
      }
    },
    what,
    GRACE_MS + 20_000,
  );
}

describe('KMS plugin with the vault provider against keyhaven\'s own Transit API', () => {
  const dirs: string[] = [];
  let server: ServerProcess | undefined;
  let serverDir = '';
  let serverConfig: Record<string, unknown>;
  let url = '';
  let cast: Cast;
  let tokenFile = '';
  let plugin: PluginProcess | undefined;
  let c: KmsClients | undefined;
  const planted: Buffer[] = [];
  const dirOf = (name: string) => {
    const d = tempDir(`kh-vault-${name}-`);
    dirs.push(d);
    return d;
  };
  const seed = () => {
    const s = randomBytes(32);
    planted.push(s);
    return s;
  };
  const vaultApi = (method: string, path: string, token: string, body?: unknown) => api(url, method, path, { headers: { 'x-vault-token': token }, ...(body !== undefined ? { body } : {}) });

  before(async () => {
    serverDir = dirOf('srv');
    // A fixed port: the plugin names the address, and the restarted server must come back at it.
    serverConfig = { listen: `127.0.0.1:${await freePort()}` };
    server = await startServerProcess({ dir: serverDir, config: serverConfig });
    url = server.url;
    cast = await setupCast(url, KEY);
    planted.push(Buffer.from(cast.appKey));
    const pdir = dirOf('plugin');
    tokenFile = join(pdir, 'vault-token');
    writeFileSync(tokenFile, `${cast.appKey}\n`, { mode: 0o600 });
    plugin = await startVaultPlugin(pdir, { addresses: [url], key: KEY, auth: { tokenFile } });
    c = kmsClients(plugin.socket);
  });

  after(async () => {
    c?.close();
    await plugin?.stop();
    await server?.stop();
    // No secret (the token, seeds, plaintexts) in the plugin's trace-level log.
    const out = plugin?.output() ?? '';
    assert.ok(logLines(out).some((l) => l.level === 'trace' || l.level === 'debug'), 'the log ran at trace level');
    for (const s of planted) for (const [form, b] of Object.entries(byteForms(s))) assert.ok(!out.includes(b.toString('latin1')), `a secret (${form}) is in the plugin log`);
    for (const d of dirs) removeDir(d);
  });

  it('Status, Encrypt and Decrypt over KMS v2 and v1beta1; the ciphertext is Vault\'s and opens with any Vault client', async () => {
    const keyId = await status(c!);
    assert.match(keyId, KEY_ID);
    assert.equal(versionOf(keyId), 1);
    const s = seed();
    const e = await call<V2Encrypted>(c!.v2, 'Encrypt', { plaintext: s, uid: randomUUID() });
    assert.equal(e.key_id, keyId);
    assert.match(e.ciphertext.toString(), /^vault:v1:[A-Za-z0-9+/]+=*$/);
    const d = await call(c!.v2, 'Decrypt', { ciphertext: e.ciphertext, uid: randomUUID(), key_id: e.key_id, annotations: e.annotations });
    assert.deepEqual(d.plaintext, s);
    // The same ciphertext through the Transit API directly, as `vault write transit/decrypt/...` would.
    const direct = await vaultApi('POST', `/v1/transit/decrypt/${KEY}`, cast.appKey, { ciphertext: e.ciphertext.toString() });
    assert.equal(direct.status, 200, direct.text);
    assert.equal(direct.body.data.plaintext, s.toString('base64'));
    // v1beta1
    const v = await call(c!.v1, 'Version', { version: 'v1beta1' });
    assert.equal(v.version, 'v1beta1');
    const s1 = seed();
    const e1 = await call(c!.v1, 'Encrypt', { version: 'v1beta1', plain: s1 });
    assert.match(e1.cipher.toString(), /^vault:v1:/);
    assert.deepEqual((await call(c!.v1, 'Decrypt', { version: 'v1beta1', cipher: e1.cipher })).plain, s1);
    // Garbage is refused precisely and the plugin keeps serving.
    const bad = await callError(c!.v2, 'Decrypt', { ciphertext: Buffer.from('vault:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'), uid: 'u', key_id: keyId, annotations: {} });
    assert.notEqual(bad.code, grpc.status.OK);
    assert.equal(await status(c!), keyId);
    // keyhaven audits the plugin's calls as the app's, on the Transit operations.
    const records = await auditRecords(url, cast.auditor, 'principal=app:app1');
    assert.ok(records.some((r) => /transit\.encrypt/.test(r.operation)), 'transit.encrypt audited');
    assert.ok(records.some((r) => /transit\.decrypt/.test(r.operation)), 'transit.decrypt audited');
    assert.ok(records.some((r) => /transit\.keys\.read/.test(r.operation)), 'the key read audited');
  });

  it('rotation on the server (native and Transit API): the key_id changes, older ciphertexts still decrypt', async () => {
    const k1 = await status(c!);
    const old = await call<V2Encrypted>(c!.v2, 'Encrypt', { plaintext: seed(), uid: randomUUID() });
    const r = await api(url, 'POST', `/v1/keys/${KEY}/rotate`, { token: cast.keyAdmin });
    assert.equal(r.status, 200, r.text);
    const k2 = await waitFor(async () => {
      const k = await status(c!);
      return k !== k1 ? k : undefined;
    }, 'the key_id after a native rotation');
    assert.equal(versionOf(k2), versionOf(k1) + 1);
    const mid = await call<V2Encrypted>(c!.v2, 'Encrypt', { plaintext: seed(), uid: randomUUID() });
    assert.equal(mid.key_id, k2);
    // Rotation through the Vault API, by the key admin.
    const rv = await vaultApi('POST', `/v1/transit/keys/${KEY}/rotate`, cast.keyAdmin);
    assert.equal(rv.status, 200, rv.text);
    const k3 = await waitFor(async () => {
      const k = await status(c!);
      return k !== k2 ? k : undefined;
    }, 'the key_id after a Transit rotation');
    assert.equal(versionOf(k3), versionOf(k2) + 1);
    for (const e of [old, mid]) {
      const d = await call(c!.v2, 'Decrypt', { ciphertext: e.ciphertext, uid: randomUUID(), key_id: e.key_id, annotations: e.annotations });
      assert.equal(d.plaintext.length, 32);
    }
    const fresh = await call<V2Encrypted>(c!.v2, 'Encrypt', { plaintext: seed(), uid: randomUUID() });
    assert.equal(fresh.key_id, k3);
    assert.match(fresh.ciphertext.toString(), new RegExp(`^vault:v${versionOf(k3)}:`));
  });

  it('a revoked grant fails Status with a clear log line; granted again, it recovers', async () => {
    const keyId = await status(c!);
    const del = await api(url, 'DELETE', `/v1/apps/app1/grants/${KEY}`, { token: cast.keyAdmin });
    assert.ok(del.status < 300, del.text);
    const err = await statusFails(c!, 'Status to fail after the grant was revoked');
    assert.notEqual(err.code, grpc.status.OK);
    const line = await waitFor(() => logLines(plugin!.output()).find((l) => l.msg === 'Status fails: the apiserver will stop writing with this plugin' && /permission denied/.test(JSON.stringify(l.err))), 'the Status failure log line');
    assert.equal((line.err as { code: string }).code, 'permission_denied');
    assert.match((line.err as { message: string }).message, /Vault refused the key read of transit\/keys\/kubernetes-secrets/);
    await assert.rejects(call(c!.v2, 'Encrypt', { plaintext: seed(), uid: randomUUID() }));
    const put = await api(url, 'PUT', `/v1/apps/app1/grants/${KEY}`, { token: cast.keyAdmin, body: { operations: ['encrypt', 'decrypt', 'rewrap', 'datakey'] } });
    assert.ok(put.status < 300, put.text);
    assert.equal(await waitFor(() => status(c!).catch(() => undefined), 'Status to recover'), keyId);
  });

  it('a rotated API key (the Vault token) fails Status as unauthenticated until the token file holds the new one', async () => {
    const keyId = await status(c!);
    // app1 holds grants: a key-admin approves the new key and the requester collects it.
    const fresh = await rotateAppKeyApproved(url, cast.admin, cast.keyAdmin, 'app1');
    planted.push(Buffer.from(fresh));
    await statusFails(c!, 'Status to fail with the old token');
    await waitFor(() => logLines(plugin!.output()).find((l) => l.msg === 'Status fails: the apiserver will stop writing with this plugin' && (l.err as { code?: string })?.code === 'unauthenticated'), 'an unauthenticated Status failure logged');
    writeFileSync(tokenFile, fresh, { mode: 0o600 });
    assert.equal(await waitFor(() => status(c!).catch(() => undefined), 'Status to recover with the new token'), keyId);
    assert.ok(logLines(plugin!.output()).some((l) => l.msg === 'Vault token file changed; using the new token'));
    cast.appKey = fresh;
  });

  it('the server going away: Status rides the grace period, then fails; restarted, it recovers', async () => {
    const keyId = await status(c!);
    await server!.stop();
    // Right after: the last good key_id, degraded (the grace period runs).
    assert.equal(await status(c!), keyId);
    // Status is polled (as the apiserver does) so that a check runs once the cached answer expires.
    await waitFor(async () => {
      await status(c!).catch(() => undefined);
      return logLines(plugin!.output()).find((l) => l.msg === 'key provider unreachable; Status keeps the last good key_id during the grace period');
    }, 'the degraded log line');
    const err = await statusFails(c!, 'Status to fail once the grace period is over');
    assert.equal(err.code, grpc.status.UNAVAILABLE);
    server = await startServerProcess({ dir: serverDir, config: serverConfig });
    assert.equal(server.url, url);
    assert.equal(await waitFor(() => status(c!).catch(() => undefined), 'Status to recover after the restart', 30_000), keyId);
    const s = seed();
    const e = await call<V2Encrypted>(c!.v2, 'Encrypt', { plaintext: s, uid: randomUUID() });
    assert.deepEqual((await call(c!.v2, 'Decrypt', { ciphertext: e.ciphertext, uid: randomUUID(), key_id: e.key_id, annotations: e.annotations })).plaintext, s);
  });
});

describe('KMS plugin with the vault provider: AppRole and Kubernetes logins (stand-in Vault)', () => {
  let vault: VaultStandin;
  const dirs: string[] = [];
  const plugins: PluginProcess[] = [];
  const clients: KmsClients[] = [];

  before(async () => {
    vault = await startVaultStandin();
  });

  after(async () => {
    for (const c of clients) c.close();
    for (const p of plugins) await p.stop();
    await vault.close();
    // Neither the credentials nor any token Vault handed out reached a plugin log.
    const secrets = [vault.approle.secretId, vault.kubernetes.jwt, ...vault.tokens.keys()];
    for (const p of plugins) for (const s of secrets) assert.ok(!p.output().includes(s), 'a credential or token is in the plugin log');
    for (const d of dirs) removeDir(d);
  });

  async function start(name: string, auth: Record<string, unknown>): Promise<{ p: PluginProcess; c: KmsClients }> {
    const dir = tempDir(`kh-vault-${name}-`);
    dirs.push(dir);
    const resolved = typeof auth.approle === 'object' ? { approle: { ...(auth.approle as object), secretIdFile: join(dir, 'secret-id') } } : auth;
    writeFileSync(join(dir, 'secret-id'), vault.approle.secretId, { mode: 0o600 });
    const p = await startVaultPlugin(dir, { addresses: [vault.url], auth: resolved });
    plugins.push(p);
    const c = kmsClients(p.socket);
    clients.push(c);
    return { p, c };
  }

  it('AppRole login, renewal at 2/3 of the lease, and a new login when the max TTL nears (stand-in)', async () => {
    // Short leases so the renewal and the re-login happen within the test; counts are asserted, not times.
    vault.approle.ttlSeconds = 3;
    vault.approle.maxTtlSeconds = 5;
    const logins0 = vault.count('/v1/auth/approle/login');
    const renewals0 = vault.count('/v1/auth/token/renew-self');
    const revokes0 = vault.count('/v1/auth/token/revoke-self');
    const { p, c } = await start('approle', { approle: { roleId: vault.approle.roleId } });
    const keyId = await status(c);
    assert.match(keyId, KEY_ID);
    await waitFor(() => vault.count('/v1/auth/token/renew-self') > renewals0, 'a token renewal', 30_000);
    await waitFor(() => vault.count('/v1/auth/approle/login') >= logins0 + 2, 'a new login near the max TTL', 30_000);
    // The replaced token is revoked (best effort), with that token, not the new one.
    await waitFor(() => vault.count('/v1/auth/token/revoke-self') > revokes0, 'the replaced token revoked', 30_000);
    const revoke = vault.requests.filter((r) => r.path === '/v1/auth/token/revoke-self').at(-1)!;
    assert.ok(typeof revoke.headers['x-vault-token'] === 'string' && vault.tokens.has(revoke.headers['x-vault-token']), 'sent with a token Vault issued');
    const s = randomBytes(32);
    const e = await call<V2Encrypted>(c.v2, 'Encrypt', { plaintext: s, uid: randomUUID() });
    assert.deepEqual((await call(c.v2, 'Decrypt', { ciphertext: e.ciphertext, uid: randomUUID(), key_id: e.key_id, annotations: e.annotations })).plaintext, s);
    const lines = logLines(p.output());
    assert.ok(lines.filter((l) => l.msg === 'logged in to Vault').length >= 2);
    assert.ok(lines.some((l) => l.msg === 'Vault token renewed'));
    assert.ok(!p.output().includes(s.toString('base64')));
    vault.approle.ttlSeconds = 60;
    vault.approle.maxTtlSeconds = 0;
  });

  it('Kubernetes login with the service account token; a refused login fails Status as unauthenticated (stand-in)', async () => {
    const dir = tempDir('kh-vault-k8s-jwt-');
    dirs.push(dir);
    const jwtFile = join(dir, 'token');
    writeFileSync(jwtFile, vault.kubernetes.jwt);
    const { c } = await start('k8s', { kubernetes: { role: vault.kubernetes.role, jwtFile } });
    assert.match(await status(c), KEY_ID);
    assert.deepEqual(vault.requests.filter((r) => r.path === '/v1/auth/kubernetes/login').at(-1)!.body, { role: 'kms', jwt: vault.kubernetes.jwt });
    const other = join(dir, 'other');
    writeFileSync(other, 'eyJnot-a-valid-token');
    const { p: p2, c: c2 } = await start('k8s-bad', { kubernetes: { role: 'kms', jwtFile: other } });
    const err = await statusFails(c2, 'Status to fail with a refused login');
    assert.notEqual(err.code, grpc.status.OK);
    const line = logLines(p2.output()).find((l) => l.msg === 'Status fails: the apiserver will stop writing with this plugin');
    assert.equal((line?.err as { code?: string })?.code, 'unauthenticated');
    assert.match((line?.err as { message: string }).message, /Vault refused the Kubernetes login at auth\/kubernetes \(role kms\): permission denied/);
  });
});
