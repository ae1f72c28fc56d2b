import { randomBytes } from 'node:crypto';
import { createAuditLog, type AuditLog } from '../audit/audit-log.js';
import { CHECKPOINT_KEY_INFO } from '../audit/checkpoint.js';
import { CANARY_PATH, openBarrier, type Barrier } from '../barrier/barrier.js';
import { deriveKey } from '../crypto/kdf.js';
import type { Store } from '../storage/store.js';
import { createKeyStore, type KeyStore } from './key-store.js';

// The key stack (barrier, audit head key, key store, store id) is built here
// once, for the key server, the embedded store and offline audit verify: the
// labels below sign and check every stored audit head, so a second copy that
// drifted would make verification fail on every existing database.

/** HKDF info of the key that signs the audit chain head (existing databases are signed with it: never change). */
const AUDIT_HEAD_KEY_INFO = 'keyhaven audit head key v1';
/** Meta row holding the random per-store id (part of every key_id and checkpoint). */
export const STORE_ID_META = 'store_id';

/** The audit log's keys derived from the root key; the caller wipes them (or hands them to the log). */
export interface AuditKeys {
  readonly headKey: Buffer;
  readonly checkpointKey: Buffer;
}

function deriveAuditKeys(rootKey: Buffer): AuditKeys {
  return { headKey: deriveKey(rootKey, AUDIT_HEAD_KEY_INFO), checkpointKey: deriveKey(rootKey, CHECKPOINT_KEY_INFO) };
}

/**
 * Offline verify: checks the root key against the barrier canary of a store
 * opened read-only (nothing is written), then derives the audit keys. A wrong
 * key file is then named as such, not reported as a broken log.
 */
export async function openAuditKeys(store: Pick<Store, 'barrierGet'>, rootKey: Buffer): Promise<AuditKeys> {
  // openBarrier only reads when the canary exists; without one (a store never opened with a root key) there is nothing to check.
  if ((await store.barrierGet(CANARY_PATH)) !== undefined) await openBarrier(store as Store, rootKey);
  return deriveAuditKeys(rootKey);
}

export interface OpenKeyhavenOptions {
  readonly store: Store;
  /** Read, never kept and never wiped here: the caller wipes it. */
  readonly rootKey: Buffer;
  /** The log to sign (the key server keeps one across seal and unseal); made here when absent. */
  readonly audit?: AuditLog | undefined;
  /** fsync each batch of request records, for a log made here. */
  readonly auditFsync?: boolean | undefined;
  /**
   * The store's log was signed before, so a missing head is a deleted one.
   * Default: the barrier canary existed before this open (false on the
   * server's first unseal after init, whose records went unsigned).
   */
  readonly expectSignedHead?: boolean | undefined;
}

export interface Keyhaven {
  readonly barrier: Barrier;
  readonly audit: AuditLog;
  readonly keys: KeyStore;
  /** Random per store; part of every key_id so ids are never reused across stores. */
  readonly storeId: string;
  /** The head key now signing the log (the server drops it on seal). */
  readonly headKey: Buffer;
  /** The key that signs checkpoints; the log holds it too (for witness checks). */
  readonly checkpointKey: Buffer;
  /** Whether the stored audit head held; when not, later records stay unsigned so verify keeps reporting it. */
  readonly headIntact: boolean;
}

/** Opens the key stack on a store with its root key (a wrong key is refused: config_invalid). */
export async function openKeyhaven(opts: OpenKeyhavenOptions): Promise<Keyhaven> {
  const { store, rootKey } = opts;
  // Read before openBarrier, which writes the canary into a new store.
  const expectSignedHead = opts.expectSignedHead ?? (await store.barrierGet(CANARY_PATH)) !== undefined;
  const barrier = await openBarrier(store, rootKey);
  const { headKey, checkpointKey } = deriveAuditKeys(rootKey);
  const audit = opts.audit ?? createAuditLog(store, { fsync: opts.auditFsync ?? false });
  const headIntact = await audit.adoptHeadKey(headKey, expectSignedHead);
  audit.setCheckpointKey(checkpointKey);
  const keys = createKeyStore({ store, barrier, audit });
  const storeId = await store.setMetaIfAbsent(STORE_ID_META, randomBytes(8).toString('hex'));
  return { barrier, audit, keys, storeId, headKey, checkpointKey, headIntact };
}
