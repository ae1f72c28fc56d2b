import { randomBytes } from 'node:crypto';
import { closeSync, fstatSync, fsyncSync, mkdirSync, openSync, readSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { KeyhavenError } from '../errors.js';
import { KEY_BYTES } from '../crypto/aead.js';
import { requireKind } from './record.js';
import type { InitResult, Seal, SealRecord } from './seal.js';

/** Creates a new root key file: 32 random bytes, mode 0600, never overwrites. */
export function createKeyFile(path: string): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  let fd: number;
  try {
    fd = openSync(path, 'wx', 0o600);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') {
      throw new KeyhavenError('already_exists', `root key file ${path} already exists; refusing to overwrite it`);
    }
    throw new KeyhavenError('config_invalid', `cannot create root key file ${path}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  try {
    writeSync(fd, randomBytes(KEY_BYTES));
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  const dirFd = openSync(dirname(path), 'r');
  try {
    fsyncSync(dirFd);
  } finally {
    closeSync(dirFd);
  }
}

/**
 * Reads the root key file, refusing anything an operator would regret: a
 * missing file, a non-regular file, a file readable or writable by group or
 * others, or one that is not exactly 32 bytes.
 */
export function readKeyFile(path: string): Buffer {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new KeyhavenError('config_invalid', code === 'ENOENT' ? `root key file ${path} does not exist (run "keyhaven init" to create one)` : `cannot read root key file ${path}: ${code ?? 'error'}`);
  }
  try {
    // Checks and reads go through one descriptor: the file checked is the file read.
    return readCheckedKey(fd, path);
  } finally {
    closeSync(fd);
  }
}

function readCheckedKey(fd: number, path: string): Buffer {
  const st = fstatSync(fd);
  if (!st.isFile()) throw new KeyhavenError('config_invalid', `root key file ${path} is not a regular file`);
  const mode = st.mode & 0o777;
  if ((mode & 0o077) !== 0) {
    throw new KeyhavenError(
      'config_invalid',
      `root key file ${path} has mode ${mode.toString(8).padStart(4, '0')}: it must not be accessible by group or others (chmod 600 it)`,
    );
  }
  if (st.size !== KEY_BYTES) {
    throw new KeyhavenError('config_invalid', `root key file ${path} must hold exactly ${KEY_BYTES} bytes, found ${st.size}`);
  }
  const key = Buffer.alloc(KEY_BYTES);
  const n = readSync(fd, key, 0, KEY_BYTES, 0);
  if (n !== KEY_BYTES) {
    throw new KeyhavenError('config_invalid', `root key file ${path} must hold exactly ${KEY_BYTES} bytes, found ${n}`);
  }
  return key;
}

/**
 * The root key is the content of a 0600 file. The record holds nothing: the
 * path comes from the configuration, so moving the file is a config change.
 */
export function keyFileSeal(path: string): Seal {
  return {
    kind: 'keyfile',
    needsShares: false,
    async initialize(): Promise<InitResult> {
      // An existing file is adopted rather than refused: "keyhaven init" may
      // have created it before the store existed.
      try {
        createKeyFile(path);
      } catch (e) {
        if (!(e instanceof KeyhavenError && e.code === 'already_exists')) throw e;
      }
      return { rootKey: readKeyFile(path), record: { kind: 'keyfile' } };
    },
    async unseal(record: SealRecord): Promise<Buffer> {
      requireKind(record, 'keyfile');
      return readKeyFile(path);
    },
    async close(): Promise<void> {},
  };
}
