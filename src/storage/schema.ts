import type { Generated } from 'kysely';

// Table shapes as kysely sees them. Secret values never sit in these tables
// in the clear: key material lives in `barrier` rows, sealed under the root key.

export interface MetaTable {
  name: string;
  value: string;
}

export interface BarrierTable {
  path: string;
  value: Buffer;
  updated_at: string;
}

export type KeyState = 'enabled' | 'disabled' | 'pending_destruction' | 'destroyed';

export interface KeysTable {
  id: string; // 16 hex chars: the key ref carried in every ciphertext
  name: string;
  state: KeyState;
  current_version: number;
  created_at: string;
  updated_at: string;
  /** Automatic rotation period in seconds; null: rotate by hand only. */
  rotation_period_s: number | null;
  next_rotation_at: string | null;
  /** Versions below this no longer decrypt (their material is kept). */
  min_decryption_version: number;
  /** When a pending destruction takes effect. */
  destroy_at: string | null;
  /** Lowest version an encryption may name (Vault Transit); 0: any version up to the latest. */
  min_encryption_version: number;
  /** 1: the key may be deleted outright (Vault Transit DELETE); 0 (default): refused. */
  deletion_allowed: number;
}

export interface KeyVersionsTable {
  key_id: string;
  version: number;
  /** Random per version: makes key_ids unique even across copies of a store. */
  tag: string;
  state: 'active' | 'destroyed';
  created_at: string;
  destroyed_at: string | null;
}

export interface AuditTable {
  seq: Generated<number>;
  time: string;
  actor: string;
  operation: string;
  key_name: string | null;
  key_version: number | null;
  result: string;
  request_id: string | null;
  details: string | null;
  prev_hash: string;
  hash: string;
}

export type PrincipalKind = 'user' | 'app';

export interface PrincipalsTable {
  id: string;
  /** Unique across users and apps; audit records name principals as `<kind>:<name>`. */
  name: string;
  kind: PrincipalKind;
  /** JSON array of role names (users only). */
  roles: string;
  state: 'active' | 'disabled';
  failed_logins: number;
  locked_until: string | null;
  /** SHA-256 (hex) of the DER client certificate an app may present over mTLS. */
  cert_fingerprint: string | null;
  description: string | null;
  created_at: string;
  updated_at: string;
  /** 1: a break-glass app, which decrypts only inside an open recovery and never encrypts; 0 otherwise. */
  break_glass: number;
  /** Apps: the principal id that created the app (null: created before keyhaven recorded it). */
  created_by: string | null;
  /** Apps: the principal id that issued the current API key, at creation or by the last rotation (null: not recorded). */
  key_issued_by: string | null;
}

export interface CredentialsTable {
  /** Public part of the token: the lookup id. */
  id: string;
  principal_id: string;
  kind: 'api_key' | 'session';
  /** SHA-256 (hex) of the token's secret part; the secret itself is never stored. */
  hash: string;
  created_at: string;
  expires_at: string | null;
  revoked_at: string | null;
}

export interface GrantsTable {
  principal_id: string;
  key_id: string;
  /** JSON array of operations: encrypt, decrypt, rewrap, datakey. */
  operations: string;
  created_at: string;
  created_by: string;
}

export type ApprovalState = 'pending' | 'approved' | 'executed' | 'failed' | 'denied' | 'expired';

export interface ApprovalsTable {
  id: string;
  operation: string;
  /** JSON of the operation's parameters (never secrets). */
  params: string;
  requester_id: string;
  requester_name: string;
  required: number;
  /** JSON array of {id, name, at}. */
  approvals: string;
  state: ApprovalState;
  created_at: string;
  expires_at: string;
  decided_at: string | null;
  /** JSON summary of the outcome, or the error code. */
  result: string | null;
}

/** What a KMS plugin last reported about one node of a cluster (POST /v1/keys/{name}/status). */
export interface PluginClustersTable {
  /** The reporting app (principals.id); the row goes with the app. */
  app_id: string;
  cluster: string;
  /** The plugin host's name: one row per control-plane node. */
  node: string;
  key_name: string;
  /** The key_id the plugin reports to its apiserver. */
  key_id: string;
  key_version: number;
  plugin_version: string;
  /** ISO-8601: the plugin's last successful Status, as it reports it. */
  last_success: string | null;
  last_seen: string;
  first_seen: string;
  /** The client address the report came from. */
  source: string;
  /** ISO-8601: since when this node has reported this key and version (null: reported before keyhaven recorded it). */
  version_since: string | null;
}

/** Failed sign-ins from one source address against one account name (login_throttle). */
export interface LoginThrottleTable {
  /** The name tried (it need not exist: unknown names are counted the same way). */
  name: string;
  /** The client address the attempts came from. */
  source: string;
  /** Attempts counted as failures (each is counted before its password is checked). */
  failures: number;
  /** ISO-8601: attempts from this source for this name are refused until then. */
  locked_until: string | null;
  /** ISO-8601: the row is forgotten (and swept) after this. */
  expires_at: string;
  updated_at: string;
}

/** The latest etcd scan report of one cluster (PUT /v1/clusters/{cluster}/scan-report); one row per cluster. */
export interface ScanReportsTable {
  cluster: string;
  /** ISO-8601: when the scan ran, as the scanner reports it. */
  scanned_at: string;
  /** Where the scan read from ("etcd https://...", "snapshot nightly.db"). */
  source: string;
  objects: number;
  plaintext: number;
  /** JSON array of {keyId, count}. */
  by_key_id: string;
  /** JSON array of {form, provider?, count}. */
  by_form: string;
  /** Who uploaded it, as an audit actor name (`user:alice`, `app:scanner`). */
  reporter: string;
  received_at: string;
}

export type RecoveryState = 'pending' | 'open' | 'closed';

/** A break-glass recovery window (POST /v1/recoveries): a record of who read backups, when and why. */
export interface RecoveriesTable {
  id: string;
  /** The app it belongs to (principals.id) and its name then; kept after the app is deleted, as history. */
  app_id: string;
  app_name: string;
  reason: string;
  cluster: string | null;
  state: RecoveryState;
  /** The approval request it waits for, under a quorum policy. */
  approval_id: string | null;
  created_at: string;
  opened_at: string | null;
  /** Set when it opens: decryption stops after this. */
  expires_at: string | null;
  closed_at: string | null;
  closed_by: string | null;
  /** What the recovery tool reported when closing it. */
  objects: number | null;
  failed: number | null;
}

export interface Database {
  meta: MetaTable;
  barrier: BarrierTable;
  keys: KeysTable;
  key_versions: KeyVersionsTable;
  audit: AuditTable;
  principals: PrincipalsTable;
  credentials: CredentialsTable;
  grants: GrantsTable;
  approvals: ApprovalsTable;
  plugin_clusters: PluginClustersTable;
  login_throttle: LoginThrottleTable;
  scan_reports: ScanReportsTable;
  recoveries: RecoveriesTable;
}
