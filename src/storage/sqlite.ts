import { closeSync, mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { Kysely, Migrator, SqliteDialect, sql } from 'kysely';
import { KeyhavenError } from '../errors.js';
import { KyselyStore } from './kysely-store.js';
import { createSqliteAuditAppender } from './sqlite-audit.js';
import { migrationProviderFor } from './migrations.js';
import type { Database } from './schema.js';
import type { Store } from './store.js';

export interface SqliteOptions {
  readonly path: string;
  /** Create the file (mode 0600) if it does not exist. */
  readonly create: boolean;
}

// WAL with synchronous=FULL: a commit is on disk before it returns, so an
// acknowledged write survives kill -9 and power loss alike. Callers batch
// (the audit log group-commits) to keep the fsync count low.
export async function openSqliteStore(opts: SqliteOptions): Promise<Store> {
  if (opts.create) {
    mkdirSync(dirname(opts.path), { recursive: true, mode: 0o700 });
    // Create with 0600 before SQLite does; SQLite gives -wal/-shm the same mode.
    closeSync(openSync(opts.path, 'a', 0o600));
  }
  let raw: BetterSqlite3.Database | undefined;
  try {
    raw = new BetterSqlite3(opts.path, { fileMustExist: !opts.create });
    // better-sqlite3 is synchronous: waiting for another process's write lock
    // blocks the event loop, so wait at most 2 s (within the apiserver's 3 s
    // deadline) and fail the write instead.
    raw.pragma('busy_timeout = 2000');
    raw.pragma('journal_mode = WAL');
    raw.pragma('synchronous = FULL');
    raw.pragma('foreign_keys = ON');
  } catch (e) {
    raw?.close();
    throw new KeyhavenError('config_invalid', `cannot open database ${opts.path}: ${(e as Error).message}`);
  }

  const db = new Kysely<Database>({ dialect: new SqliteDialect({ database: raw }) });
  const migrator = new Migrator({ db, provider: migrationProviderFor('sqlite') });
  const { error } = await migrator.migrateToLatest();
  if (error) {
    await db.destroy();
    throw new KeyhavenError('config_invalid', `database ${opts.path} could not be migrated: ${(error as Error).message}`);
  }

  const appender = createSqliteAuditAppender(raw, opts.path);
  return new KyselyStore(
    db,
    (fn) =>
      db.connection().execute(async (conn) => {
        // IMMEDIATE takes the write lock up front, so two processes (the
        // plugin and a CLI command) never deadlock upgrading a read lock.
        await sql`begin immediate`.execute(conn);
        try {
          const out = await fn(conn);
          await sql`commit`.execute(conn);
          return out;
        } catch (e) {
          await sql`rollback`.execute(conn).catch(() => {});
          throw e;
        }
      }),
    async () => {
      await db.destroy();
    },
    appender,
  );
}
