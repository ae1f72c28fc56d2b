import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmodSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parsePluginConfig } from '../../../config/plugin-config.js';
import { KeyhavenError } from '../../../errors.js';
import { createLogger } from '../../../log/logger.js';
import { createPluginMetrics } from '../../metrics.js';
import type { KmsProvider } from '../../provider.js';
import { code } from '../../../../test/expect-error.js';
import { byteForms } from '../../../../test/secret-forms.js';
import { startVaultStandin, type VaultStandin } from '../../../../test/plugin-vault-standin.js';
import { buildVaultProvider, parseVaultCiphertext } from './vault.js';
import { vaultErrorOf } from './vault-errors.js';
import { ownedTempDir } from '../../../../test/reaper.js';

// The vault provider against a stand-in Vault (test/plugin-vault-standin.ts:
// real HTTP on 127.0.0.1, real AES-GCM, Vault's documented answers). The
// end-to-end tests against keyhaven's own Transit API are in
// test/plugin-vault.test.ts.

const V2 = { uid: 'uid-v2', annotations: true };
const V1 = { uid: 'uid-v1', annotations: false };
const DEC = { uid: 'uid-dec' };

async function deadPort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/** Repeats fn until it rejects with an error `ok` accepts (a breaker re-opening, a timer firing); gives the last error after 15 s. */
async function waitForError(fn: () => Promise<unknown>, ok: (e: KeyhavenError) => boolean): Promise<KeyhavenError> {
  const deadline = Date.now() + 15_000;
  let last: KeyhavenError | undefined;
  while (Date.now() < deadline) {
    try {
      await fn();
    } catch (e) {
      if (!(e instanceof KeyhavenError)) throw e;
      last = e;
      if (ok(e)) return e;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  if (last) return last;
  throw new Error('never failed');
}

describe('vault provider config', () => {
  const base = { addresses: ['http://127.0.0.1:8200'], auth: { tokenFile: '/x/token' } };
  const parse = (p: Record<string, unknown>) => parsePluginConfig({ provider: { type: 'vault', ...p } }, 'test.yaml');
  const refuses = (p: Record<string, unknown>, pattern: RegExp) => assert.throws(() => parse(p), code('config_invalid', pattern));

  it('fills the defaults and resolves paths', () => {
    const cfg = parse({ ...base, auth: { approle: { roleId: 'r', secretIdFile: 'secret-id' } } });
    assert.equal(cfg.provider.type, 'vault');
    if (cfg.provider.type !== 'vault') return;
    assert.equal(cfg.provider.mount, 'transit');
    assert.equal(cfg.provider.key, 'kubernetes-secrets');
    assert.equal(cfg.provider.timeout, 2000);
    assert.equal(cfg.provider.auth.approle!.mount, 'approle');
    assert.equal(cfg.provider.auth.approle!.secretIdFile, join(process.cwd(), 'secret-id'));
    const k = parse({ ...base, mount: '/team-a/transit/', namespace: 'ns1/child', auth: { kubernetes: { role: 'kms' } } });
    if (k.provider.type !== 'vault') return;
    assert.equal(k.provider.mount, 'team-a/transit');
    assert.equal(k.provider.namespace, 'ns1/child');
    assert.equal(k.provider.auth.kubernetes!.jwtFile, '/var/run/secrets/kubernetes.io/serviceaccount/token');
    assert.equal(k.provider.auth.kubernetes!.mount, 'kubernetes');
  });

  it('refuses bad input with a precise message', () => {
    refuses({ ...base, auth: {} }, /set exactly one of tokenFile, approle and kubernetes/);
    refuses({ ...base, auth: { tokenFile: '/t', kubernetes: { role: 'r' } } }, /found tokenFile and kubernetes/);
    refuses({ ...base, auth: { approle: { secretIdFile: '/s' } } }, /exactly one of roleId and roleIdFile/);
    refuses({ ...base, auth: { approle: { roleId: 'r', roleIdFile: '/r', secretIdFile: '/s' } } }, /exactly one of roleId and roleIdFile/);
    refuses({ ...base, auth: { approle: { roleId: 'r', secretId: 'inline', secretIdFile: '/s' } } }, /secretId/);
    refuses({ ...base, timeout: '3s' }, /below the apiserver's 3 s deadline/);
    refuses({ ...base, attemptTimeout: '2500ms' }, /attemptTimeout/);
    refuses({ ...base, addresses: ['http://vault.example.com:8200'] }, /plain HTTP to a host that is not loopback/);
    refuses({ ...base, addresses: ['https://vault:8200/v1'] }, /without a path/);
    refuses({ ...base, addresses: ['https://a:8200', 'https://a:8200/'] }, /twice/);
    refuses({ ...base, addresses: [] }, /addresses/);
    refuses({ ...base, mount: '../sys' }, /mount path/);
    refuses({ ...base, key: 'a/b' }, /Transit key name/);
    refuses({ ...base, tls: { clientCert: '/c' } }, /clientCert and clientKey go together/);
    refuses({ ...base, token: 'hvs.x' }, /token/);
  });
});

describe('vault provider (stand-in Vault)', () => {
  let dir: string;
  let vault: VaultStandin;
  let logs = '';
  const open: KmsProvider[] = [];
  const planted: Buffer[] = [];

  before(async () => {
    dir = ownedTempDir('kh-vault-');
    vault = await startVaultStandin();
  });

  after(async () => {
    for (const p of open) await p.close();
    await vault.close();
    rmSync(dir, { recursive: true, force: true });
    // Nothing secret reached the trace-level log of any provider built here.
    assert.ok(logs.length > 0);
    for (const s of planted) for (const [form, b] of Object.entries(byteForms(s))) assert.ok(!logs.includes(b.toString('latin1')), `a secret (${form}) is in the log`);
  });

  function tokenFile(token: string, name = `token-${randomBytes(4).toString('hex')}`): string {
    const f = join(dir, name);
    writeFileSync(f, `${token}\n`, { mode: 0o600 });
    planted.push(Buffer.from(token));
    return f;
  }

  async function provider(p: Record<string, unknown>, status: Record<string, unknown> = {}): Promise<KmsProvider> {
    const cfg = parsePluginConfig({ provider: { type: 'vault', addresses: [vault.url], backoff: { min: '50ms', max: '200ms' }, ...p }, status }, 'test');
    if (cfg.provider.type !== 'vault') throw new Error('not vault');
    const logger = createLogger({ level: 'trace', destination: { write: (s: string) => void (logs += s) } });
    const prov = await buildVaultProvider(cfg.provider, { cfg, logger, metrics: createPluginMetrics() });
    open.push(prov);
    return prov;
  }

  const seed = () => {
    const s = randomBytes(32);
    planted.push(s);
    return s;
  };

  it('Status, Encrypt and Decrypt (v2 and v1beta1) through Transit (stand-in)', async () => {
    const p = await provider({ auth: { tokenFile: tokenFile(vault.addToken('transit')) } });
    const before = vault.requests.length;
    const keyId = await p.healthCheck();
    assert.match(keyId, /^vault:transit\/kubernetes-secrets:v1:[0-9a-f]{16}$/);
    // A real round trip: the key read, an encrypt and a decrypt.
    assert.deepEqual(vault.requests.slice(before).map((r) => r.path), ['/v1/transit/keys/kubernetes-secrets', '/v1/transit/encrypt/kubernetes-secrets', '/v1/transit/decrypt/kubernetes-secrets']);
    const s = seed();
    const e = await p.encrypt(s, V2);
    assert.equal(e.keyId, keyId);
    assert.equal(e.annotations, undefined);
    assert.match(e.ciphertext.toString(), /^vault:v1:/);
    const last = vault.requests.at(-1)!;
    assert.equal(last.body.key_version, 1, 'Encrypt names the version Status reported');
    assert.equal(last.headers['x-vault-request'], 'true');
    assert.ok(!('x-vault-namespace' in last.headers));
    const d = await p.decrypt(e.ciphertext, e.keyId, {}, DEC);
    assert.deepEqual(d.plaintext, s);
    assert.equal(d.keyVersion, 1);
    const e1 = await p.encrypt(s, V1);
    assert.deepEqual((await p.decrypt(e1.ciphertext, undefined, {}, DEC)).plaintext, s);
  });

  it('rotation: the key_id changes at the next Status, Encrypt keeps Status\'s version until then, old ciphertexts decrypt (stand-in)', async () => {
    const p = await provider({ auth: { tokenFile: tokenFile(vault.addToken('transit')) } });
    const k1 = await p.healthCheck();
    const old = await p.encrypt(seed(), V2);
    const v = vault.rotate();
    // Until Status reports the new version, Encrypt uses the one it reported.
    const stillOld = await p.encrypt(seed(), V2);
    assert.equal(stillOld.keyId, k1);
    assert.match(stillOld.ciphertext.toString(), new RegExp(`^vault:v${v - 1}:`));
    const k2 = await p.healthCheck();
    assert.notEqual(k2, k1);
    assert.match(k2, new RegExp(`:v${v}:[0-9a-f]{16}$`));
    const fresh = await p.encrypt(seed(), V2);
    assert.equal(fresh.keyId, k2);
    assert.equal((await p.decrypt(old.ciphertext, old.keyId, {}, DEC)).keyVersion, v - 1);
    assert.equal((await p.decrypt(fresh.ciphertext, fresh.keyId, {}, DEC)).keyVersion, v);
    // A Vault that ignores key_version: a v2 reply with another version is refused (the apiserver would drop it).
    vault.rotate();
    vault.honourKeyVersion = false;
    try {
      await assert.rejects(p.encrypt(seed(), V2), code('unavailable', /instead of/));
      // v1beta1 has no key_id to match: it takes the newest.
      assert.ok((await p.encrypt(seed(), V1)).keyVersion > v);
    } finally {
      vault.honourKeyVersion = true;
    }
  });

  it('Decrypt refuses foreign key_ids, mismatched versions, retired versions and altered ciphertexts (stand-in)', async () => {
    const p = await provider({ auth: { tokenFile: tokenFile(vault.addToken('transit')) } });
    const keyId = await p.healthCheck();
    const e = await p.encrypt(seed(), V2);
    await assert.rejects(p.decrypt(e.ciphertext, 'vault:transit/other:v1', {}, DEC), code('unknown_key_id'));
    await assert.rejects(p.decrypt(e.ciphertext, `${keyId.replace(/:v\d+:/, ':v999:')}`, {}, DEC), code('invalid_argument', /does not belong/));
    await assert.rejects(p.decrypt(Buffer.from('kh:v1:AAAA'), keyId, {}, DEC), code('invalid_argument', /not a Vault Transit ciphertext/));
    const bad = Buffer.from(e.ciphertext);
    bad[bad.length - 4] = bad[bad.length - 4] === 0x41 ? 0x42 : 0x41;
    await assert.rejects(p.decrypt(bad, e.keyId, {}, DEC), code('integrity'));
    // A version above any the key has: refused without asking Vault to decrypt.
    const tooNew = Buffer.from(e.ciphertext.toString().replace(/^vault:v\d+:/, 'vault:v999:'));
    await assert.rejects(p.decrypt(tooNew, undefined, {}, DEC), code('unknown_key_id', /does not exist/));
    // min_decryption_version raised above the ciphertext's version.
    const latest = vault.rotate();
    vault.setMinDecryptionVersion(latest);
    try {
      await p.healthCheck();
      await assert.rejects(p.decrypt(e.ciphertext, e.keyId, {}, DEC), code('key_disabled', /min_decryption_version/));
    } finally {
      vault.setMinDecryptionVersion(1);
    }
  });

  it('a key deleted and created again under the same name: the old key_ids are refused (stand-in)', async () => {
    const other = await startVaultStandin({ key: 'k2' });
    try {
      const f = tokenFile(other.addToken('transit'));
      const cfg = parsePluginConfig({ provider: { type: 'vault', addresses: [other.url], key: 'k2', auth: { tokenFile: f } } }, 'test');
      if (cfg.provider.type !== 'vault') return;
      const p = await buildVaultProvider(cfg.provider, { cfg, logger: createLogger({ level: 'silent' }), metrics: createPluginMetrics() });
      open.push(p);
      const k1 = await p.healthCheck();
      const e = await p.encrypt(seed(), V2);
      other.recreate();
      const k2 = await p.healthCheck();
      assert.notEqual(k2, k1, 'same version number, new key: a new key_id');
      assert.match(k2, /:v1:/);
      await assert.rejects(p.decrypt(e.ciphertext, e.keyId, {}, DEC), code('unknown_key_id', /another Transit key of the same name/));
    } finally {
      await other.close();
    }
  });

  it('token file: read again when Vault refuses the token; revoked → unauthenticated, no policy → permission_denied (stand-in)', async () => {
    const t1 = vault.addToken('transit');
    const f = tokenFile(t1);
    const p = await provider({ auth: { tokenFile: f } });
    const keyId = await p.healthCheck();
    // Vault Agent writes a new token; the old one is revoked.
    const t2 = vault.addToken('transit');
    planted.push(Buffer.from(t2));
    writeFileSync(f, t2);
    vault.tokens.delete(t1);
    assert.equal(await p.healthCheck(), keyId);
    assert.equal(vault.requests.at(-1)!.headers['x-vault-token'], t2);
    assert.match(logs, /Vault token file changed/);
    // Revoked and not replaced: the token is dead.
    vault.tokens.delete(t2);
    await assert.rejects(p.healthCheck(), code('unauthenticated', /invalid, expired or revoked/));
    await assert.rejects(p.encrypt(seed(), V2), code('unauthenticated'));
    // A live token whose policy does not allow Transit.
    const q = await provider({ auth: { tokenFile: tokenFile(vault.addToken('none')) } });
    await assert.rejects(q.healthCheck(), code('permission_denied', /its policy must allow it/));
  });

  it('refuses a token file others can read, and a missing one, at start (stand-in)', async () => {
    const f = tokenFile(vault.addToken('transit'));
    chmodSync(f, 0o644);
    await assert.rejects(provider({ auth: { tokenFile: f } }), code('config_invalid', /chmod 600/));
    await assert.rejects(provider({ auth: { tokenFile: join(dir, 'missing') } }), code('config_invalid', /ENOENT/));
  });

  it('sealed, throttled and failing Vaults are transient; another address takes over (stand-in)', async () => {
    const p = await provider({ auth: { tokenFile: tokenFile(vault.addToken('transit')) } });
    await p.healthCheck();
    for (const [mode, c] of [['sealed', 'sealed'], ['throttled', 'too_many_attempts'], ['error500', 'unavailable']] as const) {
      vault.mode = mode;
      try {
        // The address's breaker may still be open from the previous mode: wait for a real answer.
        const err = await waitForError(() => p.healthCheck(), (e) => e.code === c);
        assert.equal(err.code, c, err.message);
      } finally {
        vault.mode = 'ok';
      }
    }
    // The first address is down: the second answers.
    const q = await provider({ addresses: [`http://127.0.0.1:${await deadPort()}`, vault.url], auth: { tokenFile: tokenFile(vault.addToken('transit')) } });
    assert.match(await q.healthCheck(), /^vault:/);
    const r = await provider({ addresses: [`http://127.0.0.1:${await deadPort()}`], auth: { tokenFile: tokenFile(vault.addToken('transit')) } });
    await assert.rejects(r.healthCheck(), code('unavailable', /Vault at http:\/\/127\.0\.0\.1:\d+ is unreachable/));
  });

  it('sends the namespace header, and uses a mount other than transit (stand-in)', async () => {
    const ns = await startVaultStandin({ mount: 'team-a/transit', key: 'k', namespace: 'ns1' });
    try {
      const f = tokenFile(ns.addToken('transit'));
      const cfg = parsePluginConfig({ provider: { type: 'vault', addresses: [ns.url], mount: 'team-a/transit', key: 'k', namespace: 'ns1', auth: { tokenFile: f } } }, 'test');
      if (cfg.provider.type !== 'vault') return;
      const p = await buildVaultProvider(cfg.provider, { cfg, logger: createLogger({ level: 'silent' }), metrics: createPluginMetrics() });
      open.push(p);
      assert.match(await p.healthCheck(), /^vault:ns1\/team-a\/transit\/k:v1:[0-9a-f]{16}$/);
      assert.ok(ns.requests.every((r) => r.headers['x-vault-namespace'] === 'ns1'));
    } finally {
      await ns.close();
    }
  });

  it('AppRole login (stand-in): logs in, sends no token to the login, re-logs in when Vault refuses the token', async () => {
    planted.push(Buffer.from(vault.approle.secretId));
    const secretIdFile = join(dir, 'secret-id');
    writeFileSync(secretIdFile, vault.approle.secretId, { mode: 0o600 });
    const p = await provider({ auth: { approle: { roleId: vault.approle.roleId, secretIdFile } } });
    const logins = () => vault.count('/v1/auth/approle/login');
    const n0 = logins();
    await p.healthCheck();
    assert.equal(logins(), n0 + 1);
    const login = vault.requests.filter((r) => r.path === '/v1/auth/approle/login').at(-1)!;
    assert.equal(login.headers['x-vault-token'], undefined);
    assert.deepEqual(login.body, { role_id: vault.approle.roleId, secret_id: vault.approle.secretId });
    for (const t of vault.tokens.keys()) planted.push(Buffer.from(t));
    // The token is revoked on the Vault side: one new login, and the call succeeds.
    const used = vault.requests.at(-1)!.headers['x-vault-token'] as string;
    vault.tokens.delete(used);
    await p.healthCheck();
    assert.equal(logins(), n0 + 2);
    assert.notEqual(vault.requests.at(-1)!.headers['x-vault-token'], used);
    for (const t of vault.tokens.keys()) planted.push(Buffer.from(t));
    assert.match(logs, /logged in to Vault/);
  });

  it('AppRole (stand-in): a call the policy denies, with a valid token, is looked up and never causes a new login', async () => {
    const secretIdFile = join(dir, 'secret-id-denied');
    writeFileSync(secretIdFile, vault.approle.secretId, { mode: 0o600 });
    planted.push(Buffer.from(vault.approle.secretId));
    vault.approle.policy = 'none';
    try {
      const p = await provider({ auth: { approle: { roleId: vault.approle.roleId, secretIdFile } } });
      const logins = () => vault.count('/v1/auth/approle/login');
      const lookups = () => vault.count('/v1/auth/token/lookup-self');
      const n0 = logins();
      const l0 = lookups();
      const r0 = vault.revoked.length;
      await assert.rejects(p.healthCheck(), code('permission_denied', /Vault refused the key read of transit\/keys\/kubernetes-secrets: permission denied for the token from AppRole login at auth\/approle/));
      assert.equal(logins(), n0 + 1, 'the first login, and no other');
      assert.ok(lookups() > l0, 'lookup-self told a live token from a dead one');
      for (const t of vault.tokens.keys()) planted.push(Buffer.from(t));
      // Refused again and again (Decrypt of a well-formed ciphertext too): still the one token.
      await assert.rejects(p.healthCheck(), code('permission_denied'));
      await assert.rejects(p.decrypt(Buffer.from('vault:v1:QUJDREVGR0hJSktMTU5PUFFSU1RVVldY'), undefined, {}, DEC), code('permission_denied', /decrypt with transit\/keys\/kubernetes-secrets/));
      await assert.rejects(p.healthCheck(), code('permission_denied'));
      assert.equal(logins(), n0 + 1);
      assert.equal(vault.revoked.length, r0, 'nothing was replaced, so nothing revoked');
    } finally {
      vault.approle.policy = 'transit';
    }
  });

  it('AppRole (stand-in): a token lookup-self refuses causes exactly one login, shared by concurrent calls', async () => {
    const secretIdFile = join(dir, 'secret-id-expired');
    writeFileSync(secretIdFile, vault.approle.secretId, { mode: 0o600 });
    planted.push(Buffer.from(vault.approle.secretId));
    const p = await provider({ auth: { approle: { roleId: vault.approle.roleId, secretIdFile } } });
    const logins = () => vault.count('/v1/auth/approle/login');
    const keyId = await p.healthCheck();
    const e = await p.encrypt(seed(), V2);
    const used = vault.requests.at(-1)!.headers['x-vault-token'] as string;
    for (const t of vault.tokens.keys()) planted.push(Buffer.from(t));
    const n0 = logins();
    // Vault no longer accepts the token (its lease ran out early); lookup-self says so.
    vault.tokens.get(used)!.expiresAt = 0;
    const [k] = await Promise.all([p.healthCheck(), p.decrypt(e.ciphertext, e.keyId, {}, DEC), p.decrypt(e.ciphertext, undefined, {}, DEC)]);
    assert.equal(k, keyId);
    assert.equal(logins(), n0 + 1, 'one login for every call refused with the dead token');
    const fresh = vault.requests.at(-1)!.headers['x-vault-token'] as string;
    assert.notEqual(fresh, used);
    for (const t of vault.tokens.keys()) planted.push(Buffer.from(t));
    // Later calls use the new token without any further login.
    await p.healthCheck();
    assert.equal(logins(), n0 + 1);
  });

  it('Decrypt has one deadline: a slow key read leaves no second timeout for the decrypt (stand-in)', async () => {
    const f = tokenFile(vault.addToken('transit'));
    const a = await provider({ auth: { tokenFile: f } });
    await a.healthCheck();
    const e = await a.encrypt(seed(), V2);
    // A provider that has not read the key yet reads it before it decrypts. Vault answers each in 1.5 s:
    // the read succeeds, and the decrypt has only the 0.5 s left of the one 2 s deadline (not 2 s of its own).
    const b = await provider({ timeout: '2s', attemptTimeout: '2s', auth: { tokenFile: f } });
    vault.slow = { pathPrefix: '/v1/transit/', ms: 1500 };
    const reads = () => vault.count('/v1/transit/keys/');
    const r0 = reads();
    try {
      await assert.rejects(b.decrypt(e.ciphertext, e.keyId, {}, DEC), code('unavailable', /did not answer in time|deadline passed/));
    } finally {
      vault.slow = undefined;
    }
    assert.equal(reads(), r0 + 1, 'the key read was answered: the decrypt is what ran out of time');
    // Each step alone answers within 2 s (1.5 s): only one deadline shared by the read and the decrypt can end it.
    // The Vault is answering quickly again: so does Decrypt.
    assert.equal((await b.decrypt(e.ciphertext, e.keyId, {}, DEC)).keyVersion, e.keyVersion);
  });

  it('AppRole with a wrong secret ID, or one others can read, is refused (stand-in)', async () => {
    const wrong = join(dir, 'wrong-secret-id');
    writeFileSync(wrong, 'not-the-secret-id', { mode: 0o600 });
    const p = await provider({ auth: { approle: { roleId: vault.approle.roleId, secretIdFile: wrong } } });
    await assert.rejects(p.healthCheck(), code('unauthenticated', /Vault refused the AppRole login at auth\/approle: invalid role or secret ID/));
    chmodSync(wrong, 0o640);
    await assert.rejects(provider({ auth: { approle: { roleId: vault.approle.roleId, secretIdFile: wrong } } }), code('config_invalid', /chmod 600/));
  });

  it('Kubernetes login (stand-in): role and service account token; a wrong token is unauthenticated', async () => {
    planted.push(Buffer.from(vault.kubernetes.jwt));
    const jwtFile = join(dir, 'sa-token');
    writeFileSync(jwtFile, vault.kubernetes.jwt, { mode: 0o644 });
    const p = await provider({ auth: { kubernetes: { role: 'kms', jwtFile } } });
    assert.match(await p.healthCheck(), /^vault:/);
    const login = vault.requests.filter((r) => r.path === '/v1/auth/kubernetes/login').at(-1)!;
    assert.deepEqual(login.body, { role: 'kms', jwt: vault.kubernetes.jwt });
    for (const t of vault.tokens.keys()) planted.push(Buffer.from(t));
    const bad = join(dir, 'sa-token-bad');
    writeFileSync(bad, 'eyJnot-this-one');
    const q = await provider({ auth: { kubernetes: { role: 'kms', jwtFile: bad } } });
    await assert.rejects(q.healthCheck(), code('unauthenticated', /Kubernetes login at auth\/kubernetes/));
  });

  it('error answers map to codes; tokens in error texts are scrubbed', () => {
    assert.equal(vaultErrorOf(400, { errors: ['cipher: message authentication failed'] }, '').code, 'integrity');
    assert.equal(vaultErrorOf(400, { errors: ['invalid ciphertext: unable to decrypt'] }, '').code, 'integrity');
    assert.equal(vaultErrorOf(400, { errors: ['ciphertext or signature version is disallowed by policy (too old)'] }, '').code, 'key_disabled');
    assert.equal(vaultErrorOf(400, { errors: ['missing plaintext to encrypt'] }, '').code, 'invalid_argument');
    assert.equal(vaultErrorOf(403, { errors: ['permission denied'] }, '').code, 'unauthenticated');
    assert.equal(vaultErrorOf(404, { errors: [] }, '').code, 'not_found');
    assert.equal(vaultErrorOf(429, { errors: ['rate limit quota exceeded'] }, '').code, 'too_many_attempts');
    assert.equal(vaultErrorOf(503, { errors: ['Vault is sealed'] }, '').code, 'sealed');
    assert.equal(vaultErrorOf(502, undefined, '<html>bad gateway</html>').code, 'unavailable');
    assert.match(vaultErrorOf(502, undefined, '<html>bad gateway</html>').message, /bad gateway.*HTTP 502/);
    const leaked = vaultErrorOf(400, { errors: ['token hvs.CAESIJk8P_ieg60yf9c92rl0S5j1mdMh7docAoHVS2q7UQ8b is bad'] }, '');
    assert.ok(!leaked.message.includes('hvs.CAES'), leaked.message);
  });

  it('parses Vault ciphertexts strictly', () => {
    assert.equal(parseVaultCiphertext(Buffer.from('vault:v12:QUJD')).version, 12);
    for (const bad of ['', 'vault:v0:QUJD', 'vault:v1:', 'vault:v1:QU JD', 'vault:v1:QUJD\n', 'Vault:v1:QUJD', `vault:v99999999999:QUJD`]) {
      assert.throws(() => parseVaultCiphertext(Buffer.from(bad)), (e: unknown) => e instanceof KeyhavenError && e.code === 'invalid_argument', bad);
    }
  });
});
