import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import type * as P from 'pkcs11js';
import type { ErrorCode } from '../errors.js';
import { requireSoftHsm, failsWithoutSecrets, SOFTHSM_MODULE as MODULE, withTokenSession, useSoftHsmTokens } from '../../test/softhsm.js';
import { pkcs11Seal, type Pkcs11SealOptions } from './pkcs11.js';
import type { SealRecord } from './seal.js';

// Real SoftHSM2 tokens in a temp dir (test/softhsm.ts).

const PIN = 'Pin#4711-token';
const SO_PIN = 'So#8642-officer';
const WRONG_PIN = 'Wrong#9753-pin';
const TOKEN = 'kh-main';
const PIN_TOKEN = 'kh-pin';

const hsm = useSoftHsmTokens('kh-pkcs11-', [TOKEN, PIN_TOKEN], PIN, SO_PIN);

function opts(over: Partial<Pkcs11SealOptions> = {}): Pkcs11SealOptions {
  return { module: MODULE || '/usr/lib/softhsm/libsofthsm2.so', tokenLabel: TOKEN, pin: PIN, keyLabel: 'root-a', ...over };
}

function stored(record: SealRecord): SealRecord {
  return JSON.parse(JSON.stringify(record)) as SealRecord;
}

/** The error has the code and matches the problem, and never shows a PIN or the secret. */
function failsWith(code: ErrorCode, problem: RegExp, secret?: Buffer): (e: unknown) => true {
  return failsWithoutSecrets(code, problem, [PIN, SO_PIN, WRONG_PIN], secret);
}

/**
 * Direct access to a token, for checks the seal must not offer. Only while
 * no seal holds the module: C_Initialize is per process.
 */
const withToken = withTokenSession;

function keysLabelled(a: typeof P, lib: P.PKCS11, session: Buffer, label: string): Buffer[] {
  lib.C_FindObjectsInit(session, [
    { type: a.CKA_CLASS, value: a.CKO_SECRET_KEY },
    { type: a.CKA_LABEL, value: label },
  ]);
  try {
    return lib.C_FindObjects(session, 10);
  } finally {
    lib.C_FindObjectsFinal(session);
  }
}

function pinCountLow(label: string): boolean {
  return withToken(label, undefined, (a, lib, _s, slot) => (lib.C_GetTokenInfo(slot).flags & a.CKF_USER_PIN_COUNT_LOW) !== 0);
}

function flipBase64(b64: string, byte: number): string {
  const b = Buffer.from(b64, 'base64');
  b[byte] = b[byte]! ^ 0x01;
  return b.toString('base64');
}

describe('seal/pkcs11 (SoftHSM2)', () => {
  it('initialize wraps a new root key in the token; unseal gives it back', async (t) => {
    if (!requireSoftHsm(t)) return;
    const seal = pkcs11Seal(opts());
    assert.equal(seal.kind, 'pkcs11');
    assert.equal(seal.needsShares, false);
    try {
      const { rootKey, record, shares } = await seal.initialize({});
      assert.equal(rootKey.length, 32);
      assert.equal(shares, undefined);
      assert.deepEqual(Object.keys(record).sort(), ['iv', 'keyLabel', 'kind', 'mechanism', 'wrapped']);
      const r = record as SealRecord & { keyLabel: string; mechanism: string; iv: string; wrapped: string };
      assert.equal(r.kind, 'pkcs11');
      assert.equal(r.keyLabel, 'root-a');
      assert.equal(r.mechanism, 'CKM_AES_GCM');
      assert.equal(Buffer.from(r.iv, 'base64').length, 12);
      assert.equal(Buffer.from(r.wrapped, 'base64').length, 48);
      const json = JSON.stringify(record);
      for (const f of [rootKey.toString('hex'), rootKey.toString('base64'), rootKey.subarray(0, 6).toString('base64'), PIN]) assert.ok(!json.includes(f));
      assert.ok(!Buffer.from(r.wrapped, 'base64').includes(rootKey.subarray(0, 8)), 'the wrapped blob is not the key');
      assert.deepEqual(await seal.unseal(stored(record)), rootKey);
      assert.deepEqual(await seal.unseal(stored(record), ['ignored']), rootKey);
    } finally {
      await seal.close();
    }
  });

  it('a fresh seal instance (a restart) unseals; a second initialize reuses the one HSM key', async (t) => {
    if (!requireSoftHsm(t)) return;
    const first = pkcs11Seal(opts({ keyLabel: 'root-restart' }));
    const a = await first.initialize({});
    const b = await first.initialize({});
    await first.close();
    assert.notDeepEqual(a.rootKey, b.rootKey);
    assert.equal(withToken(TOKEN, PIN, (x, lib, s) => keysLabelled(x, lib, s, 'root-restart').length), 1);

    const second = pkcs11Seal(opts({ keyLabel: 'root-restart' }));
    try {
      assert.deepEqual(await second.unseal(stored(a.record)), a.rootKey);
      assert.deepEqual(await second.unseal(stored(b.record)), b.rootKey);
    } finally {
      await second.close();
    }
    // close() finalized the module: a direct C_Initialize works again.
    withToken(TOKEN, undefined, () => undefined);
  });

  it('the wrapping key is a sensitive, non-extractable, private token key: its value cannot be read or wrapped out', async (t) => {
    if (!requireSoftHsm(t)) return;
    const seal = pkcs11Seal(opts({ keyLabel: 'root-locked' }));
    await seal.initialize({});
    await seal.close();
    withToken(TOKEN, PIN, (a, lib, s) => {
      const [key, more] = keysLabelled(a, lib, s, 'root-locked');
      assert.ok(key);
      assert.equal(more, undefined);
      const attrs = lib.C_GetAttributeValue(s, key, [
        { type: a.CKA_EXTRACTABLE },
        { type: a.CKA_SENSITIVE },
        { type: a.CKA_TOKEN },
        { type: a.CKA_PRIVATE },
        { type: a.CKA_NEVER_EXTRACTABLE },
        { type: a.CKA_VALUE_LEN },
      ]);
      const v = attrs.map((x) => x.value as Buffer);
      assert.equal(v[0]![0], 0, 'CKA_EXTRACTABLE false');
      assert.equal(v[1]![0], 1, 'CKA_SENSITIVE true');
      assert.equal(v[2]![0], 1, 'CKA_TOKEN true');
      assert.equal(v[3]![0], 1, 'CKA_PRIVATE true');
      assert.equal(v[4]![0], 1, 'CKA_NEVER_EXTRACTABLE true');
      assert.equal(v[5]!.readUInt32LE(0), 32);
      assert.throws(() => lib.C_GetAttributeValue(s, key, [{ type: a.CKA_VALUE }]), /CKR_ATTRIBUTE_SENSITIVE/);
      const wrapper = lib.C_GenerateKey(s, { mechanism: a.CKM_AES_KEY_GEN }, [
        { type: a.CKA_CLASS, value: a.CKO_SECRET_KEY },
        { type: a.CKA_KEY_TYPE, value: a.CKK_AES },
        { type: a.CKA_VALUE_LEN, value: 32 },
        { type: a.CKA_TOKEN, value: false },
        { type: a.CKA_WRAP, value: true },
      ]);
      assert.throws(() => lib.C_WrapKey(s, { mechanism: a.CKM_AES_KEY_WRAP_PAD }, wrapper, key, Buffer.alloc(64)), /CKR_KEY_UNEXTRACTABLE/);
    });
  });

  it('refuses to adopt an existing key that can be exported', async (t) => {
    if (!requireSoftHsm(t)) return;
    withToken(TOKEN, PIN, (a, lib, s) => {
      lib.C_GenerateKey(s, { mechanism: a.CKM_AES_KEY_GEN }, [
        { type: a.CKA_CLASS, value: a.CKO_SECRET_KEY },
        { type: a.CKA_KEY_TYPE, value: a.CKK_AES },
        { type: a.CKA_VALUE_LEN, value: 32 },
        { type: a.CKA_TOKEN, value: true },
        { type: a.CKA_PRIVATE, value: true },
        { type: a.CKA_SENSITIVE, value: false },
        { type: a.CKA_EXTRACTABLE, value: true },
        { type: a.CKA_ENCRYPT, value: true },
        { type: a.CKA_DECRYPT, value: true },
        { type: a.CKA_LABEL, value: 'weak' },
      ]);
    });
    const seal = pkcs11Seal(opts({ keyLabel: 'weak' }));
    try {
      await assert.rejects(seal.initialize({}), failsWith('config_invalid', /key "weak" on token "kh-main" can be exported.*non-extractable/));
    } finally {
      await seal.close();
    }
  });

  it('a wrong PIN is reported once and never tried again (the token sees no second login)', async (t) => {
    if (!requireSoftHsm(t)) return;
    const good = pkcs11Seal(opts({ tokenLabel: PIN_TOKEN }));
    const { rootKey, record } = await good.initialize({});
    await good.close();
    assert.equal(pinCountLow(PIN_TOKEN), false);

    const bad = pkcs11Seal(opts({ tokenLabel: PIN_TOKEN, pin: WRONG_PIN }));
    await assert.rejects(
      bad.unseal(stored(record)),
      failsWith('config_invalid', /^the HSM refused the PIN for token "kh-pin" \(wrong PIN; not retried, to avoid locking the token\)/, rootKey),
    );
    // SoftHSM2 flags a failed login on the token and clears the flag on the next good one.
    assert.equal(pinCountLow(PIN_TOKEN), true, 'the wrong PIN reached the token');
    withToken(PIN_TOKEN, PIN, () => undefined);
    assert.equal(pinCountLow(PIN_TOKEN), false);

    const again = /refused the PIN for token "kh-pin" earlier; not trying again, to avoid locking the token/;
    await assert.rejects(bad.unseal(stored(record)), failsWith('config_invalid', again));
    await assert.rejects(bad.initialize({}), failsWith('config_invalid', again));
    assert.equal(pinCountLow(PIN_TOKEN), false, 'no further login was attempted');
    await bad.close();

    const fixed = pkcs11Seal(opts({ tokenLabel: PIN_TOKEN }));
    try {
      assert.deepEqual(await fixed.unseal(stored(record)), rootKey);
    } finally {
      await fixed.close();
    }
  });

  it('an unknown token label is a config_invalid naming the tokens found', async (t) => {
    if (!requireSoftHsm(t)) return;
    const seal = pkcs11Seal(opts({ tokenLabel: 'no-such-token' }));
    await assert.rejects(seal.initialize({}), failsWith('config_invalid', /^no token labelled "no-such-token" in PKCS#11 module .*libsofthsm2\.so \(tokens found: .*"kh-main" \(slot \d+\)/));
    await seal.close();
  });

  it('finds the token by slot number, and refuses a slot without a token or with another label', async (t) => {
    if (!requireSoftHsm(t)) return;
    const slot = withToken(TOKEN, undefined, (_a, _l, _s, h) => Number(h.readBigUInt64LE(0)));
    const init = pkcs11Seal(opts({ keyLabel: 'root-slot' }));
    const { rootKey, record } = await init.initialize({});
    await init.close();
    const bySlot = pkcs11Seal(opts({ tokenLabel: undefined, slot, keyLabel: 'root-slot' }));
    try {
      assert.deepEqual(await bySlot.unseal(stored(record)), rootKey);
    } finally {
      await bySlot.close();
    }
    const wrongLabel = pkcs11Seal(opts({ tokenLabel: PIN_TOKEN, slot, keyLabel: 'root-slot' }));
    await assert.rejects(wrongLabel.unseal(stored(record)), failsWith('config_invalid', /the token in slot \d+ is labelled "kh-main", not "kh-pin"/));
    const noSlot = pkcs11Seal(opts({ tokenLabel: undefined, slot: 4242, keyLabel: 'root-slot' }));
    await assert.rejects(noSlot.unseal(stored(record)), failsWith('config_invalid', /has no initialized token in slot 4242/));
  });

  it('a missing module, or a file that is not one, is a config_invalid naming the path', async (t) => {
    if (!requireSoftHsm(t)) return;
    await assert.rejects(pkcs11Seal(opts({ module: '/nonexistent/libnothing.so' })).initialize({}), failsWith('config_invalid', /^PKCS#11 module \/nonexistent\/libnothing\.so does not exist$/));
    const notLib = join(hsm.dir, 'softhsm2.conf');
    await assert.rejects(pkcs11Seal(opts({ module: notLib })).unseal({ kind: 'pkcs11', keyLabel: 'root-a', mechanism: 'CKM_AES_GCM', iv: Buffer.alloc(12).toString('base64'), wrapped: Buffer.alloc(48).toString('base64') }), failsWith('config_invalid', /^cannot load PKCS#11 module .*softhsm2\.conf/));
  });

  it('refuses incomplete options at once', () => {
    const cases: [Partial<Pkcs11SealOptions>, RegExp][] = [
      [{ pin: '' }, /PIN is missing/],
      [{ keyLabel: '' }, /key label is missing/],
      [{ module: '' }, /module path is missing/],
      [{ tokenLabel: undefined }, /name the token by label or by slot number/],
      [{ slot: -1 }, /slot must be a non-negative whole number/],
    ];
    for (const [over, problem] of cases) assert.throws(() => pkcs11Seal(opts(over)), failsWith('config_invalid', problem));
  });

  it('a missing key at unseal, or a record for another key label, is a config_invalid', async (t) => {
    if (!requireSoftHsm(t)) return;
    const init = pkcs11Seal(opts());
    const { record } = await init.initialize({});
    await init.close();
    const ghost = pkcs11Seal(opts({ keyLabel: 'ghost' }));
    try {
      await assert.rejects(ghost.unseal({ ...stored(record), keyLabel: 'ghost' }), failsWith('config_invalid', /^no AES key labelled "ghost" on token "kh-main": the root key was wrapped with it/));
      await assert.rejects(ghost.unseal(stored(record)), failsWith('config_invalid', /wrapped with key "root-a", but the configuration names key "ghost"/));
      await assert.rejects(ghost.unseal({ kind: 'keyfile' }), failsWith('config_invalid', /kind "keyfile".*configured seal is pkcs11/));
      await assert.rejects(ghost.unseal({ ...stored(record), keyLabel: 'ghost', mechanism: 'CKM_AES_CBC' }), failsWith('config_invalid', /mechanism "CKM_AES_CBC"/));
    } finally {
      await ghost.close();
    }
  });

  it('a tampered or swapped wrapped blob is refused with integrity, and the seal still works after', async (t) => {
    if (!requireSoftHsm(t)) return;
    const seal = pkcs11Seal(opts());
    try {
      const { rootKey, record } = await seal.initialize({});
      const r = stored(record) as SealRecord & { iv: string; wrapped: string };
      const refused = /could not decrypt the wrapped root key with key "root-a" \(CKR_[A-Z_]+\): the stored seal record was altered/;
      await assert.rejects(seal.unseal({ ...r, wrapped: flipBase64(r.wrapped, 3) }), failsWith('integrity', refused, rootKey));
      await assert.rejects(seal.unseal({ ...r, wrapped: flipBase64(r.wrapped, 40) }), failsWith('integrity', refused, rootKey));
      await assert.rejects(seal.unseal({ ...r, iv: flipBase64(r.iv, 0) }), failsWith('integrity', refused, rootKey));
      await assert.rejects(seal.unseal({ ...r, wrapped: Buffer.from(r.wrapped, 'base64').subarray(0, 40).toString('base64') }), failsWith('integrity', /damaged: wrapped must be 48 bytes/));
      await assert.rejects(seal.unseal({ ...r, wrapped: `${r.wrapped.slice(0, -2)}!=` }), failsWith('integrity', /damaged: wrapped/));
      await assert.rejects(seal.unseal({ ...r, iv: undefined }), failsWith('integrity', /damaged: iv must be 12 bytes/));

      // A blob wrapped by another key of the same token, relabelled.
      const other = pkcs11Seal(opts({ keyLabel: 'root-b' }));
      const foreign = stored((await other.initialize({})).record);
      await other.close();
      await assert.rejects(seal.unseal({ ...foreign, keyLabel: 'root-a' }), failsWith('integrity', refused, rootKey));

      assert.deepEqual(await seal.unseal(r), rootKey);
    } finally {
      await seal.close();
    }
  });

  it('two seals on one module share it; closing one leaves the other working', async (t) => {
    if (!requireSoftHsm(t)) return;
    const a = pkcs11Seal(opts());
    const b = pkcs11Seal(opts({ tokenLabel: PIN_TOKEN, keyLabel: 'root-shared' }));
    try {
      const ra = await a.initialize({});
      const rb = await b.initialize({});
      await a.close();
      assert.deepEqual(await b.unseal(stored(rb.record)), rb.rootKey);
      assert.deepEqual(await a.unseal(stored(ra.record)), ra.rootKey);
    } finally {
      await a.close();
      await b.close();
    }
    withToken(TOKEN, undefined, () => undefined);
  });
});
