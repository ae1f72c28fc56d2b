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
