import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { ownedTempDir } from '../../test/reaper.js';
import { recoverObjects, type RecoveryKeys } from './recover.js';
import type { ScanSource } from './scan.js';

// Recovered Secrets are plaintext: the folder they go into must be the
// caller's alone, also when it existed (empty) before the run.

const secret = Buffer.from(JSON.stringify({ kind: 'Secret', apiVersion: 'v1', metadata: { name: 'db', namespace: 'default' }, data: { password: Buffer.from('hunter2').toString('base64') } }));

const source: ScanSource = {
  label: 'test',
  async *pages() {
    yield [{ key: '/registry/secrets/default/db', value: secret }];
  },
};

const noKeys: RecoveryKeys = {
  unwrapV2: () => Promise.reject(new Error('not used')),
  unwrapV1: () => Promise.reject(new Error('not used')),
};

describe('recover output folder', () => {
  it('an existing empty --out folder open to others is made 0700 (or refused), not written into as is', async (t) => {
    const out = join(ownedTempDir('kh-recover-adv-', t), 'out');
    mkdirSync(out);
    chmodSync(out, 0o755);
    let refused = false;
    try {
      const r = await recoverObjects(source, noKeys, { prefix: '/registry', resources: ['secrets'], outDir: out });
      assert.equal(r.written, 1);
    } catch {
      refused = true;
    }
    if (!refused) {
      const mode = statSync(out).mode & 0o777;
      assert.equal(mode & 0o077, 0, `recovered Secrets were written into a folder of mode ${mode.toString(8)}: their names (namespace/name) are listed to every local user`);
    }
  });
});

describe('recover: one crafted value sharing a seed', () => {
  it('does not fail every genuine value under that seed (the unwrap is keyed by the source alone)', async (t) => {
    const { randomBytes } = await import('node:crypto');
    const { encodeKmsV2, sealKmsV2, DEK_SOURCE_TYPE } = await import('./storage/kms-v2.js');
    const seed = randomBytes(32);
    const wrapped = randomBytes(48);
    const value = (etcdKey: string, keyID: string, plain: Buffer) =>
      encodeKmsV2('keyhaven', { encryptedData: sealKmsV2(plain, seed, etcdKey), keyID, encryptedDEKSource: wrapped, annotations: {}, encryptedDEKSourceType: DEK_SOURCE_TYPE.HKDF_SHA256_XNONCE_AES_GCM_SEED });
    const cmKey = '/registry/configmaps/default/aaa';
    const secretKey = '/registry/secrets/default/db';
    // Someone with write access to etcd copies a genuine value's encryptedDEKSource
    // under a key_id the key server refuses; it sorts (and is read) first.
    const crafted = value(cmKey, 'kh1:forged', Buffer.from('{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"aaa","namespace":"default"}}'));
    const genuine = value(secretKey, 'kh1:good', secret);
    const src: ScanSource = {
      label: 'test',
      async *pages() {
        yield [{ key: cmKey, value: crafted }, { key: secretKey, value: genuine }];
      },
    };
    const keys: RecoveryKeys = {
      unwrapV2: async (keyId) => {
        if (keyId !== 'kh1:good') throw new Error(`unknown key_id ${keyId}`);
        return Buffer.from(seed);
      },
      unwrapV1: () => Promise.reject(new Error('not used')),
    };
    const out = join(ownedTempDir('kh-recover-adv-', t), 'out');
    const r = await recoverObjects(src, keys, { prefix: '/registry', resources: ['secrets', 'configmaps'], outDir: out });
    assert.deepEqual(r.failed.map((f) => f.key), [cmKey], `the genuine Secret was not recovered: ${JSON.stringify(r.failed)}`);
    assert.equal(r.written, 1);
  });
});
