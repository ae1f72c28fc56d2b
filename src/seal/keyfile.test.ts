import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { KeyhavenError, type ErrorCode } from '../errors.js';
import { createKeyFile, keyFileSeal, readKeyFile } from './keyfile.js';
import { ownedTempDir } from '../../test/reaper.js';

let dir: string;
let counter = 0;

before(() => {
  dir = ownedTempDir('kh-keyfile-');
});

after(() => {
  rmSync(dir, { recursive: true, force: true });
});

function freshPath(): string {
  counter += 1;
  return join(dir, `case-${counter}`, 'root.key');
}

function writeKey(path: string, bytes: Buffer, mode: number): void {
  mkdirSync(join(path, '..'), { recursive: true });
  writeFileSync(path, bytes, { mode: 0o600 });
  chmodSync(path, mode); // the umask does not apply to chmod
}

/** The error has the code, names the path, matches the problem, and leaks none of the given bytes. */
function failsWith(code: ErrorCode, path: string, problem: RegExp, secret?: Buffer): (e: unknown) => true {
  return (e: unknown) => {
    assert.ok(e instanceof KeyhavenError, `expected a KeyhavenError, got ${String(e)}`);
    assert.equal(e.code, code, `code: ${e.message}`);
    assert.ok(e.message.includes(path), `message names the path: ${e.message}`);
    assert.match(e.message, problem);
    if (secret && secret.length > 0) assertNoLeak(e.message, secret);
    return true;
  };
}

function assertNoLeak(message: string, secret: Buffer): void {
  const forms = [
    secret.toString('hex'),
    secret.toString('hex').toUpperCase(),
    secret.toString('base64'),
    secret.toString('base64url'),
    // A shorter prefix catches a truncated dump too.
    secret.subarray(0, 6).toString('hex'),
    secret.subarray(0, 6).toString('base64'),
  ];
  for (const f of forms) assert.ok(!message.includes(f), `message leaks key bytes (${f}): ${message}`);
}

describe('seal/keyfile: createKeyFile', () => {
  it('creates a 32-byte file with mode 0600, creating missing folders', () => {
    const path = freshPath();
    assert.equal(existsSync(path), false);
    createKeyFile(path);
    const st = statSync(path);
    assert.ok(st.isFile());
    assert.equal(st.size, 32);
    assert.equal(st.mode & 0o777, 0o600);
    assert.equal(statSync(join(path, '..')).mode & 0o777, 0o700);
  });

  it('writes random bytes: two files differ and are not all zero', () => {
    const a = freshPath();
    const b = freshPath();
    createKeyFile(a);
    createKeyFile(b);
    const ka = readFileSync(a);
    const kb = readFileSync(b);
    assert.notDeepEqual(ka, kb);
    assert.notDeepEqual(ka, Buffer.alloc(32));
  });

  it('refuses to overwrite an existing file, leaving it untouched', () => {
    const path = freshPath();
    createKeyFile(path);
    const before = readFileSync(path);
    assert.throws(() => createKeyFile(path), failsWith('already_exists', path, /already exists/, before));
    assert.deepEqual(readFileSync(path), before);
  });

  it('refuses to overwrite an existing file of any content', () => {
    const path = freshPath();
    writeKey(path, Buffer.from('not a key'), 0o600);
    assert.throws(() => createKeyFile(path), failsWith('already_exists', path, /refusing to overwrite/));
    assert.equal(readFileSync(path, 'utf8'), 'not a key');
  });

  it('the created file reads back through readKeyFile', () => {
    const path = freshPath();
    createKeyFile(path);
    assert.deepEqual(readKeyFile(path), readFileSync(path));
  });
});

describe('seal/keyfile: readKeyFile', () => {
  it('returns the 32 bytes of a valid 0600 file', () => {
    const path = freshPath();
    const key = randomBytes(32);
    writeKey(path, key, 0o600);
    assert.deepEqual(readKeyFile(path), key);
  });

  it('accepts an owner-read-only file (0400)', () => {
    const path = freshPath();
    const key = randomBytes(32);
    writeKey(path, key, 0o400);
    assert.deepEqual(readKeyFile(path), key);
  });

  for (const n of [0, 31, 33, 64]) {
    it(`refuses a ${n}-byte file with config_invalid, naming the path and the size, without leaking bytes`, () => {
      const path = freshPath();
      const bytes = randomBytes(n);
      writeKey(path, bytes, 0o600);
      assert.throws(() => readKeyFile(path), failsWith('config_invalid', path, new RegExp(`exactly 32 bytes, found ${n}\\b`), bytes));
    });
  }

  for (const mode of [0o644, 0o640, 0o604, 0o660]) {
    const m = mode.toString(8).padStart(4, '0');
    it(`refuses mode ${m} with config_invalid, naming the path and the mode, without leaking bytes`, () => {
      const path = freshPath();
      const key = randomBytes(32);
      writeKey(path, key, mode);
      assert.throws(() => readKeyFile(path), failsWith('config_invalid', path, new RegExp(`mode ${m}.*group or others`), key));
    });
  }

  it('refuses a directory', () => {
    const path = freshPath();
    mkdirSync(path, { recursive: true, mode: 0o700 });
    assert.throws(() => readKeyFile(path), failsWith('config_invalid', path, /not a regular file/));
  });

  it('refuses a missing file, saying it does not exist and how to create one', () => {
    const path = freshPath();
    assert.throws(() => readKeyFile(path), failsWith('config_invalid', path, /does not exist.*keyhaven init/));
  });

  it('refuses a path under a regular file with config_invalid naming the path', () => {
    const parent = freshPath();
    writeKey(parent, randomBytes(32), 0o600);
    const path = join(parent, 'root.key');
    assert.throws(() => readKeyFile(path), failsWith('config_invalid', path, /cannot read root key file/));
  });
});

describe('seal/keyfile: keyFileSeal', () => {
  it('is an automatic seal of kind keyfile', () => {
    const seal = keyFileSeal(freshPath());
    assert.equal(seal.kind, 'keyfile');
    assert.equal(seal.needsShares, false);
  });

  it('initialize creates a missing file and returns its key with a record holding nothing secret', async () => {
    const path = freshPath();
    const seal = keyFileSeal(path);
    const { rootKey, record, shares } = await seal.initialize({});
    assert.equal(rootKey.length, 32);
    assert.deepEqual(readFileSync(path), rootKey);
    assert.equal(statSync(path).mode & 0o777, 0o600);
    assert.deepEqual(record, { kind: 'keyfile' });
    assert.equal(shares, undefined);
    assertNoLeak(JSON.stringify(record), rootKey);
  });

  it('initialize adopts an existing file without changing it', async () => {
    const path = freshPath();
    const key = randomBytes(32);
    writeKey(path, key, 0o600);
    const { rootKey } = await keyFileSeal(path).initialize({});
    assert.deepEqual(rootKey, key);
    assert.deepEqual(readFileSync(path), key);
  });

  it('initialize refuses an existing file with a bad mode instead of using it', async () => {
    const path = freshPath();
    const key = randomBytes(32);
    writeKey(path, key, 0o644);
    await assert.rejects(keyFileSeal(path).initialize({}), failsWith('config_invalid', path, /mode 0644/, key));
  });

  it('unseal returns the key initialize made, also from a new seal instance (a restart)', async () => {
    const path = freshPath();
    const { rootKey, record } = await keyFileSeal(path).initialize({});
    const stored = JSON.parse(JSON.stringify(record));
    const seal = keyFileSeal(path);
    assert.deepEqual(await seal.unseal(stored), rootKey);
    // Shares are ignored by automatic seals.
    assert.deepEqual(await seal.unseal(stored, ['anything']), rootKey);
    await seal.close();
  });

  it('unseal rejects with config_invalid for a bad file', async () => {
    const path = freshPath();
    const key = randomBytes(32);
    writeKey(path, key, 0o644);
    await assert.rejects(keyFileSeal(path).unseal({ kind: 'keyfile' }), failsWith('config_invalid', path, /mode 0644/, key));
  });

  it('unseal rejects with config_invalid when the file is gone', async () => {
    const path = freshPath();
    await assert.rejects(keyFileSeal(path).unseal({ kind: 'keyfile' }), failsWith('config_invalid', path, /does not exist/));
  });

  it('unseal refuses a record made by another kind of seal, without reading the file', async () => {
    const path = freshPath();
    await keyFileSeal(path).initialize({});
    await assert.rejects(keyFileSeal(path).unseal({ kind: 'shamir', shares: 1, threshold: 1, digests: [] }), (e: unknown) => {
      assert.ok(e instanceof KeyhavenError);
      assert.equal(e.code, 'config_invalid');
      assert.match(e.message, /kind "shamir".*configured seal is keyfile/);
      return true;
    });
  });
});
