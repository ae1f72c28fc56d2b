import * as assert from 'node:assert/strict';
import { createCipheriv, randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import type { ErrorCode } from '../../errors.js';
import { code } from '../../../test/expect-error.js';
import { encodeKmsV1, openKmsV1, splitKmsV1 } from './kms-v1.js';

const ETCD_KEY = '/registry/secrets/default/db';
const DEK = Buffer.alloc(32, 3);

const expectError = (f: () => unknown, c: ErrorCode, re: RegExp): void => assert.throws(f, code(c, re));

describe('kms-v1', () => {
  it('reads a value built by hand: prefix | uint16 BE DEK length | DEK | nonce | ct | tag (AES-GCM, etcd key as AAD)', () => {
    const nonce = Buffer.alloc(12, 1);
    const c = createCipheriv('aes-256-gcm', DEK, nonce);
    c.setAAD(Buffer.from(ETCD_KEY));
    const ct = Buffer.concat([c.update('v1 secret'), c.final(), c.getAuthTag()]);
    const encDek = Buffer.from('wrapped-dek');
    const value = Buffer.concat([Buffer.from('k8s:enc:kms:v1:legacy:'), Buffer.from([0x00, encDek.length]), encDek, nonce, ct]);
    const s = splitKmsV1(value);
    assert.equal(s.provider, 'legacy');
    assert.deepEqual(s.encryptedDEK, encDek);
    assert.equal(openKmsV1(s.encryptedData, DEK, ETCD_KEY).toString(), 'v1 secret');
  });

  it('reads the pre-1.25 AES-CBC form built by hand (iv | ct, PKCS#7; no authenticated data)', () => {
    const iv = Buffer.alloc(16, 2);
    const c = createCipheriv('aes-256-cbc', DEK, iv);
    const data = Buffer.concat([iv, c.update('old cluster'), c.final()]);
    assert.equal(openKmsV1(data, DEK, ETCD_KEY).toString(), 'old cluster');
    assert.equal(openKmsV1(data, DEK, '/any/other/key').toString(), 'old cluster', 'CBC is not bound to the etcd key, as upstream');
  });

  it('round-trips both modes through encodeKmsV1, with a DEK length above 255', () => {
    const encDek = randomBytes(300);
    for (const mode of ['gcm', 'cbc'] as const) {
      const v = encodeKmsV1('p', encDek, Buffer.from('payload'), DEK, ETCD_KEY, mode);
      assert.deepEqual(v.subarray(17, 19), Buffer.from([0x01, 0x2c]));
      const s = splitKmsV1(v);
      assert.deepEqual(s.encryptedDEK, encDek);
      assert.equal(openKmsV1(s.encryptedData, DEK, ETCD_KEY).toString(), 'payload');
    }
  });

  it('a wrong etcd key or DEK fails, naming both modes and the authenticated data', () => {
    const v = splitKmsV1(encodeKmsV1('p', Buffer.from('d'), Buffer.from('payload'), DEK, ETCD_KEY));
    expectError(() => openKmsV1(v.encryptedData, DEK, '/registry/secrets/x/y'), 'integrity', /AES-GCM.*authenticated data \(etcd key\) "\/registry\/secrets\/x\/y".*AES-CBC/);
    expectError(() => openKmsV1(v.encryptedData, Buffer.alloc(32, 9), ETCD_KEY), 'integrity', /does not decrypt as AES-GCM/);
    expectError(() => openKmsV1(v.encryptedData, Buffer.alloc(10), ETCD_KEY), 'invalid_argument', /AES key is 10 bytes/);
  });

  const cases: [string, Buffer, RegExp][] = [
    ['another prefix', Buffer.from('k8s:enc:kms:v2:p:xx'), /does not start with "k8s:enc:kms:v1:"/],
    ['no colon after the provider', Buffer.from('k8s:enc:kms:v1:p'), /no ':' ending the provider name/],
    ['a truncated length', Buffer.from('k8s:enc:kms:v1:p:\x00'), /truncated: 1 bytes after the prefix/],
    ['a bad DEK length', Buffer.concat([Buffer.from('k8s:enc:kms:v1:p:'), Buffer.from([0x01, 0x00]), Buffer.alloc(10)]), /bad DEK length: 256 bytes announced, 10 present/],
    ['a zero DEK length', Buffer.concat([Buffer.from('k8s:enc:kms:v1:p:'), Buffer.from([0, 0]), Buffer.alloc(40)]), /DEK length of 0/],
    ['no data after the DEK', Buffer.concat([Buffer.from('k8s:enc:kms:v1:p:'), Buffer.from([0, 2, 1, 2])]), /no encrypted data/],
  ];
  for (const [name, value, re] of cases) {
    it(`refuses ${name}`, () => expectError(() => splitKmsV1(value), 'invalid_argument', re));
  }
});
