import { randomBytes } from 'node:crypto';
import { aeadOpen, aeadSeal } from '../crypto/aead.js';
import { deriveKey } from '../crypto/kdf.js';
import { KeyhavenError } from '../errors.js';
import type { Store } from '../storage/store.js';

// Everything secret that reaches storage passes through here, sealed with a
// key derived from the root key; the storage path is the associated data, so
// a sealed value copied to another path no longer opens.
const FORMAT = 0x01;
export const CANARY_PATH = 'sys/canary';

export interface Barrier {
  put(store: Store, path: string, plaintext: Buffer): Promise<void>;
  get(store: Store, path: string): Promise<Buffer | undefined>;
  delete(store: Store, path: string): Promise<void>;
}

function aadFor(path: string): Buffer {
  return Buffer.from(`keyhaven/barrier/v1:${path}`, 'utf8');
}

export async function openBarrier(store: Store, rootKey: Buffer): Promise<Barrier> {
  const key = deriveKey(rootKey, 'keyhaven barrier key v1');
  const barrier: Barrier = {
    async put(s, path, plaintext) {
      await s.barrierPut(path, Buffer.concat([Buffer.from([FORMAT]), aeadSeal(key, plaintext, aadFor(path))]));
    },
    async get(s, path) {
      const sealed = await s.barrierGet(path);
      if (!sealed) return undefined;
      if (sealed[0] !== FORMAT) throw new KeyhavenError('integrity', `stored value at ${path} has an unknown format`);
      return aeadOpen(key, sealed.subarray(1), aadFor(path));
    },
    async delete(s, path) {
      await s.barrierDelete(path);
    },
  };
  // The canary tells a wrong root key apart from a corrupted database at
  // start-up. Read first: only a new store takes the write lock, so a CLI
  // command never holds up a running plugin's writes.
  const check = async (s: Store) => {
    try {
      await barrier.get(s, CANARY_PATH);
    } catch {
      throw new KeyhavenError('config_invalid', 'the root key does not match this database (wrong root key file?)');
    }
  };
  if (await store.barrierGet(CANARY_PATH)) {
    await check(store);
    return barrier;
  }
  await store.transaction(async (tx) => {
    if (await tx.barrierGet(CANARY_PATH)) await check(tx);
    else await barrier.put(tx, CANARY_PATH, randomBytes(16));
  });
  return barrier;
}
