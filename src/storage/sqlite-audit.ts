import { open, type FileHandle } from 'node:fs/promises';
import type BetterSqlite3 from 'better-sqlite3';
import type { AuditAppender } from './kysely-store.js';
import { GENESIS_HASH, type AuditRow } from './store.js';

// Every Encrypt and Decrypt writes an audit record before it is answered, so
// this is the hottest write in keyhaven. Prepared once, run synchronously on
// the connection kysely already holds: no query building, no event-loop hops.
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

  // In WAL mode a commit is durable once the -wal file is: synchronous=FULL
  // fsyncs it inside COMMIT (blocking the event loop ~0.2-2 ms); committing
  // with NORMAL and then fsyncing the same file asynchronously gives the same
  // guarantee. A checkpoint that moves frames into the database file syncs
  // both files itself under NORMAL.
  let wal: Promise<FileHandle> | undefined;
  const syncAsync = async (): Promise<void> => {
    wal ??= open(`${dbPath}-wal`, 'r');
    try {
      // fdatasync, as SQLite itself syncs its files on Linux: the data and
      // the size needed to read it back, without the timestamps.
      await (await wal).datasync();
    } catch (e) {
      wal = undefined;
      throw e;
    }
  };

  return {
    inTransaction: append,
    busy: () => raw.inTransaction,
    syncAsync,
    async close() {
      const w = wal;
      wal = undefined;
      if (w) await (await w).close().catch(() => {});
    },
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
