import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { createAuditLog, type AuditLog } from '../audit/audit-log.js';
import { openBarrier } from '../barrier/barrier.js';
import { deriveKey } from '../crypto/kdf.js';
import { KeyhavenError } from '../errors.js';
import { createKeyFile, readKeyFile } from '../seal/keyfile.js';
import { openSqliteStore } from '../storage/sqlite.js';
import type { Store } from '../storage/store.js';
import { createKeyStore, type KeyStore } from './key-store.js';

export const DB_FILE = 'keyhaven.db';
export const ROOT_KEY_FILE = 'root.key';

export interface EmbeddedStore {
  readonly store: Store;
  readonly keys: KeyStore;
  readonly audit: AuditLog;
  /** Random per store; part of every key_id so ids are never reused across stores. */
  readonly storeId: string;
  readonly dbPath: string;
  close(): Promise<void>;
}

export interface OpenEmbeddedOptions {
  readonly dataDir: string;
  readonly rootKeyFile?: string | undefined;
  /** Create the root key file and database when both are absent. */
  readonly create: boolean;
  /** fsync each batch of request audit records (key changes are always fsynced). */
  readonly auditFsync?: boolean;
}

/** Opens (or creates) the embedded key store: SQLite file + root key file. */
export async function openEmbeddedStore(opts: OpenEmbeddedOptions): Promise<EmbeddedStore> {
  const dbPath = join(opts.dataDir, DB_FILE);
  const rootKeyFile = opts.rootKeyFile ?? join(opts.dataDir, ROOT_KEY_FILE);
  const dbExists = existsSync(dbPath);
  const keyExists = existsSync(rootKeyFile);
  if (!dbExists && !opts.create) {
    throw new KeyhavenError('config_invalid', `no key store at ${opts.dataDir} (run "keyhaven init --data-dir ${opts.dataDir}" first)`);
  }
  if (!keyExists) {
    // A new root key for an existing database would make every key unreadable.
    if (dbExists || !opts.create) throw new KeyhavenError('config_invalid', `root key file ${rootKeyFile} does not exist`);
    createKeyFile(rootKeyFile);
  }
  const rootKey = readKeyFile(rootKeyFile);
  const store = await openSqliteStore({ path: dbPath, create: opts.create });
  try {
    let barrier;
    let headKey;
    // A store opened before has signed its log: a missing head now is a deleted one.
    const signedBefore = (await store.barrierGet('sys/canary')) !== undefined;
    try {
      barrier = await openBarrier(store, rootKey);
      headKey = deriveKey(rootKey, 'keyhaven audit head key v1');
    } finally {
      rootKey.fill(0);
    }
    const storeId = await store.setMetaIfAbsent('store_id', randomBytes(8).toString('hex'));
    const audit = createAuditLog(store, { fsync: opts.auditFsync ?? false });
    // A head that no longer matches the log (records cut) is not re-signed over the damage.
    await audit.adoptHeadKey(headKey, signedBefore);
    const keys = createKeyStore({ store, barrier, audit });
    return {
      store,
      keys,
      audit,
      storeId,
      dbPath,
      async close() {
        await audit.flush();
        await store.close();
      },
    };
  } catch (e) {
    await store.close();
    throw e;
  }
}
