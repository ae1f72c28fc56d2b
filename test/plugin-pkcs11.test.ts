import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { stringify as toYaml } from 'yaml';
import { call, callError, grpc, httpGet, kmsClients, logLines, removeDir, startPlugin, tempDir, waitFor, type KmsClients, type PluginProcess, waitForFailure } from './helpers.js';
import { initSoftHsm, requireSoftHsm, SOFTHSM_MODULE as MODULE, softhsmAvailable, withTokenSession } from './softhsm.js';
import { byteForms } from './secret-forms.js';

// The KMS plugin's pkcs11 provider end to end: real plugin processes on unix
// sockets, real SoftHSM2 tokens (each test its own SOFTHSM2_CONF and token
// folder; the plugin inherits the variable). The test reaches the tokens
// directly with pkcs11js, as an HSM administrator would, to make, delete and
// pull keys and tokens under a running plugin.

const PIN = 'Pin#3141-e2e-hsm';
const SO_PIN = 'So#2718-e2e-officer';
const WRONG_PIN = 'Wrong#1618-e2e-pin';
const TOKEN = 'kh-e2e';
const STATUS_FAILS = 'Status fails: the apiserver will stop writing with this plugin';

interface EncryptReply {
  ciphertext: Buffer;
  key_id: string;
  annotations: Record<string, Buffer>;
}

interface Plugin {
  proc: PluginProcess;
  kms: KmsClients;
}

describe('plugin pkcs11 provider end to end (SoftHSM2)', () => {
  let work = '';
  const plugins: Plugin[] = [];
  /** Output of every plugin, kept for the secrets scan after they stop. */
  const outputs = new Map<string, () => string>();
  const secrets = new Map<string, Record<string, Buffer>>([
    ['PIN', byteForms(Buffer.from(PIN))],
    ['SO PIN', byteForms(Buffer.from(SO_PIN))],
    ['wrong PIN', byteForms(Buffer.from(WRONG_PIN))],
  ]);
  let seq = 0;

  before(() => {
    if (softhsmAvailable) work = tempDir('kh-p11e2e-');
  });

  after(async () => {
    for (const p of plugins) {
      p.kms.close();
      await p.proc.stop();
    }
    if (work) removeDir(work);
  });

  /** A fresh SoftHSM2 configuration and token folder for one test, with one initialized token; the plugins started next use it. */
  const newHsm = (name: string, tokens: string[] = [TOKEN]): { tokenDir: string } => {
    return { tokenDir: initSoftHsm(join(work, name), tokens, PIN, SO_PIN) };
  };

  /** Direct access to a token of the current HSM, in this process (the plugins are other processes). */
  const withToken = withTokenSession;

  /** An AES-256 key as the docs tell an administrator to make it: sensitive, not extractable, a random CKA_ID. */
  const makeKey = (label: string, token = TOKEN): string => {
    const id = randomBytes(16);
    withToken(token, PIN, (a, lib, s) => {
      lib.C_GenerateKey(s, { mechanism: a.CKM_AES_KEY_GEN }, [
        { type: a.CKA_CLASS, value: a.CKO_SECRET_KEY },
        { type: a.CKA_KEY_TYPE, value: a.CKK_AES },
        { type: a.CKA_VALUE_LEN, value: 32 },
        { type: a.CKA_TOKEN, value: true },
        { type: a.CKA_PRIVATE, value: true },
        { type: a.CKA_SENSITIVE, value: true },
        { type: a.CKA_EXTRACTABLE, value: false },
        { type: a.CKA_ENCRYPT, value: true },
        { type: a.CKA_DECRYPT, value: true },
        { type: a.CKA_LABEL, value: label },
        { type: a.CKA_ID, value: id },
      ]);
    });
    return id.toString('hex');
  };

  const destroyKey = (label: string): void => {
    withToken(TOKEN, PIN, (a, lib, s) => {
      lib.C_FindObjectsInit(s, [{ type: a.CKA_CLASS, value: a.CKO_SECRET_KEY }, { type: a.CKA_LABEL, value: label }]);
      const found = lib.C_FindObjects(s, 10);
      lib.C_FindObjectsFinal(s);
      assert.equal(found.length, 1);
      lib.C_DestroyObject(s, found[0]!);
    });
  };

  const serialOf = (label: string) => withToken(label, undefined, (_a, lib, _s, slot) => lib.C_GetTokenInfo(slot).serialNumber.trim());
  const pinCountLow = (label: string) => withToken(label, undefined, (a, lib, _s, slot) => (lib.C_GetTokenInfo(slot).flags & a.CKF_USER_PIN_COUNT_LOW) !== 0);

  const pinFile = (pin: string): string => {
    const f = join(work, `pin-${++seq}`);
    writeFileSync(f, `${pin}\n`, { mode: 0o600 });
    return f;
  };

  /** Starts a plugin on a pkcs11 provider (log level trace: the secrets scan covers the most output). */
  const start = async (name: string, provider: Record<string, unknown>, extra: Record<string, unknown> = {}): Promise<Plugin> => {
    const config = join(work, `${name}.yaml`);
    writeFileSync(config, toYaml({ provider: { type: 'pkcs11', module: MODULE, tokenLabel: TOKEN, ...provider }, ...extra }), { mode: 0o600 });
    const socket = join(work, `${name}.sock`);
    const proc = await startPlugin({
      dataDir: work,
      socketPath: socket,
      command: ['plugin', '--config', config, '--socket', `unix://${socket}`, '--health-addr', '127.0.0.1:0', '--log-level', 'trace', '--status-cache-ttl', '100ms'],
    });
    const p = { proc, kms: kmsClients(socket) };
    plugins.push(p);
    outputs.set(name, () => proc.output());
    return p;
  };
  const stop = async (p: Plugin) => {
    p.kms.close();
    await p.proc.stop();
  };

  const seed = () => {
    const s = randomBytes(32);
    secrets.set(`seed #${++seq}`, byteForms(s));
    return s;
  };
  const status = (p: Plugin) => call<{ version: string; healthz: string; key_id: string }>(p.kms.v2, 'Status', {});
  const encrypt = (p: Plugin, plaintext: Buffer) => call<EncryptReply>(p.kms.v2, 'Encrypt', { plaintext, uid: `enc-${++seq}` });
  const decrypt = (p: Plugin, e: { ciphertext: Buffer; key_id: string }) => call<{ plaintext: Buffer }>(p.kms.v2, 'Decrypt', { ciphertext: e.ciphertext, uid: `dec-${++seq}`, key_id: e.key_id, annotations: {} });
  const encryptV1 = (p: Plugin, plain: Buffer) => call<{ cipher: Buffer }>(p.kms.v1, 'Encrypt', { version: 'v1beta1', plain });
  const decryptV1 = (p: Plugin, cipher: Buffer) => call<{ plain: Buffer }>(p.kms.v1, 'Decrypt', { version: 'v1beta1', cipher });
  const statusError = (p: Plugin, what: string) => waitForFailure(() => status(p), what);
  const failures = (p: Plugin) => logLines(p.proc.output()).filter((l) => l.msg === STATUS_FAILS).map((l) => l.err as { code: string; message: string });
  const alive = async (p: Plugin) => {
    assert.equal(p.proc.child.exitCode, null, `plugin exited:\n${p.proc.output()}`);
    assert.equal((await call(p.kms.v1, 'Version', { version: 'v1beta1' })).version, 'v1beta1');
  };
  const skip = (t: TestContext) => !requireSoftHsm(t);

  it('round trips on v2 and v1beta1; the key_id names the token key and stays the same across restarts (PIN from a file, then from the environment)', async (t) => {
    if (skip(t)) return;
    newHsm('roundtrip');
    const id = makeKey('kek-1');
    const serial = serialOf(TOKEN);
    const p = await start('roundtrip', { pinFile: pinFile(PIN), keyLabel: 'kek-1' });
    const st = await status(p);
    assert.deepEqual({ version: st.version, healthz: st.healthz }, { version: 'v2', healthz: 'ok' });
    assert.equal(st.key_id, `pkcs11:${serial}:${id}`);
    const s1 = seed();
    const e = await encrypt(p, s1);
    assert.equal(e.key_id, st.key_id);
    assert.ok(e.ciphertext.length > 32 && e.ciphertext.length <= 1024);
    assert.deepEqual(e.annotations, {});
    assert.deepEqual((await decrypt(p, e)).plaintext, s1);
    const s2 = seed();
    const c1 = (await encryptV1(p, s2)).cipher;
    assert.deepEqual((await decryptV1(p, c1)).plain, s2);
    // A seed written by v1beta1 is read by v2 with the key_id, and the other way round.
    assert.deepEqual((await decrypt(p, { ciphertext: c1, key_id: st.key_id })).plaintext, s2);
    assert.deepEqual((await decryptV1(p, e.ciphertext)).plain, s1);
    const metrics = (await httpGet(p.proc.healthPort!, '/metrics')).body;
    assert.ok(metrics.includes(`keyhaven_plugin_key_info{key_id="${st.key_id}",provider="pkcs11"} 1`), metrics);
    assert.ok(logLines(p.proc.output()).some((l) => l.msg === 'pkcs11 token key in use' && l.keyId === st.key_id && l.keyLabel === 'kek-1'));
    await stop(p);

    process.env.KH_E2E_PIN = PIN;
    const again = await start('roundtrip-env', { pinEnv: 'KH_E2E_PIN', keyLabel: 'kek-1' });
    delete process.env.KH_E2E_PIN;
    assert.equal((await status(again)).key_id, st.key_id, 'same key, same key_id after a restart');
    assert.deepEqual((await decrypt(again, e)).plaintext, s1);
    assert.deepEqual((await decryptV1(again, c1)).plain, s2);
    await stop(again);
  });

  it('rotation: a new key in keyLabel, the old one in previousKeyLabels: Status reports a new key_id, old ciphertexts still open; dropping the old label refuses them', async (t) => {
    if (skip(t)) return;
    newHsm('rotation');
    makeKey('kek-2025');
    const p1 = await start('rot-1', { pinFile: pinFile(PIN), keyLabel: 'kek-2025' });
    const oldId = (await status(p1)).key_id;
    const s1 = seed();
    const old = await encrypt(p1, s1);
    const s2 = seed();
    const oldV1 = (await encryptV1(p1, s2)).cipher;
    await stop(p1);

    makeKey('kek-2026');
    const p2 = await start('rot-2', { pinFile: pinFile(PIN), keyLabel: 'kek-2026', previousKeyLabels: ['kek-2025'] });
    const newId = (await status(p2)).key_id;
    assert.notEqual(newId, oldId);
    const s3 = seed();
    const fresh = await encrypt(p2, s3);
    assert.equal(fresh.key_id, newId);
    assert.deepEqual((await decrypt(p2, old)).plaintext, s1);
    assert.deepEqual((await decryptV1(p2, oldV1)).plain, s2);
    assert.deepEqual((await decrypt(p2, fresh)).plaintext, s3);
    await stop(p2);

    // Re-encryption done: the old label goes; its ciphertexts are refused, new ones open.
    const p3 = await start('rot-3', { pinFile: pinFile(PIN), keyLabel: 'kek-2026' });
    assert.equal((await status(p3)).key_id, newId);
    const err = await callError(p3.kms.v2, 'Decrypt', { ciphertext: old.ciphertext, uid: 'old', key_id: old.key_id, annotations: {} });
    assert.equal(err.code, grpc.status.NOT_FOUND, err.details);
    assert.match(err.details, new RegExp(`key_id ${oldId} is not the key_id of keyLabel "kek-2026" or of previousKeyLabels on token "kh-e2e"`));
    const errV1 = await callError(p3.kms.v1, 'Decrypt', { version: 'v1beta1', cipher: oldV1 });
    assert.equal(errV1.code, grpc.status.NOT_FOUND, errV1.details);
    assert.deepEqual((await decrypt(p3, fresh)).plaintext, s3);
    await stop(p3);
  });

  it('bad input (tampered ciphertext, another key\'s header, garbage, unknown key_id) gets a precise error and the plugin keeps serving', async (t) => {
    if (skip(t)) return;
    newHsm('badinput');
    makeKey('kek-a');
    makeKey('kek-b');
    const p = await start('badinput', { pinFile: pinFile(PIN), keyLabel: 'kek-a', previousKeyLabels: ['kek-b'] });
    const keyId = (await status(p)).key_id;
    const s = seed();
    const e = await encrypt(p, s);
    const dec = (ciphertext: Buffer, key_id: string) => callError(p.kms.v2, 'Decrypt', { ciphertext, uid: `bad-${++seq}`, key_id, annotations: {} });

    const tampered = Buffer.from(e.ciphertext);
    tampered[30] = tampered[30]! ^ 0x40;
    let err = await dec(tampered, keyId);
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
    assert.match(err.details, /could not decrypt the ciphertext with key "kek-a" \(CKR_[A-Z_]+\): it was altered, or it was not made with this key/);

    const bKeyId = (await (async () => {
      const q = await start('badinput-b', { pinFile: pinFile(PIN), keyLabel: 'kek-b' });
      const id = (await status(q)).key_id;
      await stop(q);
      return id;
    })());
    err = await dec(e.ciphertext, bKeyId);
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
    assert.match(err.details, /ciphertext does not belong to key_id pkcs11:.*: its header names another key/);

    const swapped = Buffer.from(e.ciphertext);
    swapped[2] = swapped[2]! ^ 0x01;
    err = await callError(p.kms.v1, 'Decrypt', { version: 'v1beta1', cipher: swapped });
    assert.equal(err.code, grpc.status.NOT_FOUND);
    assert.match(err.details, /the key named in the ciphertext header is not the key_id of keyLabel "kek-a"/);

    err = await dec(randomBytes(200), keyId);
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
    err = await dec(Buffer.concat([Buffer.from([0x11]), randomBytes(10)]), keyId);
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
    assert.match(err.details, /ciphertext is 11 bytes; a pkcs11 provider ciphertext has at least 38/);
    err = await dec(e.ciphertext, 'pkcs11:0000:ffff');
    assert.equal(err.code, grpc.status.NOT_FOUND);
    assert.match(err.details, /key_id pkcs11:0000:ffff is not the key_id/);
    err = await callError(p.kms.v2, 'Encrypt', { plaintext: randomBytes(988), uid: 'big' });
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT);

    await alive(p);
    assert.equal((await status(p)).key_id, keyId);
    assert.deepEqual((await decrypt(p, e)).plaintext, s);
    await stop(p);
  });

  it('a key deleted from the token under a running plugin: Status fails NOT_FOUND and says why; a new key under the label brings a new key_id', async (t) => {
    if (skip(t)) return;
    newHsm('deleted');
    makeKey('kek-del');
    const p = await start('deleted', { pinFile: pinFile(PIN), keyLabel: 'kek-del' });
    const before = (await status(p)).key_id;
    const s = seed();
    const e = await encrypt(p, s);
    destroyKey('kek-del');
    const err = await statusError(p, 'Status to fail once the key is gone');
    assert.equal(err.code, grpc.status.NOT_FOUND, err.details);
    assert.match(err.details, /no secret key labelled "kek-del" on token "kh-e2e"/);
    await waitFor(() => failures(p).find((f) => f.code === 'not_found' && /no secret key labelled "kek-del"/.test(f.message)), 'the Status failure in the log');
    const encErr = await callError(p.kms.v2, 'Encrypt', { plaintext: seed(), uid: 'after-delete' });
    assert.equal(encErr.code, grpc.status.NOT_FOUND, encErr.details);
    await alive(p);

    makeKey('kek-del');
    const after = await waitFor(async () => {
      try {
        return (await status(p)).key_id;
      } catch {
        return undefined;
      }
    }, 'Status to answer with the new key');
    assert.notEqual(after, before);
    const derr = await callError(p.kms.v2, 'Decrypt', { ciphertext: e.ciphertext, uid: 'gone', key_id: e.key_id, annotations: {} });
    assert.equal(derr.code, grpc.status.NOT_FOUND, derr.details);
    await stop(p);
  });

  it('a wrong PIN: Status fails UNAUTHENTICATED, the log says so once, and the token sees no second login attempt', async (t) => {
    if (skip(t)) return;
    newHsm('wrongpin');
    makeKey('kek-pin');
    assert.equal(pinCountLow(TOKEN), false);
    const p = await start('wrongpin', { pinFile: pinFile(WRONG_PIN), keyLabel: 'kek-pin' });
    const err = await statusError(p, 'Status to fail on the wrong PIN');
    assert.equal(err.code, grpc.status.UNAUTHENTICATED, err.details);
    assert.match(err.details, /the HSM refused the PIN for token "kh-e2e"/);
    assert.equal(pinCountLow(TOKEN), true, 'the wrong PIN reached the token');
    // A good login clears the token's flag; any later try of the wrong PIN would set it again.
    withToken(TOKEN, PIN, () => undefined);
    assert.equal(pinCountLow(TOKEN), false);

    const refusedAgain = /refused the PIN for token "kh-e2e" earlier; not trying again, to avoid locking the token/;
    await waitFor(async () => {
      await status(p).catch(() => undefined);
      return failures(p).filter((f) => refusedAgain.test(f.message)).length >= 3 || undefined;
    }, 'three more Status failures');
    for (let i = 0; i < 3; i++) {
      const again = await callError(p.kms.v2, 'Encrypt', { plaintext: seed(), uid: `pin-${i}` });
      assert.equal(again.code, grpc.status.UNAUTHENTICATED, again.details);
      assert.match(again.details, refusedAgain);
    }
    assert.equal(pinCountLow(TOKEN), false, 'no further login was attempted');
    const first = failures(p).filter((f) => /\(wrong PIN; not retried, to avoid locking the token\)/.test(f.message));
    assert.equal(first.length, 1, JSON.stringify(failures(p)));
    assert.equal(first[0]!.code, 'unauthenticated');
    await alive(p);
    await stop(p);
  });

  it('the token going away under a running plugin: Status fails UNAVAILABLE, then recovers with the same key_id when the token is back', async (t) => {
    if (skip(t)) return;
    const { tokenDir } = newHsm('away');
    makeKey('kek-away');
    const p = await start('away', { pinFile: pinFile(PIN), keyLabel: 'kek-away' }, { status: { gracePeriod: '1ms' } });
    const keyId = (await status(p)).key_id;
    const s = seed();
    const e = await encrypt(p, s);

    const [folder] = readdirSync(tokenDir);
    assert.ok(folder);
    const aside = join(work, 'away', 'pulled');
    renameSync(join(tokenDir, folder), aside);
    const err = await statusError(p, 'Status to fail with the token gone');
    assert.equal(err.code, grpc.status.UNAVAILABLE, err.details);
    assert.match(err.details, /token "kh-e2e"|no token labelled "kh-e2e"/);
    await alive(p);

    renameSync(aside, join(tokenDir, folder));
    const back = await waitFor(async () => {
      try {
        return (await status(p)).key_id;
      } catch {
        return undefined;
      }
    }, 'Status to answer again with the token back');
    assert.equal(back, keyId);
    assert.deepEqual((await decrypt(p, e)).plaintext, s);
    const s2 = seed();
    assert.deepEqual((await decrypt(p, await encrypt(p, s2))).plaintext, s2);
    await stop(p);
  });

  it('no PIN and no seed in any plugin output at log level trace', async (t) => {
    if (skip(t)) return;
    assert.ok(outputs.size >= 8, `${outputs.size} plugins ran`);
    const found: string[] = [];
    for (const [name, out] of outputs) {
      const hay = Buffer.from(out());
      assert.ok(logLines(out()).length > 0, `${name} logged`);
      for (const [secret, forms] of secrets) for (const [form, needle] of Object.entries(forms)) if (hay.includes(needle)) found.push(`${name}: ${secret} (${form})`);
    }
    assert.ok(secrets.size > 10, `${secrets.size} secrets planted`);
    // The scan covers the most verbose output: per-call lines are there.
    assert.ok([...outputs.values()].some((out) => logLines(out()).some((l) => l.level === 'debug' && l.msg === 'kms call')), 'debug-level lines were logged');
    assert.deepEqual(found, []);
  });
});
