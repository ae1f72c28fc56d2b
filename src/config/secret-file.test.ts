import assert from 'node:assert/strict';
import { chmodSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { KeyhavenError } from '../errors.js';
import { readSecret, readSecretFile } from './secret-file.js';
import { ownedTempDir } from '../../test/reaper.js';

const dir = ownedTempDir('keyhaven-secret-file-');
after(() => rmSync(dir, { recursive: true, force: true }));

function file(name: string, content: string, mode: number): string {
  const p = join(dir, name);
  writeFileSync(p, content);
  chmodSync(p, mode);
  return p;
}

const refused = (re: RegExp) => (e: unknown) => e instanceof KeyhavenError && e.code === 'config_invalid' && re.test(e.message);
const PIN = { what: 'the HSM PIN file' };

describe('readSecretFile', () => {
  it('returns the trimmed value of an owner-only file', () => {
    assert.equal(readSecretFile(file('ok', '  1234\n', 0o600), PIN), '1234');
    assert.equal(readSecretFile(file('ro', 'abcd', 0o400), PIN), 'abcd');
  });

  it('refuses a file group or others can read or write, without its value in the message', () => {
    for (const mode of [0o640, 0o604, 0o620, 0o602]) {
      const p = file(`loose-${mode.toString(8)}`, 'secret-value', mode);
      assert.throws(() => readSecretFile(p, PIN), (e: unknown) => refused(/the HSM PIN file \S+ is readable or writable by group or others; chmod 600 it/)(e) && !(e as Error).message.includes('secret-value'));
    }
  });

  it('refuses an empty file, and one holding only whitespace', () => {
    assert.throws(() => readSecretFile(file('empty', '', 0o600), PIN), refused(/the HSM PIN file \S+empty is empty/));
    assert.throws(() => readSecretFile(file('blank', ' \n\t\n', 0o600), PIN), refused(/is empty/));
  });

  it('refuses a missing file with the reason code', () => {
    assert.throws(() => readSecretFile(join(dir, 'missing'), PIN), refused(/cannot read the HSM PIN file \S+missing: ENOENT/));
  });

  it('names the config field when given', () => {
    assert.throws(() => readSecretFile(file('e2', '', 0o600), { what: 'the metrics token file', field: 'metrics.tokenFile' }), refused(/the metrics token file \S+ \(metrics\.tokenFile\) is empty/));
  });
});

describe('readSecret', () => {
  it('reads the environment variable when named, and refuses an unset or empty one', () => {
    const name = 'KEYHAVEN_SECRET_FILE_TEST';
    process.env[name] = 'from-env';
    try {
      assert.equal(readSecret({ env: name }, { ...PIN, envField: 'provider.pinEnv' }), 'from-env');
      process.env[name] = '';
      assert.throws(() => readSecret({ env: name }, { ...PIN, envField: 'provider.pinEnv' }), refused(/environment variable KEYHAVEN_SECRET_FILE_TEST \(provider\.pinEnv\) is not set/));
    } finally {
      delete process.env[name];
    }
  });

  it('reads the file otherwise', () => {
    assert.equal(readSecret({ file: file('f', 'x\n', 0o600) }, { ...PIN, envField: 'provider.pinEnv' }), 'x');
  });
});
