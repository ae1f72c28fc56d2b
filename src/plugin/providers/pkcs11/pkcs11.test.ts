import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmodSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type * as P from 'pkcs11js';
import { parsePluginConfig } from '../../../config/plugin-config.js';
import type { Pkcs11ProviderConfig } from '../../../config/providers/pkcs11.js';
import { KeyhavenError, type ErrorCode } from '../../../errors.js';
import { acquireModule, ckr, releaseModule, trimPadded } from '../../../hsm/pkcs11-token.js';
import { requireSoftHsm, failsWithoutSecrets, SOFTHSM_MODULE as MODULE, useSoftHsmTokens } from '../../../../test/softhsm.js';
import { createPluginMetrics } from '../../metrics.js';
import type { KmsProvider } from '../../provider.js';
import { isTransient } from '../../runtime/error-class.js';
import { createStatusMonitor } from '../../status-monitor.js';
import { MAX_PLAINTEXT_BYTES, OVERHEAD_BYTES } from './pkcs11-envelope.js';
import { buildPkcs11Provider, createPkcs11Provider, type Pkcs11ProviderOptions } from './pkcs11.js';

// The pkcs11 provider on real SoftHSM2 tokens in a temp dir, in this process
// (pkcs11js loads the module in-process, so SOFTHSM2_CONF is set before
// anything loads it). The test reaches the token through the same shared
// module instance the provider uses: C_Initialize is per process.

const PIN = 'Pin#5821-provider';
const SO_PIN = 'So#7314-officer';
const WRONG_PIN = 'Wrong#2468-guess';
const TOKEN = 'kh-prov';
const PIN_TOKEN = 'kh-prov-pin';

const hsm = useSoftHsmTokens('kh-p11prov-', [TOKEN, PIN_TOKEN], PIN, SO_PIN);

/** A session on a token through the shared module instance; logs in when given a PIN (an earlier login of this process counts). */
function withToken<T>(label: string, pin: string | undefined, fn: (a: typeof P, lib: P.PKCS11, session: Buffer, slot: Buffer) => T): T {
  const m = acquireModule(MODULE, 'the test');
  try {
    const slot = m.lib.C_GetSlotList(true).find((s) => trimPadded(m.lib.C_GetTokenInfo(s).label) === label);
    assert.ok(slot, `token ${label} exists`);
    const session = m.lib.C_OpenSession(slot, m.api.CKF_SERIAL_SESSION | m.api.CKF_RW_SESSION);
    try {
      if (pin !== undefined) {
        try {
          m.lib.C_Login(session, m.api.CKU_USER, pin);
        } catch (e) {
          if (ckr(e) !== 'CKR_USER_ALREADY_LOGGED_IN') throw e;
        }
      }
      return fn(m.api, m.lib, session, slot);
    } finally {
      m.lib.C_CloseSession(session);
    }
  } finally {
    releaseModule(m);
  }
}

interface KeySpec {
  id?: Buffer | null;
  bytes?: number;
  sensitive?: boolean;
  extractable?: boolean;
  encrypt?: boolean;
  decrypt?: boolean;
  token?: string;
}

/** Makes an AES key on the token, as an administrator would; returns its CKA_ID. */
function makeKey(label: string, spec: KeySpec = {}): Buffer | null {
  const id = spec.id === undefined ? randomBytes(16) : spec.id;
  withToken(spec.token ?? TOKEN, PIN, (a, lib, s) => {
    lib.C_GenerateKey(s, { mechanism: a.CKM_AES_KEY_GEN }, [
      { type: a.CKA_CLASS, value: a.CKO_SECRET_KEY },
      { type: a.CKA_KEY_TYPE, value: a.CKK_AES },
      { type: a.CKA_VALUE_LEN, value: spec.bytes ?? 32 },
      { type: a.CKA_TOKEN, value: true },
      { type: a.CKA_PRIVATE, value: true },
      { type: a.CKA_SENSITIVE, value: spec.sensitive ?? true },
      { type: a.CKA_EXTRACTABLE, value: spec.extractable ?? false },
      { type: a.CKA_ENCRYPT, value: spec.encrypt ?? true },
      { type: a.CKA_DECRYPT, value: spec.decrypt ?? true },
      { type: a.CKA_LABEL, value: label },
      ...(id ? [{ type: a.CKA_ID, value: id }] : []),
    ]);
  });
  return id;
}

function destroyKey(label: string): void {
  withToken(TOKEN, PIN, (a, lib, s) => {
    lib.C_FindObjectsInit(s, [
      { type: a.CKA_CLASS, value: a.CKO_SECRET_KEY },
      { type: a.CKA_LABEL, value: label },
    ]);
    const found = lib.C_FindObjects(s, 10);
    lib.C_FindObjectsFinal(s);
    assert.equal(found.length, 1, `one key labelled ${label}`);
    lib.C_DestroyObject(s, found[0]!);
  });
}

function tokenSerial(label: string): string {
  return withToken(label, undefined, (_a, lib, _s, slot) => trimPadded(lib.C_GetTokenInfo(slot).serialNumber));
}

function pinCountLow(label: string): boolean {
  return withToken(label, undefined, (a, lib, _s, slot) => (lib.C_GetTokenInfo(slot).flags & a.CKF_USER_PIN_COUNT_LOW) !== 0);
}

function opts(over: Partial<Pkcs11ProviderOptions> = {}): Pkcs11ProviderOptions {
  return { module: MODULE || '/usr/lib/softhsm/libsofthsm2.so', tokenLabel: TOKEN, pin: PIN, keyLabel: 'kek-a', graceMs: 60_000, ...over };
}

/** The error has the code and matches the problem, and never shows a PIN or the secret. */
function failsWith(code: ErrorCode, problem: RegExp, secret?: Buffer): (e: unknown) => true {
  return failsWithoutSecrets(code, problem, [PIN, SO_PIN, WRONG_PIN], secret);
}

/**
 * The token's next `count` C_Decrypt calls fail as a faulty token or link would:
 * one tag byte is flipped on the way in, so SoftHSM2 itself answers
 * CKR_GENERAL_ERROR for a ciphertext that is fine. Patched on the module
 * instance the provider shares; records the session of every C_Decrypt.
 */
function faultyDecrypt(count: number, onFault?: () => void): { left(): number; sessions: Buffer[]; restore(): void } {
  const m = acquireModule(MODULE, 'the test');
  const lib = m.lib as unknown as { C_Decrypt: (s: Buffer, data: Buffer, out: Buffer) => Buffer };
  const real = lib.C_Decrypt;
  // pkcs11js may set its wrapped methods on the instance: put back exactly what was there.
  const own = Object.getOwnPropertyDescriptor(lib, 'C_Decrypt');
  let left = count;
  const sessions: Buffer[] = [];
  lib.C_Decrypt = function (this: unknown, s: Buffer, data: Buffer, out: Buffer) {
    sessions.push(Buffer.from(s));
    if (left <= 0) return real.call(this, s, data, out);
    left -= 1;
    onFault?.();
    const bad = Buffer.from(data);
    bad[bad.length - 1]! ^= 0x01;
    return real.call(this, s, bad, out);
  };
  return {
    left: () => left,
    sessions,
    restore() {
      if (own) Object.defineProperty(lib, 'C_Decrypt', own);
      else delete (lib as { C_Decrypt?: unknown }).C_Decrypt;
      releaseModule(m);
    },
  };
}

/**
 * The token's next `count` calls of `method` fail as a token that went away
 * would (CKR_DEVICE_ERROR), on the module instance the provider shares;
 * counts every call.
 */
function deviceError(method: 'C_Encrypt', count: number, onFault?: () => void): { calls(): number; restore(): void } {
  const m = acquireModule(MODULE, 'the test');
  const lib = m.lib as unknown as Record<string, (...args: unknown[]) => unknown>;
  const real = lib[method]!;
  const own = Object.getOwnPropertyDescriptor(lib, method);
  let left = count;
  let calls = 0;
  lib[method] = function (this: unknown, ...args: unknown[]) {
    calls += 1;
    if (left <= 0) return real.apply(this, args);
    left -= 1;
    onFault?.();
    throw new Error('CKR_DEVICE_ERROR: injected by the test');
  };
  return {
    calls: () => calls,
    restore() {
      if (own) Object.defineProperty(lib, method, own);
      else delete lib[method];
      releaseModule(m);
    },
  };
}

const ENC = { uid: 'u-enc', annotations: true };
const DEC = { uid: 'u-dec' };

async function using<T>(p: KmsProvider, fn: (p: KmsProvider) => Promise<T>): Promise<T> {
  try {
    return await fn(p);
  } finally {
    await p.close();
  }
}

describe('plugin/providers/pkcs11 (SoftHSM2)', () => {
  it('wraps a seed in the token and unwraps it, with (v2) and without (v1beta1) the key_id; the key_id names token serial and CKA_ID', async (t) => {
    if (!requireSoftHsm(t)) return;
    const id = makeKey('kek-a')!;
    const serial = tokenSerial(TOKEN);
    await using(createPkcs11Provider(opts()), async (p) => {
      assert.equal(p.kind, 'pkcs11');
      assert.equal(p.maxPlaintextBytes, 1024 - OVERHEAD_BYTES);
      const keyId = await p.healthCheck();
      assert.equal(keyId, `pkcs11:${serial}:${id.toString('hex')}`);
      const seed = randomBytes(32);
      const e = await p.encrypt(seed, ENC);
      assert.equal(e.keyId, keyId);
      assert.equal(e.keyName, 'kek-a');
      assert.equal(e.annotations, undefined);
      assert.equal(e.ciphertext.length, 32 + OVERHEAD_BYTES);
      assert.equal(e.ciphertext[0], 0x11, 'format byte');
      assert.ok(!e.ciphertext.includes(seed.subarray(0, 8)), 'the seed is not in the ciphertext');
      const again = await p.encrypt(seed, ENC);
      assert.notDeepEqual(again.ciphertext, e.ciphertext, 'a fresh IV each time');
      assert.deepEqual((await p.decrypt(e.ciphertext, keyId, {}, DEC)).plaintext, seed);
      const v1 = await p.decrypt(again.ciphertext, undefined, {}, DEC);
      assert.deepEqual(v1.plaintext, seed);
      assert.equal(v1.keyId, keyId);

      // The largest plaintext fills exactly the apiserver's 1024 bytes.
      const big = randomBytes(MAX_PLAINTEXT_BYTES);
      const eb = await p.encrypt(big, ENC);
      assert.equal(eb.ciphertext.length, 1024);
      assert.deepEqual((await p.decrypt(eb.ciphertext, keyId, {}, DEC)).plaintext, big);
      await assert.rejects(p.encrypt(randomBytes(MAX_PLAINTEXT_BYTES + 1), ENC), failsWith('invalid_argument', /plaintext is 988 bytes; the pkcs11 provider takes at most 987/));
      await assert.rejects(p.encrypt(Buffer.alloc(0), ENC), failsWith('invalid_argument', /plaintext is empty/));
    });
    // A restart: the same key_id, and the old ciphertexts open.
    await using(createPkcs11Provider(opts()), async (p) => {
      assert.equal(await p.healthCheck(), `pkcs11:${serial}:${id.toString('hex')}`);
    });
  });

  it('many calls at once each get a whole operation (no session is shared mid-operation)', async (t) => {
    if (!requireSoftHsm(t)) return;
    await using(createPkcs11Provider(opts()), async (p) => {
      const keyId = await p.healthCheck();
      const seeds = Array.from({ length: 200 }, () => randomBytes(32));
      const cts = await Promise.all(seeds.map((s) => p.encrypt(s, ENC)));
      const back = await Promise.all(cts.map((c, i) => (i % 2 ? p.decrypt(c.ciphertext, keyId, {}, DEC) : p.decrypt(c.ciphertext, undefined, {}, DEC))));
      back.forEach((b, i) => assert.deepEqual(b.plaintext, seeds[i]));
    });
  });

  it('rotation: keyLabel on a new key, the old one in previousKeyLabels: a new key_id, old ciphertexts still open; without it they are refused', async (t) => {
    if (!requireSoftHsm(t)) return;
    makeKey('rot-1');
    const old = await using(createPkcs11Provider(opts({ keyLabel: 'rot-1' })), async (p) => {
      const keyId = await p.healthCheck();
      const seed = randomBytes(32);
      return { keyId, seed, ct: (await p.encrypt(seed, ENC)).ciphertext };
    });
    makeKey('rot-2');
    await using(createPkcs11Provider(opts({ keyLabel: 'rot-2', previousKeyLabels: ['rot-1'] })), async (p) => {
      const keyId = await p.healthCheck();
      assert.notEqual(keyId, old.keyId);
      assert.deepEqual((await p.decrypt(old.ct, old.keyId, {}, DEC)).plaintext, old.seed);
      const v1 = await p.decrypt(old.ct, undefined, {}, DEC);
      assert.deepEqual(v1.plaintext, old.seed);
      assert.equal(v1.keyId, old.keyId);
      assert.equal(v1.keyName, 'rot-1');
      assert.equal((await p.encrypt(randomBytes(32), ENC)).keyId, keyId, 'Encrypt uses the new key only');
    });
    await using(createPkcs11Provider(opts({ keyLabel: 'rot-2' })), async (p) => {
      await p.healthCheck();
      await assert.rejects(p.decrypt(old.ct, old.keyId, {}, DEC), failsWith('unknown_key_id', /key_id pkcs11:.* is not the key_id of keyLabel "rot-2" or of previousKeyLabels on token "kh-prov"/));
      await assert.rejects(p.decrypt(old.ct, undefined, {}, DEC), failsWith('unknown_key_id', /the key named in the ciphertext header is not the key_id of keyLabel "rot-2"/));
    });
    // An old key that is gone is reported, and the rest works.
    await using(createPkcs11Provider(opts({ keyLabel: 'rot-2', previousKeyLabels: ['rot-gone'] })), async (p) => {
      await p.healthCheck();
      await assert.rejects(p.decrypt(old.ct, undefined, {}, DEC), failsWith('unknown_key_id', /previousKeyLabels not usable now: "rot-gone"/));
    });
  });

  it('bad input gets a precise error and the provider keeps working', async (t) => {
    if (!requireSoftHsm(t)) return;
    makeKey('other');
    await using(createPkcs11Provider(opts({ previousKeyLabels: ['other'] })), async (p) => {
      const keyId = await p.healthCheck();
      const seed = randomBytes(32);
      const ct = (await p.encrypt(seed, ENC)).ciphertext;
      const flip = (i: number) => {
        const c = Buffer.from(ct);
        c[i] = c[i]! ^ 0x01;
        return c;
      };
      const altered = /could not decrypt the ciphertext with key "kek-a" \(CKR_[A-Z_]+\): it was altered, or it was not made with this key/;
      for (const i of [9, 15, 21, 40, ct.length - 1]) {
        await assert.rejects(p.decrypt(flip(i), keyId, {}, DEC), failsWith('integrity', altered, seed), `byte ${i}`);
        await assert.rejects(p.decrypt(flip(i), undefined, {}, DEC), failsWith('integrity', altered, seed), `byte ${i} (v1beta1)`);
      }
      // The key ref in the header: with the key_id the mismatch is seen before the token; without it, no key matches.
      await assert.rejects(p.decrypt(flip(3), keyId, {}, DEC), failsWith('invalid_argument', /ciphertext does not belong to key_id pkcs11:.*: its header names another key/));
      await assert.rejects(p.decrypt(flip(3), undefined, {}, DEC), failsWith('unknown_key_id', /the key named in the ciphertext header/));
      await assert.rejects(p.decrypt(flip(0), keyId, {}, DEC), failsWith('invalid_argument', /unknown format byte 0x10; it was not made by keyhaven's pkcs11 provider/));
      await assert.rejects(p.decrypt(ct.subarray(0, OVERHEAD_BYTES), keyId, {}, DEC), failsWith('invalid_argument', /ciphertext is 37 bytes; a pkcs11 provider ciphertext has at least 38/));
      await assert.rejects(p.decrypt(Buffer.alloc(0), keyId, {}, DEC), failsWith('invalid_argument', /ciphertext is empty/));
      await assert.rejects(p.decrypt(randomBytes(64), undefined, {}, DEC), failsWith('invalid_argument', /unknown format byte|at least/));
      await assert.rejects(p.decrypt(ct, 'pkcs11:nope:00', {}, DEC), failsWith('unknown_key_id', /key_id pkcs11:nope:00 is not the key_id/));
      await assert.rejects(p.decrypt(ct, 'x'.repeat(5000), {}, DEC), failsWith('unknown_key_id', /\(5000 chars\) is not the key_id/));
      // Another configured key's header and key_id, on this key's ciphertext.
      const otherKeyId = (await using(createPkcs11Provider(opts({ keyLabel: 'other' })), async (q) => q.healthCheck()));
      await assert.rejects(p.decrypt(ct, otherKeyId, {}, DEC), failsWith('invalid_argument', /does not belong to key_id/));
      const forged = Buffer.from(ct);
      const otherCt = (
        await using(createPkcs11Provider(opts({ keyLabel: 'other' })), async (q) => {
          await q.healthCheck();
          return q.encrypt(randomBytes(32), ENC);
        })
      ).ciphertext;
      otherCt.copy(forged, 1, 1, 9); // the other key's ref, this key's body
      await assert.rejects(p.decrypt(forged, otherKeyId, {}, DEC), failsWith('integrity', /with key "other" .*it was altered, or it was not made with this key/, seed));

      assert.equal(await p.healthCheck(), keyId);
      assert.deepEqual((await p.decrypt(ct, keyId, {}, DEC)).plaintext, seed);
    });
  });

  it('a token fault (CKR_GENERAL_ERROR for good data): Decrypt tries once more on a new session; a failed health probe is unavailable (grace period) and reconnects', async (t) => {
    if (!requireSoftHsm(t)) return;
    makeKey('kek-fault');
    await using(createPkcs11Provider(opts({ keyLabel: 'kek-fault' })), async (p) => {
      const keyId = await p.healthCheck();
      const seed = randomBytes(32);
      const ct = (await p.encrypt(seed, ENC)).ciphertext;

      // One fault: the second try, on another session, opens it.
      let f = faultyDecrypt(1);
      try {
        assert.deepEqual((await p.decrypt(ct, keyId, {}, DEC)).plaintext, seed);
        assert.deepEqual((await p.decrypt(ct, undefined, {}, DEC)).plaintext, seed);
        assert.equal(f.left(), 0, 'the fault was met');
        assert.equal(f.sessions.length, 3);
        assert.ok(!f.sessions[0]!.equals(f.sessions[1]!), 'the retry ran on another session');
      } finally {
        f.restore();
      }
      // The same answer twice is what altered data looks like: integrity, and the provider keeps working.
      f = faultyDecrypt(2);
      try {
        await assert.rejects(p.decrypt(ct, keyId, {}, DEC), failsWith('integrity', /could not decrypt the ciphertext with key "kek-fault" \(CKR_GENERAL_ERROR\): it was altered/, seed));
        assert.equal(f.left(), 0);
      } finally {
        f.restore();
      }
      assert.deepEqual((await p.decrypt(ct, keyId, {}, DEC)).plaintext, seed);

      // The health probe decrypts the token's own fresh ciphertext: a failure there is the token's,
      // reported as unavailable (transient), never integrity; the connection is made anew.
      f = faultyDecrypt(1);
      try {
        assert.equal(await p.healthCheck(), keyId, 'one fault: the probe on a new connection passes');
        assert.equal(f.left(), 0);
      } finally {
        f.restore();
      }
      const clock = { t: 1_000_000 };
      const monitor = createStatusMonitor(p, { cacheTtlMs: 0, graceMs: 60_000, now: () => clock.t });
      assert.deepEqual(await monitor.check(), { keyId, degraded: false });
      f = faultyDecrypt(2);
      try {
        await assert.rejects(p.healthCheck(), (e: unknown) => {
          failsWith('unavailable', /^token "kh-prov" failed the health probe \(an encrypt and decrypt of its own fresh ciphertext with key "kek-fault"\): .*CKR_GENERAL_ERROR.*; connecting again on the next call$/)(e);
          assert.ok(isTransient((e as KeyhavenError).code));
          return true;
        });
        assert.equal(f.left(), 0);
        f.restore();
        f = faultyDecrypt(2);
        clock.t += 1000;
        assert.deepEqual(await monitor.check(), { keyId, degraded: true }, 'Status keeps the key_id during the grace period');
      } finally {
        f.restore();
      }
      clock.t += 1000;
      assert.deepEqual(await monitor.check(), { keyId, degraded: false });
      assert.deepEqual((await p.decrypt(ct, keyId, {}, DEC)).plaintext, seed);
      assert.equal((await p.encrypt(seed, ENC)).keyId, keyId);
    });
  });

  it('the runtime: Encrypt waits for a probe and rides failing probes for the grace period only; second tries start only before the deadline', async (t) => {
    if (!requireSoftHsm(t)) return;
    makeKey('kek-rt');
    // Real time that the test can move forward: to cross the grace period or a deadline without waiting.
    const jump = { ms: 0 };
    const now = () => Date.now() + jump.ms;
    await using(createPkcs11Provider(opts({ keyLabel: 'kek-rt', graceMs: 60_000, timeoutMs: 2_000, now })), async (p) => {
      await assert.rejects(p.encrypt(randomBytes(32), ENC), failsWith('unavailable', /^the HSM token has not confirmed the key yet$/));
      const keyId = await p.healthCheck();
      const seed = randomBytes(32);
      const ct = (await p.encrypt(seed, ENC)).ciphertext;

      // Probes failing on a token fault: Encrypt goes on until the grace period since the last good probe is over.
      let f = faultyDecrypt(2);
      try {
        await assert.rejects(p.healthCheck(), failsWith('unavailable', /failed the health probe/));
        assert.equal(f.left(), 0);
      } finally {
        f.restore();
      }
      assert.equal((await p.encrypt(seed, ENC)).keyId, keyId, 'within the grace period');
      jump.ms += 61_000;
      await assert.rejects(p.encrypt(seed, ENC), failsWith('unavailable', /^the HSM token has not confirmed the key within the Status grace period$/));
      assert.deepEqual((await p.decrypt(ct, keyId, {}, DEC)).plaintext, seed, 'Decrypt is not gated');
      assert.equal(await p.healthCheck(), keyId);
      assert.equal((await p.encrypt(seed, ENC)).keyId, keyId, 'a good probe opens the gate again');

      // CKR_GENERAL_ERROR on Decrypt once the deadline has passed: no second try, and not called integrity.
      f = faultyDecrypt(1, () => void (jump.ms += 2_001));
      try {
        await assert.rejects(p.decrypt(ct, keyId, {}, DEC), failsWith('unavailable', /\(CKR_GENERAL_ERROR\): it was altered, or it was not made with this key; or a passing token fault: the deadline passed before a second try on a new session could tell$/, seed));
        assert.equal(f.sessions.length, 1, 'no second try');
      } finally {
        f.restore();
      }
      assert.deepEqual((await p.decrypt(ct, keyId, {}, DEC)).plaintext, seed);

      // A connection lost during Encrypt: a new connection and a second try before the deadline, none after it.
      let d = deviceError('C_Encrypt', 1);
      try {
        assert.equal((await p.encrypt(seed, ENC)).keyId, keyId);
        assert.equal(d.calls(), 2, 'tried again on a new connection');
      } finally {
        d.restore();
      }
      d = deviceError('C_Encrypt', 1, () => void (jump.ms += 2_001));
      try {
        await assert.rejects(p.encrypt(seed, ENC), failsWith('unavailable', /^token "kh-prov" could not encrypt with key "kek-rt" \(CKR_DEVICE_ERROR\)$/, seed));
        assert.equal(d.calls(), 1, 'no second try after the deadline');
      } finally {
        d.restore();
      }
      assert.equal((await p.encrypt(seed, ENC)).keyId, keyId);
    });
  });

  it('refuses keys that do not fit: exportable, without CKA_ID, not allowed to encrypt, AES-128, missing, labelled twice', async (t) => {
    if (!requireSoftHsm(t)) return;
    makeKey('weak', { sensitive: false, extractable: true });
    makeKey('no-id', { id: null });
    makeKey('dec-only', { encrypt: false });
    makeKey('aes128', { bytes: 16 });
    makeKey('twice');
    makeKey('twice');
    const cases: [string, ErrorCode, RegExp][] = [
      ['weak', 'config_invalid', /key "weak" on token "kh-prov" can be exported \(CKA_EXTRACTABLE true or CKA_SENSITIVE false\)/],
      ['no-id', 'config_invalid', /key "no-id" on token "kh-prov" has no CKA_ID/],
      ['dec-only', 'permission_denied', /key "dec-only" on token "kh-prov" may not encrypt \(CKA_ENCRYPT is false\)/],
      ['aes128', 'config_invalid', /key "aes128" on token "kh-prov" is AES-128; the pkcs11 provider needs AES-256/],
      ['missing', 'not_found', /no secret key labelled "missing" on token "kh-prov"/],
      ['twice', 'config_invalid', /several keys on token "kh-prov" are labelled "twice"/],
    ];
    for (const [keyLabel, code, problem] of cases) {
      await using(createPkcs11Provider(opts({ keyLabel })), async (p) => {
        await assert.rejects(p.healthCheck(), failsWith(code, problem), keyLabel);
        await assert.rejects(p.encrypt(randomBytes(32), ENC), failsWith(code, problem), keyLabel);
      });
    }
    // Only decrypting old data: an exportable or decrypt-only key is accepted there.
    await using(createPkcs11Provider(opts({ previousKeyLabels: ['weak', 'dec-only'] })), async (p) => {
      await p.healthCheck();
    });
  });

  it('a key deleted under a running provider: Status and Encrypt fail not_found; a new key under the label brings a new key_id', async (t) => {
    if (!requireSoftHsm(t)) return;
    makeKey('doomed');
    await using(createPkcs11Provider(opts({ keyLabel: 'doomed' })), async (p) => {
      const before = await p.healthCheck();
      const seed = randomBytes(32);
      const ct = (await p.encrypt(seed, ENC)).ciphertext;
      destroyKey('doomed');
      await assert.rejects(p.encrypt(randomBytes(32), ENC), failsWith('not_found', /the key is no longer on the token|no secret key labelled "doomed"/));
      await assert.rejects(p.healthCheck(), failsWith('not_found', /no secret key labelled "doomed" on token "kh-prov"/));
      await assert.rejects(p.decrypt(ct, before, {}, DEC), failsWith('not_found', /no secret key labelled "doomed"/));
      makeKey('doomed');
      const after = await p.healthCheck();
      assert.notEqual(after, before, 'another key, another key_id');
      await assert.rejects(p.decrypt(ct, before, {}, DEC), failsWith('unknown_key_id', /is not the key_id of keyLabel "doomed"/));
    });
  });

  it('a wrong PIN is reported once (unauthenticated) and never tried again: the token sees no second login', async (t) => {
    if (!requireSoftHsm(t)) return;
    makeKey('kek-pin', { token: PIN_TOKEN });
    assert.equal(pinCountLow(PIN_TOKEN), false);
    await using(createPkcs11Provider(opts({ tokenLabel: PIN_TOKEN, pin: WRONG_PIN, keyLabel: 'kek-pin' })), async (p) => {
      await assert.rejects(p.healthCheck(), failsWith('unauthenticated', /^the HSM refused the PIN for token "kh-prov-pin" \(wrong PIN; not retried, to avoid locking the token\)/));
      assert.equal(pinCountLow(PIN_TOKEN), true, 'the wrong PIN reached the token');
      withToken(PIN_TOKEN, PIN, () => undefined);
      assert.equal(pinCountLow(PIN_TOKEN), false);
      const again = /refused the PIN for token "kh-prov-pin" earlier; not trying again/;
      await assert.rejects(p.healthCheck(), failsWith('unauthenticated', again));
      await assert.rejects(p.encrypt(randomBytes(32), ENC), failsWith('unauthenticated', again));
      await assert.rejects(p.decrypt(Buffer.concat([Buffer.from([0x11]), randomBytes(60)]), undefined, {}, DEC), failsWith('unauthenticated', again));
      assert.equal(pinCountLow(PIN_TOKEN), false, 'no further login was attempted');
    });
    await using(createPkcs11Provider(opts({ tokenLabel: PIN_TOKEN, keyLabel: 'kek-pin' })), async (p) => {
      assert.match(await p.healthCheck(), /^pkcs11:/);
    });
  });

  it('an unknown token, slot or module is reported precisely', async (t) => {
    if (!requireSoftHsm(t)) return;
    await using(createPkcs11Provider(opts({ tokenLabel: 'no-such-token' })), async (p) => {
      await assert.rejects(p.healthCheck(), failsWith('unavailable', /^no token labelled "no-such-token" in PKCS#11 module .*libsofthsm2\.so \(tokens found: .*"kh-prov" \(slot \d+\)/));
    });
    await using(createPkcs11Provider(opts({ tokenLabel: undefined, slot: 4242 })), async (p) => {
      await assert.rejects(p.healthCheck(), failsWith('unavailable', /has no initialized token in slot 4242/));
    });
    await using(createPkcs11Provider(opts({ module: '/nonexistent/libnothing.so' })), async (p) => {
      await assert.rejects(p.healthCheck(), failsWith('config_invalid', /^PKCS#11 module \/nonexistent\/libnothing\.so does not exist$/));
    });
  });

  it('config: fields, cross-field checks, PIN file mode and env; the builder refuses a module that does not load', async (t) => {
    const base = { socket: 'unix:///tmp/x.sock', provider: { type: 'pkcs11', module: 'lib.so', tokenLabel: 'tok', pinEnv: 'KH_PIN', keyLabel: 'kek' } };
    const cfg = parsePluginConfig(base, 'test');
    const p = cfg.provider as Pkcs11ProviderConfig;
    assert.equal(p.module, join(process.cwd(), 'lib.so'));
    assert.deepEqual(p.previousKeyLabels, []);
    const bad: [Record<string, unknown>, RegExp][] = [
      [{ pinFile: '/x' }, /set exactly one of pinFile and pinEnv/],
      [{ pinEnv: undefined }, /set exactly one of pinFile and pinEnv/],
      [{ tokenLabel: undefined }, /name the token by tokenLabel/],
      [{ previousKeyLabels: ['kek'] }, /previousKeyLabels: lists keyLabel "kek" itself/],
      [{ previousKeyLabels: ['a', 'a'] }, /lists a label twice/],
      [{ keyLabel: '' }, /keyLabel/],
      [{ pin: '1234' }, /pin/],
      [{ tokenLabel: 'x'.repeat(33) }, /tokenLabel/],
      [{ pinEnv: 'not a name' }, /environment variable name/],
    ];
    for (const [over, problem] of bad) {
      assert.throws(() => parsePluginConfig({ ...base, provider: { ...base.provider, ...over } }, 'test'), (e: unknown) => e instanceof KeyhavenError && e.code === 'config_invalid' && problem.test(e.message), JSON.stringify(over));
    }
    if (!requireSoftHsm(t)) return;
    const ctx = { cfg, logger: undefined as never, metrics: createPluginMetrics() };
    const conf = (over: Partial<Pkcs11ProviderConfig>): Pkcs11ProviderConfig => ({ type: 'pkcs11', module: MODULE, tokenLabel: TOKEN, keyLabel: 'kek-a', previousKeyLabels: [], ...over });
    const pinFile = join(hsm.dir, 'pin');
    writeFileSync(pinFile, `${PIN}\n`, { mode: 0o644 });
    chmodSync(pinFile, 0o644);
    await assert.rejects(buildPkcs11Provider(conf({ pinFile }), ctx), failsWith('config_invalid', /PIN file .* is readable or writable by group or others; chmod 600 it/));
    await assert.rejects(buildPkcs11Provider(conf({ pinFile: join(hsm.dir, 'nope') }), ctx), failsWith('config_invalid', /cannot read the HSM PIN file .*nope: ENOENT/));
    delete process.env.KH_TEST_PIN_UNSET;
    await assert.rejects(buildPkcs11Provider(conf({ pinEnv: 'KH_TEST_PIN_UNSET' }), ctx), failsWith('config_invalid', /environment variable KH_TEST_PIN_UNSET \(provider.pinEnv\) is not set/));
    chmodSync(pinFile, 0o600);
    await assert.rejects(buildPkcs11Provider(conf({ pinFile, module: join(hsm.dir, 'softhsm2.conf') }), ctx), failsWith('config_invalid', /^cannot load PKCS#11 module .*softhsm2\.conf/));
    const logs: unknown[] = [];
    const logger = { info: (o: unknown) => logs.push(o), warn: (o: unknown) => logs.push(o) } as never;
    await using(await buildPkcs11Provider(conf({ pinFile }), { ...ctx, logger }), async (prov) => {
      assert.match(await prov.healthCheck(), /^pkcs11:/);
    });
    process.env.KH_TEST_PIN = PIN;
    await using(await buildPkcs11Provider(conf({ pinEnv: 'KH_TEST_PIN' }), { ...ctx, logger }), async (prov) => {
      assert.match(await prov.healthCheck(), /^pkcs11:/);
    });
    delete process.env.KH_TEST_PIN;
    const text = JSON.stringify(logs);
    assert.match(text, /pkcs11:/);
    assert.ok(!text.includes(PIN), 'no PIN in logs');
  });
});
