import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { AuditLog } from '../audit/audit-log.js';
import { KeyhavenError } from '../errors.js';
import { createKeyFile, readKeyFile } from '../seal/keyfile.js';
import { openSqliteStore } from '../storage/sqlite.js';
import type { Store } from '../storage/store.js';
import type { KeyStore } from './key-store.js';
import { openKeyhaven } from './open-keyhaven.js';

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
    // A store opened before has signed its log: a missing head now is a deleted one (openKeyhaven's default).
    const { keys, audit, storeId } = await openKeyhaven({ store, rootKey, auditFsync: opts.auditFsync ?? false }).finally(() => rootKey.fill(0));
    return {
      store,
      keys,
      audit,
      storeId,
      dbPath,
      async close() {
        await audit.close();
        await store.close();
      },
    };
  } catch (e) {
    await store.close();
    throw e;
  }
}
