import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { encodeSecretProtobuf } from './k8s-object.js';
import { encodeKmsV1 } from './kms-v1.js';
import { DEK_SOURCE_TYPE, encodeKmsV2, sealKmsV2 } from './kms-v2.js';
import { encodeLocal, encodeSecretboxShape } from './local-forms.js';
import { classifyValue, type StorageForm } from './storage-form.js';

const ETCD_KEY = '/registry/secrets/default/db';
const SEED = Buffer.alloc(32, 1);
const secret = encodeSecretProtobuf({ namespace: 'default', name: 'db', data: { password: Buffer.from('hunter2') } });

function kmsV2(sourceType: number = DEK_SOURCE_TYPE.HKDF_SHA256_XNONCE_AES_GCM_SEED): Buffer {
  return encodeKmsV2('keyhaven', {
    encryptedData: sealKmsV2(secret, SEED, ETCD_KEY, sourceType),
    keyID: 'kid-7',
    encryptedDEKSource: Buffer.from('wrapped'),
    annotations: { 'kek.keyhaven.io': Buffer.from('k'), 'a.keyhaven.io': Buffer.from('a') },
    encryptedDEKSourceType: sourceType,
  });
}

const valid: [string, Buffer, StorageForm][] = [
  ['protobuf', secret, { kind: 'unencrypted', encoding: 'protobuf' }],
  ['json', Buffer.from('{"kind":"Widget","apiVersion":"example.com/v1"}\n'), { kind: 'unencrypted', encoding: 'json' }],
  ['other bytes', Buffer.from('10.0.0.1'), { kind: 'unencrypted', encoding: 'unknown' }],
  ['aescbc', encodeLocal('aescbc', 'key1', Buffer.alloc(32), secret, ETCD_KEY), { kind: 'aescbc', keyName: 'key1' }],
  ['aesgcm', encodeLocal('aesgcm', 'key2', Buffer.alloc(32), secret, ETCD_KEY), { kind: 'aesgcm', keyName: 'key2' }],
  ['secretbox', encodeSecretboxShape('key3', secret.length), { kind: 'secretbox', keyName: 'key3' }],
  ['kms-v1', encodeKmsV1('old', Buffer.from('dek'), secret, Buffer.alloc(32), ETCD_KEY), { kind: 'kms-v1', provider: 'old' }],
  [
    'kms-v2 seed',
    kmsV2(),
    { kind: 'kms-v2', provider: 'keyhaven', keyId: 'kid-7', dekSourceType: 'hkdf-sha256-xnonce-aes-gcm-seed', annotations: ['a.keyhaven.io', 'kek.keyhaven.io'] },
  ],
  [
    'kms-v2 DEK',
    kmsV2(DEK_SOURCE_TYPE.AES_GCM_KEY),
    { kind: 'kms-v2', provider: 'keyhaven', keyId: 'kid-7', dekSourceType: 'aes-gcm-key', annotations: ['a.keyhaven.io', 'kek.keyhaven.io'] },
  ],
];

describe('classifyValue', () => {
  for (const [name, value, form] of valid) {
    it(`classifies ${name}`, () => assert.deepEqual(classifyValue(value), form));
  }

  const malformed: [string, Buffer, Partial<StorageForm>, RegExp][] = [
    ['a truncated prefix', Buffer.from('k8s:enc:kms:v'), { form: 'truncated-prefix' }, /ends inside the prefix "k8s:enc:kms:v1:"/],
    ['an unknown provider type', Buffer.from('k8s:enc:rot13:v1:k:abc'), { form: 'unknown-prefix' }, /unrecognised encryption prefix "k8s:enc:rot13:v1:"$/],
    ['kms-v2 without provider end', Buffer.from('k8s:enc:kms:v2:keyhaven'), { form: 'kms-v2' }, /no ':' ending the provider name/],
    ['kms-v2 truncated protobuf', kmsV2().subarray(0, 60), { form: 'kms-v2', provider: 'keyhaven' }, /not a valid EncryptedObject protobuf message/],
    ['kms-v2 short data', encodeKmsV2('p', { encryptedData: Buffer.alloc(40), keyID: 'k', encryptedDEKSource: Buffer.from('s'), annotations: {}, encryptedDEKSourceType: 1 }), { form: 'kms-v2', provider: 'p' }, /40 bytes, shorter than the 60/],
    ['kms-v1 bad DEK length', Buffer.concat([Buffer.from('k8s:enc:kms:v1:old:'), Buffer.from([0xff, 0xff]), Buffer.alloc(40)]), { form: 'kms-v1', provider: 'old' }, /bad DEK length: 65535/],
    ['aesgcm too short', Buffer.from('k8s:enc:aesgcm:v1:k:short'), { form: 'aesgcm' }, /key "k": 5 bytes of data, shorter than nonce \+ tag \(28\)/],
    ['aescbc partial block', Buffer.concat([Buffer.from('k8s:enc:aescbc:v1:k:'), Buffer.alloc(40)]), { form: 'aescbc' }, /not whole 16-byte blocks/],
    ['secretbox without key end', Buffer.from('k8s:enc:secretbox:v1:nokey'), { form: 'secretbox' }, /no ':' ends the key name/],
  ];
  for (const [name, value, expected, re] of malformed) {
    it(`reports ${name} as malformed with a precise reason`, () => {
      const f = classifyValue(value);
      assert.equal(f.kind, 'malformed');
      assert.ok(f.kind === 'malformed');
      for (const [k, v] of Object.entries(expected)) assert.equal((f as Record<string, unknown>)[k], v, k);
      assert.match(f.reason, re);
    });
  }

  it('never throws on random bytes or on any truncation of a valid value', () => {
    const kinds = new Set(['unencrypted', 'aescbc', 'aesgcm', 'secretbox', 'kms-v1', 'kms-v2', 'malformed']);
    const inputs: Buffer[] = [];
    for (let i = 0; i < 300; i++) inputs.push(randomBytes(i % 97));
    // Random tails behind every real prefix reach the deeper parsers.
    for (const p of ['k8s:enc:kms:v2:p:', 'k8s:enc:kms:v1:p:', 'k8s:enc:aesgcm:v1:k:', 'k8s\x00']) {
      for (let i = 0; i < 50; i++) inputs.push(Buffer.concat([Buffer.from(p, 'latin1'), randomBytes(i * 3)]));
    }
    for (const [, value] of valid) for (let n = 0; n <= value.length; n += 3) inputs.push(value.subarray(0, n));
    for (const v of inputs) {
      const f = classifyValue(v);
      assert.ok(kinds.has(f.kind), `kind ${f.kind}`);
      if (f.kind === 'malformed') assert.ok(f.reason.length > 0);
    }
    // Every cut of a KMS v2 value after its prefix stays kms-v2: malformed, or (a cut
    // exactly between fields, dropping trailing ones, is valid protobuf) a shorter object.
    const v2 = kmsV2();
    const start = 'k8s:enc:kms:v2:keyhaven:'.length;
    let malformedCuts = 0;
    for (let n = start; n < v2.length; n++) {
      const f = classifyValue(v2.subarray(0, n));
      assert.ok(f.kind === 'kms-v2' || (f.kind === 'malformed' && f.form === 'kms-v2'), `cut at ${n}: ${JSON.stringify(f)}`);
      if (f.kind === 'malformed') malformedCuts++;
    }
    // Only the cuts after the DEK source and after each annotation parse (fields 1-3 are required).
    assert.equal(malformedCuts, v2.length - start - 3);
  });
});
