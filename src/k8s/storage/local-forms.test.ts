import * as assert from 'node:assert/strict';
import { createDecipheriv } from 'node:crypto';
import { describe, it } from 'node:test';
import { KeyhavenError } from '../../errors.js';
import { encodeLocal, encodeSecretboxShape, openLocal } from './local-forms.js';
import { classifyValue } from './storage-form.js';

const ETCD_KEY = '/registry/configmaps/default/c';

describe('local forms', () => {
  it('opens the recorded AES-GCM value under an aesgcm prefix (aes_test.go TestGCMLegacyDataCompatibility)', () => {
    const data = Buffer.from('9f27c8fcea8a58c467d8e437dbf2d85955f9b4bd912f4ef967d788a0cb07797dac0a3f0a0845605ca85ac8562b4ae1', 'hex');
    const value = Buffer.concat([Buffer.from('k8s:enc:aesgcm:v1:key1:'), data]);
    const out = openLocal(value, Buffer.from('snorlax_awesomes'), 'bamboo');
    assert.deepEqual({ ...out, plaintext: out.plaintext.toString() }, { kind: 'aesgcm', keyName: 'key1', plaintext: 'pandas are the best' });
  });

  it('aescbc output decrypts by hand: prefix | iv(16) | AES-CBC PKCS#7', () => {
    const key = Buffer.alloc(32, 5);
    const v = encodeLocal('aescbc', 'k1', key, Buffer.from('cbc value'), ETCD_KEY);
    const prefix = Buffer.from('k8s:enc:aescbc:v1:k1:');
    assert.deepEqual(v.subarray(0, prefix.length), prefix);
    const rest = v.subarray(prefix.length);
    const d = createDecipheriv('aes-256-cbc', key, rest.subarray(0, 16));
    assert.equal(Buffer.concat([d.update(rest.subarray(16)), d.final()]).toString(), 'cbc value');
  });

  it('round-trips aesgcm and aescbc, and classifies them', () => {
    for (const kind of ['aesgcm', 'aescbc'] as const) {
      const key = Buffer.alloc(16, 1);
      const v = encodeLocal(kind, 'key-2024', key, Buffer.from('x'), ETCD_KEY);
      assert.equal(openLocal(v, key, ETCD_KEY).plaintext.toString(), 'x');
      assert.deepEqual(classifyValue(v), { kind, keyName: 'key-2024' });
    }
  });

  it('aesgcm is bound to the etcd key', () => {
    const key = Buffer.alloc(32, 1);
    const v = encodeLocal('aesgcm', 'k', key, Buffer.from('x'), ETCD_KEY);
    assert.throws(() => openLocal(v, key, '/other'), (e: unknown) => e instanceof KeyhavenError && e.code === 'integrity' && /authenticated data/.test(e.message));
  });

  it('writes secretbox-shaped values (opaque bytes: node:crypto has no XSalsa20-Poly1305) that classify as secretbox', () => {
    const v = encodeSecretboxShape('box', 10);
    assert.equal(v.length, 'k8s:enc:secretbox:v1:box:'.length + 24 + 16 + 10);
    assert.deepEqual(classifyValue(v), { kind: 'secretbox', keyName: 'box' });
  });

  it('refuses a key name with a colon', () => {
    assert.throws(() => encodeLocal('aesgcm', 'a:b', Buffer.alloc(32), Buffer.from('x'), ETCD_KEY), /key name "a:b"/);
  });
});
