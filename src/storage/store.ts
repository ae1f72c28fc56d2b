import type { ApprovalsTable, AuditTable, CredentialsTable, GrantsTable, KeysTable, KeyVersionsTable, LoginThrottleTable, PluginClustersTable, PrincipalKind, PrincipalsTable, RecoveriesTable, ScanReportsTable } from './schema.js';

// The small storage interface every layer above talks to. It knows rows, not
// secrets: sealed values arrive already encrypted by the barrier.

export type KeyRow = KeysTable;
export type KeyVersionRow = KeyVersionsTable;
export type AuditRow = Omit<AuditTable, 'seq'> & { seq: number };
export type AuditDraft = Omit<AuditRow, 'seq' | 'prev_hash' | 'hash'>;
export type PrincipalRow = PrincipalsTable;
export type CredentialRow = CredentialsTable;
export type GrantRow = GrantsTable;
export type ApprovalRow = ApprovalsTable;
export type PluginReportRow = PluginClustersTable;
export type LoginThrottleRow = LoginThrottleTable;
export type ScanReportRow = ScanReportsTable;
export type RecoveryRow = RecoveriesTable;

/** Filters for reading the audit log; all optional, combined with AND. */
export interface AuditQuery {
  readonly afterSeq?: number | undefined;
  /** ISO timestamps, inclusive. */
  readonly since?: string | undefined;
  readonly until?: string | undefined;
  readonly actor?: string | undefined;
  readonly keyName?: string | undefined;
  readonly operation?: string | undefined;
  readonly limit: number;
}

/** Computes a record's hash from the previous record's hash and its own fields. */
export type AuditLinker = (prevHash: string, seq: number, draft: AuditDraft) => string;

export interface AppendAuditOptions {
  /** The chain-head value to store (meta "audit_head") with the last record. */
  readonly head?: (last: AuditRow) => string;
  /**
   * true (default): on disk before the call returns. false: survives a crash
   * of the process (kill -9) but the newest records may be lost if the
   * machine loses power (on PostgreSQL: synchronous_commit=off, so also if
   * the database server crashes). Only honoured outside an enclosing transaction.
   */
  readonly fsync?: boolean;
}

export interface Store {
  getMeta(name: string): Promise<string | undefined>;
  setMeta(name: string, value: string): Promise<void>;
  /** Sets the value only if absent; returns whichever value is stored. */
  setMetaIfAbsent(name: string, value: string): Promise<string>;
  deleteMeta(name: string): Promise<void>;

  barrierGet(path: string): Promise<Buffer | undefined>;
  barrierPut(path: string, value: Buffer): Promise<void>;
  barrierDelete(path: string): Promise<void>;

  listKeys(): Promise<KeyRow[]>;
  findKeyByName(name: string): Promise<KeyRow | undefined>;
  findKeyById(id: string): Promise<KeyRow | undefined>;
  insertKey(row: KeyRow): Promise<void>;
  updateKey(id: string, patch: Partial<Omit<KeyRow, 'id'>>): Promise<void>;
  listKeyVersions(keyId: string): Promise<KeyVersionRow[]>;
  insertKeyVersion(row: KeyVersionRow): Promise<void>;
  updateKeyVersion(keyId: string, version: number, patch: Partial<Omit<KeyVersionRow, 'key_id' | 'version'>>): Promise<void>;
  /**
   * Deletes a key's row, its version rows and the grants on it; false if no
   * such key. Its sealed material (barrier rows) is the caller's to delete first.
   */
  deleteKey(id: string): Promise<boolean>;

  listPrincipals(kind?: PrincipalKind): Promise<PrincipalRow[]>;
  findPrincipalByName(name: string): Promise<PrincipalRow | undefined>;
  findPrincipalById(id: string): Promise<PrincipalRow | undefined>;
  findPrincipalByCert(fingerprint: string): Promise<PrincipalRow | undefined>;
  insertPrincipal(row: PrincipalRow): Promise<void>;
  updatePrincipal(id: string, patch: Partial<Omit<PrincipalRow, 'id'>>): Promise<void>;
  /**
   * Deletes every principal with its credentials, grants and plugin reports
   * (an unconfirmed init being redone); returns the deleted ids. Their sealed
   * values (barrier rows) are the caller's to delete.
   */
  deleteAllPrincipals(): Promise<string[]>;
  /**
   * Deletes a principal's row with its credentials, grants and plugin
   * reports; false if no such principal. Its barrier rows (a password hash)
   * are the caller's to delete.
   */
  deletePrincipal(id: string): Promise<boolean>;

  findCredential(id: string): Promise<CredentialRow | undefined>;
  listCredentials(principalId: string): Promise<CredentialRow[]>;
  insertCredential(row: CredentialRow): Promise<void>;
  updateCredential(id: string, patch: Partial<Omit<CredentialRow, 'id'>>): Promise<void>;
  /** Deletes sessions that expired before `before`; returns how many. */
  deleteExpiredSessions(before: string): Promise<number>;

  listGrants(filter: { principalId?: string; keyId?: string }): Promise<GrantRow[]>;
  /** Inserts or replaces the grant for (principal, key). */
  putGrant(row: GrantRow): Promise<void>;
  deleteGrant(principalId: string, keyId: string): Promise<boolean>;

  insertApproval(row: ApprovalRow): Promise<void>;
  findApproval(id: string): Promise<ApprovalRow | undefined>;
  listApprovals(state?: ApprovalRow['state']): Promise<ApprovalRow[]>;
  updateApproval(id: string, patch: Partial<Omit<ApprovalRow, 'id'>>): Promise<void>;

  /** Inserts the report for (app, cluster, node), or updates every column but first_seen. */
  upsertPluginReport(row: PluginReportRow): Promise<void>;
  /** Ordered by app id, cluster, node. */
  listPluginReports(filter: { appId?: string; keyName?: string }): Promise<PluginReportRow[]>;

  /** Inserts or replaces the scan report of a cluster (the latest one is kept). */
  putScanReport(row: ScanReportRow): Promise<void>;
  /** Ordered by cluster. */
  listScanReports(): Promise<ScanReportRow[]>;

  insertRecovery(row: RecoveryRow): Promise<void>;
  findRecovery(id: string): Promise<RecoveryRow | undefined>;
  /** Newest first. */
  listRecoveries(filter: { appId?: string; state?: RecoveryRow['state'] }): Promise<RecoveryRow[]>;
  updateRecovery(id: string, patch: Partial<Omit<RecoveryRow, 'id'>>): Promise<void>;

  /** The sign-in failure counter of (name, source); call inside a transaction to read-modify-write it. */
  getLoginThrottle(name: string, source: string): Promise<LoginThrottleRow | undefined>;
  /** Inserts or replaces the counter of (name, source). */
  putLoginThrottle(row: LoginThrottleRow): Promise<void>;
  /** Deletes the counters of a name: of one source, or of every source; returns how many. */
  deleteLoginThrottles(name: string, source?: string): Promise<number>;
  /** Counters whose lock ends after `lockedAfter` (ISO), optionally of one name; ordered by name, source. */
  listLoginLocks(lockedAfter: string, name?: string): Promise<LoginThrottleRow[]>;
  /** Deletes counters that expired before `before`; returns how many. */
  deleteExpiredLoginThrottles(before: string): Promise<number>;

  /** Appends records to the hash chain atomically (joining an enclosing transaction); returns them as stored. */
  appendAudit(drafts: readonly AuditDraft[], link: AuditLinker, opts?: AppendAuditOptions): Promise<AuditRow[]>;
  readAudit(afterSeq: number, limit: number): Promise<AuditRow[]>;
  /** The newest record's seq, or 0 for an empty log. */
  lastAuditSeq(): Promise<number>;
  /** Filtered read in seq order (for tail and export; verify reads unfiltered). */
  queryAudit(q: AuditQuery): Promise<AuditRow[]>;

  /**
   * Present on a SQLite store: its file, which another thread may open with
   * openSqliteAuditConnection() to append request records (each batch its
   * own transaction) without blocking the event loop.
   */
  readonly auditFile?: string | undefined;

  /**
   * Runs fn in one exclusive write transaction (across processes too). fn
   * may run more than once: after a run the database confirms was rolled back
   * because its session ended (PostgreSQL's write-lock fencing), it runs
   * again, unless the call is already older than the lock wait (its caller
   * has likely given up and retried elsewhere). So fn acts through tx alone
   * and leaves other effects until the call returns.
   */
  transaction<T>(fn: (tx: Store) => Promise<T>): Promise<T>;
  close(): Promise<void>;
}

export const GENESIS_HASH = '0'.repeat(64);
