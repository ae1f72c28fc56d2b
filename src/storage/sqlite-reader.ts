import type BetterSqlite3 from 'better-sqlite3';
import type { AuditRow, Store } from './store.js';

const AUDIT_COLUMNS = 'seq, time, actor, operation, key_name, key_version, result, request_id, details, prev_hash, hash';

/**
 * The three reads that verifying a copy needs (audit pages, meta, barrier
 * entries) over a SQLite handle opened read-only, shaped as a Store for
 * verifyStore and the barrier: offline audit verify and restore-check use it on
 * files they must not change. Nothing else of Store is reachable.
 */
export function sqliteReader(db: BetterSqlite3.Database): Store {
  const page = db.prepare<[number, number], AuditRow>(`select ${AUDIT_COLUMNS} from audit where seq > ? order by seq limit ?`);
  const meta = db.prepare<[string], { value: string }>('select value from meta where name = ?');
  const barrier = db.prepare<[string], { value: Buffer }>('select value from barrier where path = ?');
  const reader: Pick<Store, 'readAudit' | 'getMeta' | 'barrierGet'> = {
    readAudit: async (after, limit) => page.all(after, limit),
    getMeta: async (name) => meta.get(name)?.value,
    barrierGet: async (path) => barrier.get(path)?.value,
  };
  return reader as Store;
}
