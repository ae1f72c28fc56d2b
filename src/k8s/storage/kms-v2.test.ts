import * as assert from 'node:assert/strict';
import { createCipheriv, createDecipheriv, createHmac, randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import type { ErrorCode } from '../../errors.js';
import { code } from '../../../test/expect-error.js';
import { DEK_SOURCE_TYPE, encodeKmsV2, openKmsV2, sealKmsV2, splitKmsV2, type EncryptedObject } from './kms-v2.js';

const ETCD_KEY = '/registry/secrets/default/db';
const SEED = Buffer.alloc(32, 7);

function obj(o: Partial<EncryptedObject> = {}): EncryptedObject {
  return {
    encryptedData: Buffer.from('data'),
    keyID: 'key-1',
    encryptedDEKSource: Buffer.from('wrapped-seed'),
    annotations: {},
    encryptedDEKSourceType: DEK_SOURCE_TYPE.HKDF_SHA256_XNONCE_AES_GCM_SEED,
    ...o,
  };
}

const expectError = (f: () => unknown, c: ErrorCode, re: RegExp): void => assert.throws(f, code(c, re));

// Hand-rolled protobuf pieces, independent of the code under test.
const ld = (field: number, b: Buffer): Buffer => Buffer.concat([Buffer.from([(field << 3) | 2, b.length]), b]);
const prefix = (p: string): Buffer => Buffer.from(`k8s:enc:kms:v2:${p}:`);

describe('kms-v2 upstream test vectors', () => {
  it('opens the recorded HKDF extended-nonce value (aes_test.go TestExtendedNonceGCMLegacyDataCompatibility)', () => {
    const seed = Buffer.from('5d40323a820ff95561675e3b95e81867c5fdd561d35a88a2d08b08aa9d4fcf5c', 'hex');
    const data = Buffer.from(
      '2442759e33945fbad709db577a0f037fd8a709fc76979b8942209debcecb9d57efe3d6ff6a1ef6ee9a5003b9833b3043cec1e47b35175b151107a8d2416b0e296bbf66b5d102fcefdf9a78f293d271',
      'hex',
    );
    const plain = openKmsV2(obj({ encryptedData: data }), seed, 'bamboo');
    assert.equal(plain.toString(), 'pandas are the best');
  });

  it('opens the recorded AES-GCM value in DEK mode (aes_test.go TestGCMLegacyDataCompatibility)', () => {
    const data = Buffer.from('9f27c8fcea8a58c467d8e437dbf2d85955f9b4bd912f4ef967d788a0cb07797dac0a3f0a0845605ca85ac8562b4ae1', 'hex');
    const o = obj({ encryptedData: data, encryptedDEKSourceType: DEK_SOURCE_TYPE.AES_GCM_KEY });
    assert.equal(openKmsV2(o, Buffer.from('snorlax_awesomes'), 'bamboo').toString(), 'pandas are the best');
  });
});

describe('kms-v2 seed mode, checked against HKDF-Expand + AES-GCM done by hand in the test', () => {
  const handKey = (seed: Buffer, info: Buffer): Buffer => createHmac('sha256', seed).update(Buffer.concat([info, Buffer.from([1])])).digest();

  it('sealKmsV2 output opens by hand: info(32) | nonce(12) | ct | tag, etcd key as AAD', () => {
    const data = sealKmsV2(Buffer.from('hello'), SEED, ETCD_KEY);
    const info = data.subarray(0, 32);
    const rest = data.subarray(32);
    const d = createDecipheriv('aes-256-gcm', handKey(SEED, info), rest.subarray(0, 12));
    d.setAAD(Buffer.from(ETCD_KEY));
    d.setAuthTag(rest.subarray(rest.length - 16));
    assert.equal(Buffer.concat([d.update(rest.subarray(12, rest.length - 16)), d.final()]).toString(), 'hello');
  });

  it('openKmsV2 opens a value built by hand', () => {
    const info = Buffer.alloc(32, 0xab);
    const nonce = Buffer.alloc(12, 0xcd);
    const c = createCipheriv('aes-256-gcm', handKey(SEED, info), nonce);
    c.setAAD(Buffer.from(ETCD_KEY));
    const ct = Buffer.concat([c.update('by hand'), c.final()]);
    const data = Buffer.concat([info, nonce, ct, c.getAuthTag()]);
    assert.equal(openKmsV2(obj({ encryptedData: data }), SEED, ETCD_KEY).toString(), 'by hand');
  });

  it('round-trips in both DEK source modes', () => {
    for (const t of [DEK_SOURCE_TYPE.AES_GCM_KEY, DEK_SOURCE_TYPE.HKDF_SHA256_XNONCE_AES_GCM_SEED]) {
      const key = randomBytes(32);
      const data = sealKmsV2(Buffer.from('x'.repeat(1000)), key, ETCD_KEY, t);
      assert.equal(openKmsV2(obj({ encryptedData: data, encryptedDEKSourceType: t }), key, ETCD_KEY).toString(), 'x'.repeat(1000));
    }
  });

  it('a wrong etcd key fails naming the authenticated-data mismatch', () => {
    const data = sealKmsV2(Buffer.from('s'), SEED, ETCD_KEY);
    expectError(() => openKmsV2(obj({ encryptedData: data }), SEED, '/registry/secrets/default/other'), 'integrity', /authenticated data \(etcd key\) "\/registry\/secrets\/default\/other".*does not match/);
  });

  it('a wrong seed fails authentication', () => {
    const data = sealKmsV2(Buffer.from('s'), SEED, ETCD_KEY);
    expectError(() => openKmsV2(obj({ encryptedData: data }), Buffer.alloc(32, 8), ETCD_KEY), 'integrity', /authentication failed.*key is wrong/);
  });

  it('a short seed, short data and a bad DEK size are refused precisely', () => {
    expectError(() => openKmsV2(obj({ encryptedData: Buffer.alloc(100) }), Buffer.alloc(16), ETCD_KEY), 'invalid_argument', /seed is 16 bytes/);
    expectError(() => openKmsV2(obj({ encryptedData: Buffer.alloc(20) }), SEED, ETCD_KEY), 'invalid_argument', /shorter than the 32-byte HKDF info/);
    expectError(() => openKmsV2(obj({ encryptedData: Buffer.alloc(40) }), SEED, ETCD_KEY), 'invalid_argument', /AES-GCM data is 8 bytes/);
    const gcm = obj({ encryptedData: Buffer.alloc(40), encryptedDEKSourceType: DEK_SOURCE_TYPE.AES_GCM_KEY });
    expectError(() => openKmsV2(gcm, Buffer.alloc(20), ETCD_KEY), 'invalid_argument', /AES key is 20 bytes/);
  });
});

describe('encodeKmsV2 / splitKmsV2', () => {
  it('writes the bytes kube-apiserver writes (built by hand: fields in order, zero type omitted)', () => {
    const o = obj({ annotations: { 'b.example.com': Buffer.from('2'), 'a.example.com': Buffer.from('1') } });
    const entry = (k: string, v: string): Buffer => ld(4, Buffer.concat([ld(1, Buffer.from(k)), ld(2, Buffer.from(v))]));
    const expected = Buffer.concat([
      prefix('kh'),
      ld(1, Buffer.from('data')),
      ld(2, Buffer.from('key-1')),
      ld(3, Buffer.from('wrapped-seed')),
      entry('a.example.com', '1'),
      entry('b.example.com', '2'),
      Buffer.from([0x28, 0x01]),
    ]);
    assert.deepEqual(encodeKmsV2('kh', o), expected);
    const gcmMode = encodeKmsV2('kh', obj({ encryptedDEKSourceType: DEK_SOURCE_TYPE.AES_GCM_KEY }));
    assert.equal(gcmMode.subarray(-2).equals(Buffer.from([0x28, 0x01])), false, 'type 0 is not written');
  });

  it('round-trips', () => {
    const o = obj({ annotations: { 'kek.keyhaven.io': Buffer.from([0, 1, 2]) } });
    const { provider, object } = splitKmsV2(encodeKmsV2('keyhaven', o));
    assert.equal(provider, 'keyhaven');
    assert.deepEqual(object, o);
  });

  it('reads fields in any order and ignores unknown fields, as proto3 does', () => {
    const v = Buffer.concat([prefix('p'), ld(9, Buffer.from('future')), ld(3, Buffer.from('s')), ld(2, Buffer.from('k')), ld(1, Buffer.from('d'))]);
    const { object } = splitKmsV2(v);
    assert.equal(object.keyID, 'k');
    assert.equal(object.encryptedDEKSourceType, DEK_SOURCE_TYPE.AES_GCM_KEY);
  });

  const good = encodeKmsV2('p', obj());
  const cases: [string, Buffer, RegExp][] = [
    ['another prefix', Buffer.from('k8s:enc:kms:v1:p:xx'), /does not start with "k8s:enc:kms:v2:"/],
    ['no colon after the provider', Buffer.from('k8s:enc:kms:v2:provider'), /no ':' ending the provider name/],
    ['truncated protobuf', good.subarray(0, good.length - 3), /provider "p" is not a valid EncryptedObject protobuf message: index out of range/],
    ['missing keyID', Buffer.concat([prefix('p'), ld(1, Buffer.from('d')), ld(3, Buffer.from('s'))]), /keyID is empty/],
    ['empty data', Buffer.concat([prefix('p'), ld(2, Buffer.from('k')), ld(3, Buffer.from('s'))]), /encrypted data is empty/],
    ['empty DEK source', Buffer.concat([prefix('p'), ld(1, Buffer.from('d')), ld(2, Buffer.from('k'))]), /encrypted DEK source is empty/],
    ['unknown source type', Buffer.concat([good, Buffer.from([0x28, 0x02])]), /unknown encryptedDEKSourceType: 2/],
    ['keyID not UTF-8', Buffer.concat([prefix('p'), ld(1, Buffer.from('d')), ld(2, Buffer.from([0xff, 0xfe])), ld(3, Buffer.from('s'))]), /keyID is not valid UTF-8/],
  ];
  for (const [name, value, re] of cases) {
    it(`refuses ${name}`, () => expectError(() => splitKmsV2(value), 'invalid_argument', re));
  }

  it('refuses a key_id over 1 KiB and accepts one of exactly 1 KiB', () => {
    assert.equal(splitKmsV2(encodeKmsV2('p', obj({ keyID: 'k'.repeat(1024) }))).object.keyID.length, 1024);
    expectError(() => encodeKmsV2('p', obj({ keyID: 'k'.repeat(1025) })), 'invalid_argument', /keyID is 1025 bytes, which exceeds the max size of 1024/);
    // A value written by something else, with the long key_id on the wire.
    const wire = Buffer.concat([prefix('p'), ld(1, Buffer.from('d')), Buffer.from([0x12, 0x81, 0x08]), Buffer.alloc(1025, 0x6b), ld(3, Buffer.from('s'))]);
    expectError(() => splitKmsV2(wire), 'invalid_argument', /keyID is 1025 bytes/);
  });

  it('refuses a DEK source over 1 KiB, a non-FQDN annotation key and annotations over 32 KiB', () => {
    expectError(() => encodeKmsV2('p', obj({ encryptedDEKSource: Buffer.alloc(1025) })), 'invalid_argument', /encrypted DEK source is 1025 bytes/);
    expectError(() => encodeKmsV2('p', obj({ annotations: { 'keyhaven.io/kek': Buffer.from('x') } })), 'invalid_argument', /annotation key "keyhaven.io\/kek"/);
    expectError(() => encodeKmsV2('p', obj({ annotations: { keyhaven: Buffer.from('x') } })), 'invalid_argument', /at least two segments/);
    expectError(
      () => encodeKmsV2('p', obj({ annotations: { 'a.example.com': Buffer.alloc(32 * 1024) } })),
      'invalid_argument',
      /total size of annotations is 32781, which exceeds the max size of 32768/,
    );
  });
});
