import { sql, type Kysely } from 'kysely';
import type { Database } from './schema.js';
import { GENESIS_HASH, type AppendAuditOptions, type AuditDraft, type AuditLinker, type AuditRow, type KeyRow, type KeyVersionRow, type Store } from './store.js';

/**
 * A dialect's fast path for the audit hot path (one call per request): the
 * same rows, written with prepared statements instead of built queries.
 */
export interface AuditAppender {
  /** Inside a transaction the caller already holds. */
  inTransaction(drafts: readonly AuditDraft[], link: AuditLinker, opts: AppendAuditOptions): AuditRow[];
  /** As its own transaction; the caller holds the connection. */
  standalone(drafts: readonly AuditDraft[], link: AuditLinker, opts: AppendAuditOptions): AuditRow[];
  /** True while a transaction is open on the connection (one started through kysely spans awaits). */
  busy(): boolean;
}

/** Starts an exclusive transaction on a single connection and hands it over. */
export type TransactionRunner = <T>(fn: (trx: Kysely<Database>) => Promise<T>) => Promise<T>;

// One code path for every SQL backend: dialect differences stay in the
// factory that builds the Kysely instance and its transaction runner.
export class KyselyStore implements Store {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly runTransaction: TransactionRunner | undefined,
    private readonly onClose: () => Promise<void> = async () => {},
    private readonly fastAudit?: AuditAppender,
  ) {}

  async getMeta(name: string): Promise<string | undefined> {
    const row = await this.db.selectFrom('meta').select('value').where('name', '=', name).executeTakeFirst();
    return row?.value;
  }

  async setMeta(name: string, value: string): Promise<void> {
    await this.db.insertInto('meta').values({ name, value }).onConflict((oc) => oc.column('name').doUpdateSet({ value })).execute();
  }

  async setMetaIfAbsent(name: string, value: string): Promise<string> {
    const existing = await this.getMeta(name);
    if (existing !== undefined) return existing;
    await this.db.insertInto('meta').values({ name, value }).onConflict((oc) => oc.column('name').doNothing()).execute();
    return (await this.getMeta(name)) ?? value;
  }

  async barrierGet(path: string): Promise<Buffer | undefined> {
    const row = await this.db.selectFrom('barrier').select('value').where('path', '=', path).executeTakeFirst();
    return row ? Buffer.from(row.value) : undefined;
  }

  async barrierPut(path: string, value: Buffer): Promise<void> {
    const updated_at = new Date().toISOString();
    await this.db
      .insertInto('barrier')
      .values({ path, value, updated_at })
      .onConflict((oc) => oc.column('path').doUpdateSet({ value, updated_at }))
      .execute();
  }

  async barrierDelete(path: string): Promise<void> {
    await this.db.deleteFrom('barrier').where('path', '=', path).execute();
  }

  async listKeys(): Promise<KeyRow[]> {
    return this.db.selectFrom('keys').selectAll().orderBy('name').execute();
  }

  async findKeyByName(name: string): Promise<KeyRow | undefined> {
    return this.db.selectFrom('keys').selectAll().where('name', '=', name).executeTakeFirst();
  }

  async findKeyById(id: string): Promise<KeyRow | undefined> {
    return this.db.selectFrom('keys').selectAll().where('id', '=', id).executeTakeFirst();
  }

  async insertKey(row: KeyRow): Promise<void> {
    await this.db.insertInto('keys').values(row).execute();
  }

  async updateKey(id: string, patch: Partial<Omit<KeyRow, 'id'>>): Promise<void> {
    await this.db.updateTable('keys').set(patch).where('id', '=', id).execute();
  }

  async listKeyVersions(keyId: string): Promise<KeyVersionRow[]> {
    return this.db.selectFrom('key_versions').selectAll().where('key_id', '=', keyId).orderBy('version').execute();
  }

  async insertKeyVersion(row: KeyVersionRow): Promise<void> {
    await this.db.insertInto('key_versions').values(row).execute();
  }

  async updateKeyVersion(keyId: string, version: number, patch: Partial<Omit<KeyVersionRow, 'key_id' | 'version'>>): Promise<void> {
    await this.db.updateTable('key_versions').set(patch).where('key_id', '=', keyId).where('version', '=', version).execute();
  }

  async appendAudit(drafts: readonly AuditDraft[], link: AuditLinker, opts: AppendAuditOptions = {}): Promise<AuditRow[]> {
    if (drafts.length === 0) return [];
    const fast = this.fastAudit;
    if (fast) {
      if (!this.runTransaction) return fast.inTransaction(drafts, link, opts);
      // Synchronous, so nothing can interleave: unless a kysely transaction is
      // open on the connection, write now instead of queueing for its mutex.
      if (!fast.busy()) return fast.standalone(drafts, link, opts);
      return this.db.connection().execute(async () => fast.standalone(drafts, link, opts));
    }
    return this.transaction(async (tx) => (tx as KyselyStore).appendAuditInTransaction(drafts, link, opts));
  }

  private async appendAuditInTransaction(drafts: readonly AuditDraft[], link: AuditLinker, opts: AppendAuditOptions): Promise<AuditRow[]> {
    const last = await this.db.selectFrom('audit').select(['seq', 'hash']).orderBy('seq', 'desc').limit(1).executeTakeFirst();
    let prev = last?.hash ?? GENESIS_HASH;
    let seq = last?.seq ?? 0;
    const rows: AuditRow[] = drafts.map((d) => {
      seq += 1;
      const hash = link(prev, seq, d);
      const row: AuditRow = { ...d, seq, prev_hash: prev, hash };
      prev = hash;
      return row;
    });
    // SQLite caps bound parameters per statement; 11 columns x 80 rows stays well inside.
    for (let i = 0; i < rows.length; i += 80) {
      await this.db.insertInto('audit').values(rows.slice(i, i + 80)).execute();
    }
    const newest = rows[rows.length - 1];
    if (opts.head && newest) await this.setMeta('audit_head', opts.head(newest));
    return rows;
  }

  async readAudit(afterSeq: number, limit: number): Promise<AuditRow[]> {
    return this.db.selectFrom('audit').selectAll().where('seq', '>', afterSeq).orderBy('seq').limit(limit).execute();
  }

  async transaction<T>(fn: (tx: Store) => Promise<T>): Promise<T> {
    // Already inside a transaction: join it.
    if (!this.runTransaction) return fn(this);
    return this.runTransaction((trx) => fn(new KyselyStore(trx, undefined, undefined, this.fastAudit)));
  }

  async close(): Promise<void> {
    await this.onClose();
  }
}

export { sql };
