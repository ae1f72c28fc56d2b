import type { Kysely } from 'kysely';
import type { Database } from './schema.js';
import type { PrincipalKind } from './schema.js';
import {
  GENESIS_HASH,
  type AppendAuditOptions,
  type ApprovalRow,
  type AuditDraft,
  type AuditLinker,
  type AuditQuery,
  type AuditRow,
  type CredentialRow,
  type GrantRow,
  type KeyRow,
  type KeyVersionRow,
  type LoginThrottleRow,
  type PluginReportRow,
  type PrincipalRow,
  type RecoveryRow,
  type ScanReportRow,
  type Store,
} from './store.js';

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
  /** The SQLite file: request records may be appended on a connection of their own (openSqliteAuditConnection). */
  readonly file?: string;
}

/**
 * Starts an exclusive transaction on a single connection and hands it over.
 * `durable: false` lets a runner commit without waiting for the disk (the
 * appendAudit `fsync: false` option); runners may ignore it. A runner may
 * run fn again after a run the database confirms was rolled back (see
 * Store.transaction); `record`: fn only appends audit records, which may be
 * run again however late.
 */
export type TransactionRunner = <T>(fn: (trx: Kysely<Database>) => Promise<T>, opts?: { durable?: boolean; record?: boolean }) => Promise<T>;

// One code path for every SQL backend: dialect differences stay in the
// factory that builds the Kysely instance and its transaction runner.
export class KyselyStore implements Store {
  /** Dropped on close: a closed store offers no file to a writer thread. */
  auditFile: string | undefined;

  constructor(
    private readonly db: Kysely<Database>,
    private readonly runTransaction: TransactionRunner | undefined,
    private readonly onClose: () => Promise<void> = async () => {},
    private readonly fastAudit?: AuditAppender,
  ) {
    // Only the store itself, not a transaction's view of it.
    this.auditFile = runTransaction ? fastAudit?.file : undefined;
  }

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

  async deleteMeta(name: string): Promise<void> {
    await this.db.deleteFrom('meta').where('name', '=', name).execute();
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

  async deleteKey(id: string): Promise<boolean> {
    // One transaction (joined if already inside one), so no half-deleted key is ever seen.
    return this.transaction(async (tx) => {
      const { db } = tx as KyselyStore;
      // Children first: grants and versions reference the key row.
      await db.deleteFrom('grants').where('key_id', '=', id).execute();
      await db.deleteFrom('key_versions').where('key_id', '=', id).execute();
      const res = await db.deleteFrom('keys').where('id', '=', id).executeTakeFirst();
      return Number(res.numDeletedRows) > 0;
    });
  }

  async deleteAllPrincipals(): Promise<string[]> {
    return this.transaction(async (tx) => {
      const { db } = tx as KyselyStore;
      const ids = (await db.selectFrom('principals').select('id').execute()).map((r) => r.id);
      // Children first: they reference the principal rows.
      await db.deleteFrom('credentials').execute();
      await db.deleteFrom('grants').execute();
      await db.deleteFrom('plugin_clusters').execute();
      await db.deleteFrom('principals').execute();
      return ids;
    });
  }

  async listPrincipals(kind?: PrincipalKind): Promise<PrincipalRow[]> {
    let q = this.db.selectFrom('principals').selectAll().orderBy('name');
    if (kind) q = q.where('kind', '=', kind);
    return q.execute();
  }

  async findPrincipalByName(name: string): Promise<PrincipalRow | undefined> {
    return this.db.selectFrom('principals').selectAll().where('name', '=', name).executeTakeFirst();
  }

  async findPrincipalById(id: string): Promise<PrincipalRow | undefined> {
    return this.db.selectFrom('principals').selectAll().where('id', '=', id).executeTakeFirst();
  }

  async findPrincipalByCert(fingerprint: string): Promise<PrincipalRow | undefined> {
    return this.db.selectFrom('principals').selectAll().where('cert_fingerprint', '=', fingerprint).executeTakeFirst();
  }

  async insertPrincipal(row: PrincipalRow): Promise<void> {
    await this.db.insertInto('principals').values(row).execute();
  }

  async updatePrincipal(id: string, patch: Partial<Omit<PrincipalRow, 'id'>>): Promise<void> {
    await this.db.updateTable('principals').set(patch).where('id', '=', id).execute();
  }

  async deletePrincipal(id: string): Promise<boolean> {
    return this.transaction(async (tx) => {
      const { db } = tx as KyselyStore;
      // Children first: they reference the principal row.
      await db.deleteFrom('credentials').where('principal_id', '=', id).execute();
      await db.deleteFrom('grants').where('principal_id', '=', id).execute();
      await db.deleteFrom('plugin_clusters').where('app_id', '=', id).execute();
      const res = await db.deleteFrom('principals').where('id', '=', id).executeTakeFirst();
      return Number(res.numDeletedRows) > 0;
    });
  }

  async findCredential(id: string): Promise<CredentialRow | undefined> {
    return this.db.selectFrom('credentials').selectAll().where('id', '=', id).executeTakeFirst();
  }

  async listCredentials(principalId: string): Promise<CredentialRow[]> {
    return this.db.selectFrom('credentials').selectAll().where('principal_id', '=', principalId).orderBy('created_at').execute();
  }

  async insertCredential(row: CredentialRow): Promise<void> {
    await this.db.insertInto('credentials').values(row).execute();
  }

  async updateCredential(id: string, patch: Partial<Omit<CredentialRow, 'id'>>): Promise<void> {
    await this.db.updateTable('credentials').set(patch).where('id', '=', id).execute();
  }

  async deleteExpiredSessions(before: string): Promise<number> {
    const res = await this.db.deleteFrom('credentials').where('kind', '=', 'session').where('expires_at', '<', before).executeTakeFirst();
    return Number(res.numDeletedRows);
  }

  async listGrants(filter: { principalId?: string; keyId?: string }): Promise<GrantRow[]> {
    let q = this.db.selectFrom('grants').selectAll().orderBy('principal_id').orderBy('key_id');
    if (filter.principalId !== undefined) q = q.where('principal_id', '=', filter.principalId);
    if (filter.keyId !== undefined) q = q.where('key_id', '=', filter.keyId);
    return q.execute();
  }

  async putGrant(row: GrantRow): Promise<void> {
    await this.db
      .insertInto('grants')
      .values(row)
      .onConflict((oc) => oc.columns(['principal_id', 'key_id']).doUpdateSet({ operations: row.operations, created_at: row.created_at, created_by: row.created_by }))
      .execute();
  }

  async deleteGrant(principalId: string, keyId: string): Promise<boolean> {
    const res = await this.db.deleteFrom('grants').where('principal_id', '=', principalId).where('key_id', '=', keyId).executeTakeFirst();
    return Number(res.numDeletedRows) > 0;
  }

  async insertApproval(row: ApprovalRow): Promise<void> {
    await this.db.insertInto('approvals').values(row).execute();
  }

  async findApproval(id: string): Promise<ApprovalRow | undefined> {
    return this.db.selectFrom('approvals').selectAll().where('id', '=', id).executeTakeFirst();
  }

  async listApprovals(state?: ApprovalRow['state']): Promise<ApprovalRow[]> {
    let q = this.db.selectFrom('approvals').selectAll().orderBy('created_at');
    if (state) q = q.where('state', '=', state);
    return q.execute();
  }

  async updateApproval(id: string, patch: Partial<Omit<ApprovalRow, 'id'>>): Promise<void> {
    await this.db.updateTable('approvals').set(patch).where('id', '=', id).execute();
  }

  async upsertPluginReport(row: PluginReportRow): Promise<void> {
    const { app_id: _a, cluster: _c, node: _n, first_seen: _f, ...update } = row;
    await this.db
      .insertInto('plugin_clusters')
      .values(row)
      .onConflict((oc) => oc.columns(['app_id', 'cluster', 'node']).doUpdateSet(update))
      .execute();
  }

  async listPluginReports(filter: { appId?: string; keyName?: string }): Promise<PluginReportRow[]> {
    let q = this.db.selectFrom('plugin_clusters').selectAll().orderBy('app_id').orderBy('cluster').orderBy('node');
    if (filter.appId !== undefined) q = q.where('app_id', '=', filter.appId);
    if (filter.keyName !== undefined) q = q.where('key_name', '=', filter.keyName);
    return q.execute();
  }

  async putScanReport(row: ScanReportRow): Promise<void> {
    const { cluster: _c, ...update } = row;
    await this.db
      .insertInto('scan_reports')
      .values(row)
      .onConflict((oc) => oc.column('cluster').doUpdateSet(update))
      .execute();
  }

  async listScanReports(): Promise<ScanReportRow[]> {
    return this.db.selectFrom('scan_reports').selectAll().orderBy('cluster').execute();
  }

  async insertRecovery(row: RecoveryRow): Promise<void> {
    await this.db.insertInto('recoveries').values(row).execute();
  }

  async findRecovery(id: string): Promise<RecoveryRow | undefined> {
    return this.db.selectFrom('recoveries').selectAll().where('id', '=', id).executeTakeFirst();
  }

  async listRecoveries(filter: { appId?: string; state?: RecoveryRow['state'] }): Promise<RecoveryRow[]> {
    let q = this.db.selectFrom('recoveries').selectAll().orderBy('created_at', 'desc').orderBy('id');
    if (filter.appId !== undefined) q = q.where('app_id', '=', filter.appId);
    if (filter.state !== undefined) q = q.where('state', '=', filter.state);
    return q.execute();
  }

  async updateRecovery(id: string, patch: Partial<Omit<RecoveryRow, 'id'>>): Promise<void> {
    await this.db.updateTable('recoveries').set(patch).where('id', '=', id).execute();
  }

  async getLoginThrottle(name: string, source: string): Promise<LoginThrottleRow | undefined> {
    return this.db.selectFrom('login_throttle').selectAll().where('name', '=', name).where('source', '=', source).executeTakeFirst();
  }

  async putLoginThrottle(row: LoginThrottleRow): Promise<void> {
    const { name: _n, source: _s, ...update } = row;
    await this.db
      .insertInto('login_throttle')
      .values(row)
      .onConflict((oc) => oc.columns(['name', 'source']).doUpdateSet(update))
      .execute();
  }

  async deleteLoginThrottles(name: string, source?: string): Promise<number> {
    let q = this.db.deleteFrom('login_throttle').where('name', '=', name);
    if (source !== undefined) q = q.where('source', '=', source);
    const res = await q.executeTakeFirst();
    return Number(res.numDeletedRows);
  }

  async listLoginLocks(lockedAfter: string, name?: string): Promise<LoginThrottleRow[]> {
    let q = this.db.selectFrom('login_throttle').selectAll().where('locked_until', '>', lockedAfter);
    if (name !== undefined) q = q.where('name', '=', name);
    return q.orderBy('name').orderBy('source').execute();
  }

  async deleteExpiredLoginThrottles(before: string): Promise<number> {
    const res = await this.db.deleteFrom('login_throttle').where('expires_at', '<', before).executeTakeFirst();
    return Number(res.numDeletedRows);
  }

  async appendAudit(drafts: readonly AuditDraft[], link: AuditLinker, opts: AppendAuditOptions = {}): Promise<AuditRow[]> {
    if (drafts.length === 0) return [];
    const fast = this.fastAudit;
    if (fast) {
      if (!this.runTransaction) return fast.inTransaction(drafts, link, opts);
      // Synchronous, so nothing can interleave: unless a kysely transaction is
      // open on the connection, write now instead of queueing for its mutex.
      if (!fast.busy()) {
        return fast.standalone(drafts, link, opts);
      }
      return this.db.connection().execute(async () => fast.standalone(drafts, link, opts));
    }
    if (!this.runTransaction) return this.appendAuditInTransaction(drafts, link, opts);
    return this.runTransaction((trx) => new KyselyStore(trx, undefined, undefined, this.fastAudit).appendAuditInTransaction(drafts, link, opts), {
      durable: opts.fsync !== false,
      record: true,
    });
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

  async lastAuditSeq(): Promise<number> {
    const row = await this.db.selectFrom('audit').select('seq').orderBy('seq', 'desc').limit(1).executeTakeFirst();
    return row ? Number(row.seq) : 0;
  }

  async queryAudit(q: AuditQuery): Promise<AuditRow[]> {
    let b = this.db.selectFrom('audit').selectAll().where('seq', '>', q.afterSeq ?? 0);
    if (q.since !== undefined) b = b.where('time', '>=', q.since);
    if (q.until !== undefined) b = b.where('time', '<=', q.until);
    if (q.actor !== undefined) b = b.where('actor', '=', q.actor);
    if (q.keyName !== undefined) b = b.where('key_name', '=', q.keyName);
    if (q.operation !== undefined) b = b.where('operation', '=', q.operation);
    return b.orderBy('seq').limit(q.limit).execute();
  }

  async transaction<T>(fn: (tx: Store) => Promise<T>): Promise<T> {
    // Already inside a transaction: join it.
    if (!this.runTransaction) return fn(this);
    return this.runTransaction((trx) => fn(new KyselyStore(trx, undefined, undefined, this.fastAudit)));
  }

  async close(): Promise<void> {
    this.auditFile = undefined;
    await this.onClose();
  }
}
