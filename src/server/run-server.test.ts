import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { KeyhavenError } from '../errors.js';
import { sealFromConfig } from './run-server.js';
import { ownedTempDir } from '../../test/reaper.js';

describe('seal from config', () => {
  it('refuses an HSM PIN file others can read, without echoing the PIN; accepts it at 0600', () => {
    const dir = ownedTempDir('kh-pin-');
    try {
      const pinFile = join(dir, 'pin');
      writeFileSync(pinFile, '918273\n');
      const cfg = { pkcs11: { module: '/usr/lib/softhsm/libsofthsm2.so', tokenLabel: 't', pinFile, keyLabel: 'k' } };
      chmodSync(pinFile, 0o640);
      assert.throws(
        () => sealFromConfig(cfg),
        (e: unknown) => e instanceof KeyhavenError && e.code === 'config_invalid' && /readable or writable by group or others/.test(e.message) && !e.message.includes('918273'),
      );
      chmodSync(pinFile, 0o600);
      assert.equal(sealFromConfig(cfg).kind, 'pkcs11');
      assert.throws(() => sealFromConfig({ pkcs11: { ...cfg.pkcs11, pinFile: join(dir, 'missing') } }), /cannot read the HSM PIN file/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a PIN from an unset environment variable is a readable error', () => {
    assert.throws(() => sealFromConfig({ pkcs11: { module: '/m.so', tokenLabel: 't', pinEnv: 'KH_TEST_PIN_UNSET', keyLabel: 'k' } }), /KH_TEST_PIN_UNSET .* is not set/);
  });
});
