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

export interface KeysTable {
  id: string; // 16 hex chars: the key ref carried in every ciphertext
  name: string;
  state: 'enabled' | 'disabled';
  current_version: number;
  created_at: string;
  updated_at: string;
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

export interface Database {
  meta: MetaTable;
  barrier: BarrierTable;
  keys: KeysTable;
  key_versions: KeyVersionsTable;
  audit: AuditTable;
}
