import BetterSqlite3 from 'better-sqlite3';
import type { AuditAppender } from './kysely-store.js';
import { GENESIS_HASH, type AuditDraft, type AuditLinker, type AppendAuditOptions, type AuditRow } from './store.js';

// Every Encrypt and Decrypt writes an audit record before it is answered, so
// this is the hottest write in keyhaven. Prepared once, run synchronously:
// on the connection kysely already holds (a change's own record, inside its
// transaction), and on the audit writer thread's connection of its own
// (openSqliteAuditConnection, request records), where a durable commit
// fsyncs the write-ahead log (synchronous=FULL) off the event loop.
export function createSqliteAuditAppender(raw: BetterSqlite3.Database, dbPath: string): AuditAppender {
  const last = raw.prepare<[], { seq: number; hash: string }>('select seq, hash from audit order by seq desc limit 1');
  const insert = raw.prepare(
    'insert into audit (seq, time, actor, operation, key_name, key_version, result, request_id, details, prev_hash, hash) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
  );
  const setHead = raw.prepare("insert into meta (name, value) values ('audit_head', ?) on conflict (name) do update set value = excluded.value");
  const begin = raw.prepare('begin immediate');
  const commit = raw.prepare('commit');
  const rollback = raw.prepare('rollback');
  const relax = raw.prepare('pragma synchronous = NORMAL');
  const restore = raw.prepare('pragma synchronous = FULL');

  const append: AuditAppender['inTransaction'] = (drafts, link, opts) => {
    const tail = last.get();
    let prev = tail?.hash ?? GENESIS_HASH;
    let seq = tail?.seq ?? 0;
    const rows: AuditRow[] = [];
    for (const d of drafts) {
      seq += 1;
      const hash = link(prev, seq, d);
      insert.run(seq, d.time, d.actor, d.operation, d.key_name, d.key_version, d.result, d.request_id, d.details, prev, hash);
      rows.push({ ...d, seq, prev_hash: prev, hash });
      prev = hash;
    }
    const lastRow = rows[rows.length - 1];
    if (opts.head && lastRow) setHead.run(opts.head(lastRow));
    return rows;
  };

  return {
    inTransaction: append,
    busy: () => raw.inTransaction,
    file: dbPath,
    standalone(drafts, link, opts) {
      const relaxed = opts.fsync === false;
      // synchronous=NORMAL in WAL mode: the commit reaches the OS (it survives
      // kill -9) without waiting for an fsync; FULL is restored at once.
      if (relaxed) relax.run();
      try {
        begin.run();
        try {
          const rows = append(drafts, link, opts);
          commit.run();
          return rows;
        } catch (e) {
          if (raw.inTransaction) rollback.run();
          throw e;
        }
      } finally {
        if (relaxed) restore.run();
      }
    },
  };
}

/** A connection of its own that appends audit batches, each its own transaction (for a writer thread). */
export interface SqliteAuditConnection {
  /** As Store.appendAudit outside a transaction, synchronously: fsync true commits with synchronous=FULL. */
  append(drafts: readonly AuditDraft[], link: AuditLinker, opts: AppendAuditOptions): AuditRow[];
  close(): void;
}

/** Opens an existing, migrated SQLite store's file for audit appends only. */
export function openSqliteAuditConnection(path: string): SqliteAuditConnection {
  const raw = new BetterSqlite3(path, { fileMustExist: true });
  try {
    // As the store's own connection (sqlite.ts): a lock held elsewhere fails the batch after 2 s.
    raw.pragma('busy_timeout = 2000');
    raw.pragma('synchronous = FULL');
    const appender = createSqliteAuditAppender(raw, path);
    return { append: appender.standalone, close: () => raw.close() };
  } catch (e) {
    raw.close();
    throw e;
  }
}
