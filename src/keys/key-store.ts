import { randomBytes } from 'node:crypto';
import type { AuditLog } from '../audit/audit-log.js';
import type { Barrier } from '../barrier/barrier.js';
import { generateKey } from '../crypto/aead.js';
import { BLOB_OVERHEAD, KEY_REF_BYTES, openBlob, parseHeader, sealBlob } from '../crypto/blob.js';
import { constantTimeEqual } from '../crypto/kdf.js';
import { KeyhavenError } from '../errors.js';
import type { KeyState } from '../storage/schema.js';
import type { KeyRow, Store } from '../storage/store.js';
import { KEY_NAME } from '../key-name.js';


export interface KeyVersionInfo {
  readonly version: number;
  readonly tag: string;
  readonly state: 'active' | 'destroyed';
  readonly createdAt: string;
  readonly destroyedAt: string | null;
}

export interface KeyInfo {
  readonly id: string;
  readonly name: string;
  readonly state: KeyState;
  readonly currentVersion: number;
  readonly createdAt: string;
  readonly updatedAt: string;
  /** Automatic rotation period in seconds, or null. */
  readonly rotationPeriodS: number | null;
  readonly nextRotationAt: string | null;
  readonly minDecryptionVersion: number;
  /** When a scheduled destruction takes effect. */
  readonly destroyAt: string | null;
  /** Lowest version an encryption may name (Vault Transit); 0: any version up to the current one. */
  readonly minEncryptionVersion: number;
  /** Whether delete() may remove the key (Vault Transit deletion_allowed). */
  readonly deletionAllowed: boolean;
  readonly versions: readonly KeyVersionInfo[];
}

export interface KeyPolicy {
  /** Seconds; null turns automatic rotation off. */
  readonly rotationPeriodS?: number | null | undefined;
  readonly minDecryptionVersion?: number | undefined;
  /** 0, or from minDecryptionVersion to the current version (Vault Transit min_encryption_version). */
  readonly minEncryptionVersion?: number | undefined;
  readonly deletionAllowed?: boolean | undefined;
}

export interface ScheduledRun {
  readonly rotated: readonly string[];
  readonly destroyed: readonly string[];
}

export interface EncryptResult {
  readonly ciphertext: Buffer;
  readonly keyName: string;
  readonly keyId: string;
  readonly version: number;
  readonly versionTag: string;
}

export interface DecryptResult {
  readonly plaintext: Buffer;
  readonly keyName: string;
  readonly keyId: string;
  readonly version: number;
  readonly versionTag: string;
}

export interface DecryptOptions {
  /** Refuse a version whose tag differs (a key_id from a separately rotated copy of this store). */
  readonly expectTag?: string | undefined;
  /** Only these keys may be used; others are refused before any crypto. */
  readonly allowedKeys?: ReadonlySet<string> | undefined;
  /** Caller context bound as associated data at encryption. */
  readonly context?: Buffer | undefined;
}

interface CachedKey {
  row: KeyRow;
  ref: Buffer;
  /** Material of active versions only; destroyed versions are absent. */
  material: Map<number, Buffer>;
  tags: Map<number, string>;
  destroyed: Set<number>;
  /** The read generation this entry came from (see `generation` in createKeyStore). */
  readAt: number;
}

/** Bytes a ciphertext adds to its plaintext (header, nonce, tag). */
export const CIPHERTEXT_OVERHEAD = BLOB_OVERHEAD;

export interface CiphertextRef {
  /** The key's id (hex), as in KeyInfo.id. */
  readonly keyId: string;
  readonly version: number;
}

export interface KeyStore {
  create(name: string, actor: string, policy?: KeyPolicy): Promise<KeyInfo>;
  list(): Promise<KeyInfo[]>;
  get(name: string): Promise<KeyInfo>;
  rotate(name: string, actor: string): Promise<KeyInfo>;
  setEnabled(name: string, enabled: boolean, actor: string): Promise<KeyInfo>;
  destroyVersion(name: string, version: number, actor: string): Promise<KeyInfo>;
  setPolicy(name: string, policy: KeyPolicy, actor: string): Promise<KeyInfo>;
  /** Schedules destruction of every version after `pendingSeconds`; the key stops working at once. */
  scheduleDestroy(name: string, pendingSeconds: number, actor: string): Promise<KeyInfo>;
  /** Cancels a scheduled destruction; the key comes back disabled. */
  cancelDestroy(name: string, actor: string): Promise<KeyInfo>;
  /**
   * Destroys every version below `minAvailableVersion` (Vault Transit trim),
   * which may be at most the minimum decryption version and the minimum
   * encryption version (which must be set), and never goes down.
   */
  trim(name: string, minAvailableVersion: number, actor: string): Promise<KeyInfo>;
  /**
   * Deletes a key outright, if its deletionAllowed is set: wipes its material,
   * removes its versions and grants, frees its name. Audited as key.delete.
   */
  delete(name: string, actor: string): Promise<void>;
  /**
   * Rotates keys whose rotation is due and destroys keys whose pending
   * window has passed. Each change re-checks its condition inside an
   * exclusive transaction, so several servers on one database act once.
   */
  runScheduled(now: Date, actor: string): Promise<ScheduledRun>;
  /** Loads a key into memory if it is not yet (the server loads on first use). */
  ensureLoaded(name: string): Promise<void>;
  /** Overwrites and drops every cached key version (on seal). */
  wipe(): void;
  /** The id of a loaded key (see ensureLoaded), from memory. */
  idOf(name: string): string | undefined;
  /** A loaded key's versions that can still decrypt (not destroyed, not below minDecryptionVersion), with their tags. */
  liveVersionTags(name: string): ReadonlyMap<number, string>;
  /** Which key and version a ciphertext names, read from its header (not yet authenticated). */
  describe(ciphertext: Buffer): CiphertextRef;
  /** Encrypts and decrypts random bytes with the key's newest version; resolves with that version. */
  roundTrip(name: string, allowedKeys?: ReadonlySet<string>): Promise<EncryptResult>;
  /** Re-reads a key's metadata (picks up changes made by other processes). */
  refresh(name: string): Promise<KeyInfo>;
  /** Re-reads every key held in memory: disables and destroyed versions take effect. */
  refreshCached(): Promise<void>;
  /**
   * Cheap catch-up with changes made by other servers sharing the database:
   * one query reads every key row, and only cached keys whose row changed
   * (rotation, enable/disable, minimum versions, destroyed versions) are
   * reloaded; deleted ones are dropped. Keys not cached are left alone.
   */
  refreshChanged(): Promise<void>;
  /**
   * Encrypts with the newest version of a key as cached (refresh() updates
   * it), or with `version` when given: the plugin pins the version its last
   * Status reported, so Encrypt and Status never disagree on the key_id.
   */
  encrypt(name: string, plaintext: Buffer, version?: number, context?: Buffer): EncryptResult;
  /**
   * Decrypts a self-describing ciphertext; loads versions it has not cached
   * yet. With expectTag, refuses a version whose tag differs (a key_id from a
   * copy of this store that was rotated separately).
   */
  decrypt(ciphertext: Buffer, opts?: DecryptOptions): Promise<DecryptResult>;
  /**
   * Lends a version's material to `fn` for the duration of one synchronous
   * call (compatibility APIs doing raw AES); the material is never returned.
   * `version` undefined means the current one. For `encrypt` the key must be
   * enabled and the version not below the minimum encryption version; for both uses the version must exist, not be destroyed and not
   * be below the minimum decryption version, and the key must not be
   * pending destruction — the same rules as encrypt() and decrypt().
   */
  withVersionMaterial<T>(name: string, version: number | undefined, use: 'encrypt' | 'decrypt', fn: (material: Buffer, version: number) => T): Promise<T>;
}

function versionPath(keyId: string, version: number): string {
  return `keys/${keyId}/versions/${version}`;
}

function newTag(): string {
  return randomBytes(8).toString('hex');
}

function validateName(name: string): void {
  if (!KEY_NAME.test(name)) {
    throw new KeyhavenError('invalid_argument', 'key name must be 1-128 characters of letters, digits, ".", "_" or "-", starting with a letter or digit');
  }
}

const MAX_PERIOD_S = 100 * 365 * 86400;

function checkPeriod(period: number | null | undefined): number | null {
  if (period === null || period === undefined) return null;
  if (!Number.isInteger(period) || period < 60 || period > MAX_PERIOD_S) {
    throw new KeyhavenError('invalid_argument', 'the rotation period must be between 1 minute and 100 years');
  }
  return period;
}

function nextRotation(period: number | null, fromIso: string): string | null {
  return period === null ? null : new Date(Date.parse(fromIso) + period * 1000).toISOString();
}

/** Whether two reads of a key row agree on every column. */
function sameRow(a: KeyRow, b: KeyRow): boolean {
  const ka = Object.keys(a) as (keyof KeyRow)[];
  return ka.length === Object.keys(b).length && ka.every((k) => a[k] === b[k]);
}

function requireLive(row: KeyRow): void {
  if (row.state === 'pending_destruction') throw new KeyhavenError('failed_precondition', `key "${row.name}" is scheduled for destruction; cancel that first`);
  if (row.state === 'destroyed') throw new KeyhavenError('key_destroyed', `key "${row.name}" has been destroyed`);
}

export function createKeyStore(deps: { store: Store; barrier: Barrier; audit: AuditLog }): KeyStore {
  const { store, barrier, audit } = deps;
  const byId = new Map<string, CachedKey>();
  const idByName = new Map<string, string>();
  // Taken before each read of a key row: a load whose read began earlier never
  // replaces the entry of one that began later, so a slow background refresh
  // cannot put back an older current version (or an enabled state) after this
  // server's own rotate or disable loaded the newer row.
  let generation = 0;
  // Counts wipe() calls: a load still reading when the server sealed must not put material back.
  let wipes = 0;
  // Material an entry held that its replacement does not (a version destroyed
  // elsewhere, or read twice by overlapping loads). Not zeroed at once: a call
  // already holding it may still be using it. Zeroed at the next wipe().
  let retired: Buffer[] = [];

  const info = async (row: KeyRow, s: Store = store): Promise<KeyInfo> => {
    const versions = await s.listKeyVersions(row.id);
    return {
      id: row.id,
      name: row.name,
      state: row.state,
      currentVersion: row.current_version,
      createdAt: row.created_at,
      updatedAt: row.updated_at,
      rotationPeriodS: row.rotation_period_s,
      nextRotationAt: row.next_rotation_at,
      minDecryptionVersion: row.min_decryption_version,
      destroyAt: row.destroy_at,
      minEncryptionVersion: row.min_encryption_version,
      deletionAllowed: row.deletion_allowed === 1,
      versions: versions.map((v) => ({ version: v.version, tag: v.tag, state: v.state, createdAt: v.created_at, destroyedAt: v.destroyed_at })),
    };
  };

  // Adds a version inside the caller's transaction and makes it current.
  const rotateIn = async (tx: Store, row: KeyRow, now: string): Promise<{ version: number }> => {
    const version = row.current_version + 1;
    await tx.insertKeyVersion({ key_id: row.id, version, tag: newTag(), state: 'active', created_at: now, destroyed_at: null });
    await barrier.put(tx, versionPath(row.id, version), generateKey());
    await tx.updateKey(row.id, { current_version: version, updated_at: now, next_rotation_at: nextRotation(row.rotation_period_s, now) });
    return { version };
  };

  /** Reads a key's row and loads it. */
  const reload = async (find: () => Promise<KeyRow | undefined>): Promise<CachedKey | undefined> => {
    const readAt = ++generation;
    const row = await find();
    return row ? load(row, readAt) : undefined;
  };

  const mustFind = async (s: Store, name: string): Promise<KeyRow> => {
    validateName(name);
    const row = await s.findKeyByName(name);
    if (!row) throw new KeyhavenError('not_found', `key "${name}" does not exist`);
    return row;
  };

  // Loads a key's metadata and the material of versions not cached yet.
  // `readAt`: the generation taken before `row` was read.
  const load = async (row: KeyRow, readAt: number): Promise<CachedKey> => {
    const wipesAtStart = wipes;
    const versions = await store.listKeyVersions(row.id);
    const prev = byId.get(row.id);
    const material = new Map<number, Buffer>();
    const readNow: Buffer[] = [];
    const tags = new Map<number, string>();
    const destroyed = new Set<number>();
    for (const v of versions) {
      tags.set(v.version, v.tag);
      if (v.state === 'destroyed') {
        destroyed.add(v.version);
        continue;
      }
      const cached = prev?.material.get(v.version);
      if (cached) {
        material.set(v.version, cached);
        continue;
      }
      const m = await barrier.get(store, versionPath(row.id, v.version));
      if (!m) {
        // Another process may have destroyed it since the version list was read.
        const now = (await store.listKeyVersions(row.id)).find((x) => x.version === v.version);
        if (now?.state === 'destroyed') {
          destroyed.add(v.version);
          continue;
        }
        throw new KeyhavenError('integrity', `key "${row.name}" version ${v.version} has no stored material`);
      }
      material.set(v.version, m);
      readNow.push(m);
    }
    if (wipes !== wipesAtStart) {
      for (const m of readNow) m.fill(0);
      throw new KeyhavenError('sealed', 'the server was sealed');
    }
    const current = byId.get(row.id);
    if (current && current.readAt > readAt) {
      // A read that began later already finished: keep it, wipe what this one read.
      for (const m of readNow) m.fill(0);
      return current;
    }
    const entry: CachedKey = { row, ref: Buffer.from(row.id, 'hex'), material, tags, destroyed, readAt };
    if (current) {
      const kept = new Set(material.values());
      for (const m of current.material.values()) if (!kept.has(m)) retired.push(m);
    }
    byId.set(row.id, entry);
    idByName.set(row.name, row.id);
    return entry;
  };

  const mutate = async (
    operation: string,
    name: string,
    actor: string,
    fn: (tx: Store, row: KeyRow) => Promise<{ version?: number; details?: Record<string, string | number | boolean> }>,
  ): Promise<KeyInfo> => {
    try {
      // The change and its audit record commit together, or neither does.
      const { row } = await store.transaction(async (tx) => {
        const row = await mustFind(tx, name);
        const out = await fn(tx, row);
        await audit.recordIn(tx, { actor, operation, keyName: name, keyVersion: out.version, result: 'ok', details: out.details });
        return { row };
      });
      const entry = await reload(() => store.findKeyById(row.id));
      return info(entry!.row);
    } catch (e) {
      const code = e instanceof KeyhavenError ? e.code : 'internal';
      await audit.record({ actor, operation, keyName: KEY_NAME.test(name) ? name : undefined, result: code }).catch(() => {});
      throw e;
    }
  };

  // The lowest version not destroyed along with every version below it
  // (Vault's min_available_version): 0 while version 1 still exists.
  const minAvailable = async (s: Store, keyId: string): Promise<number> => {
    let first = 0;
    for (const v of await s.listKeyVersions(keyId)) {
      if (v.state !== 'destroyed') break;
      first = v.version + 1;
    }
    return first;
  };

  // Drops a deleted key from memory, overwriting its material.
  const forget = (keyId: string): void => {
    const entry = byId.get(keyId);
    if (!entry) return;
    for (const m of entry.material.values()) m.fill(0);
    byId.delete(keyId);
    if (idByName.get(entry.row.name) === keyId) idByName.delete(entry.row.name);
  };

  return {
    async create(name, actor, policy = {}) {
      validateName(name);
      const period = checkPeriod(policy.rotationPeriodS);
      const id = randomBytes(KEY_REF_BYTES).toString('hex');
      const now = new Date().toISOString();
      try {
        await store.transaction(async (tx) => {
          if (await tx.findKeyByName(name)) throw new KeyhavenError('already_exists', `key "${name}" already exists`);
          await tx.insertKey({ id, name, state: 'enabled', current_version: 1, created_at: now, updated_at: now, rotation_period_s: period, next_rotation_at: nextRotation(period, now), min_decryption_version: 1, destroy_at: null, min_encryption_version: 0, deletion_allowed: 0 });
          await tx.insertKeyVersion({ key_id: id, version: 1, tag: newTag(), state: 'active', created_at: now, destroyed_at: null });
          await barrier.put(tx, versionPath(id, 1), generateKey());
          await audit.recordIn(tx, { actor, operation: 'key.create', keyName: name, keyVersion: 1, result: 'ok' });
        });
      } catch (e) {
        await audit.record({ actor, operation: 'key.create', keyName: name, result: e instanceof KeyhavenError ? e.code : 'internal' }).catch(() => {});
        throw e;
      }
      const entry = await reload(() => store.findKeyById(id));
      return info(entry!.row);
    },

    async list() {
      const rows = await store.listKeys();
      return Promise.all(rows.map((r) => info(r)));
    },

    async get(name) {
      return info(await mustFind(store, name));
    },

    rotate(name, actor) {
      return mutate('key.rotate', name, actor, async (tx, row) => {
        requireLive(row);
        return rotateIn(tx, row, new Date().toISOString());
      });
    },

    setEnabled(name, enabled, actor) {
      return mutate(enabled ? 'key.enable' : 'key.disable', name, actor, async (tx, row) => {
        requireLive(row);
        await tx.updateKey(row.id, { state: enabled ? 'enabled' : 'disabled', updated_at: new Date().toISOString() });
        return {};
      });
    },

    setPolicy(name, policy, actor) {
      return mutate('key.policy', name, actor, async (tx, row) => {
        requireLive(row);
        const now = new Date().toISOString();
        const patch: Partial<KeyRow> = { updated_at: now };
        const details: Record<string, string | number | boolean> = {};
        if (policy.rotationPeriodS !== undefined) {
          const period = checkPeriod(policy.rotationPeriodS);
          patch.rotation_period_s = period;
          patch.next_rotation_at = nextRotation(period, now);
          details.rotationPeriodS = period ?? 'off';
        }
        if (policy.minDecryptionVersion !== undefined) {
          const min = policy.minDecryptionVersion;
          if (!Number.isInteger(min) || min < 1 || min > row.current_version) {
            throw new KeyhavenError('invalid_argument', `minDecryptionVersion must be an integer from 1 to the current version (${row.current_version})`);
          }
          patch.min_decryption_version = min;
          details.minDecryptionVersion = min;
        }
        if (policy.minEncryptionVersion !== undefined) {
          const min = policy.minEncryptionVersion;
          if (!Number.isInteger(min) || min < 0 || min > row.current_version) {
            throw new KeyhavenError('invalid_argument', `minEncryptionVersion must be 0 or an integer up to the current version (${row.current_version})`);
          }
          patch.min_encryption_version = min;
          details.minEncryptionVersion = min;
        }
        // Checked on the result, whichever side changed: an encryption version
        // below the decryption floor would make ciphertexts nobody can open.
        const minEnc = patch.min_encryption_version ?? row.min_encryption_version;
        const minDec = patch.min_decryption_version ?? row.min_decryption_version;
        if (minEnc > 0 && minEnc < minDec) {
          throw new KeyhavenError('invalid_argument', `the minimum encryption version (${minEnc}) must be 0 or at least the minimum decryption version (${minDec})`);
        }
        const trimmed = await minAvailable(tx, row.id);
        if (minEnc > 0 && minEnc < trimmed) throw new KeyhavenError('invalid_argument', `the minimum encryption version (${minEnc}) may not be below the trimmed versions (${trimmed})`);
        if (minDec < trimmed) throw new KeyhavenError('invalid_argument', `the minimum decryption version (${minDec}) may not be below the trimmed versions (${trimmed})`);
        if (policy.deletionAllowed !== undefined) {
          patch.deletion_allowed = policy.deletionAllowed ? 1 : 0;
          details.deletionAllowed = policy.deletionAllowed;
        }
        await tx.updateKey(row.id, patch);
        return { details };
      });
    },

    scheduleDestroy(name, pendingSeconds, actor) {
      return mutate('key.destroy.schedule', name, actor, async (tx, row) => {
        requireLive(row);
        if (!Number.isFinite(pendingSeconds) || pendingSeconds < 0) throw new KeyhavenError('invalid_argument', 'the pending window must be zero or more');
        const now = new Date();
        const at = new Date(now.getTime() + pendingSeconds * 1000).toISOString();
        await tx.updateKey(row.id, { state: 'pending_destruction', destroy_at: at, updated_at: now.toISOString() });
        return { details: { destroyAt: at } };
      });
    },

    cancelDestroy(name, actor) {
      return mutate('key.destroy.cancel', name, actor, async (tx, row) => {
        if (row.state !== 'pending_destruction') throw new KeyhavenError('failed_precondition', `key "${name}" is not pending destruction`);
        await tx.updateKey(row.id, { state: 'disabled', destroy_at: null, updated_at: new Date().toISOString() });
        return {};
      });
    },

    trim(name, minAvailableVersion, actor) {
      return mutate('key.trim', name, actor, async (tx, row) => {
        requireLive(row);
        const min = minAvailableVersion;
        const current = await minAvailable(tx, row.id);
        if (!Number.isInteger(min) || min < 1) throw new KeyhavenError('invalid_argument', 'the minimum available version must be a positive integer');
        if (min < current) throw new KeyhavenError('invalid_argument', `the minimum available version cannot go down (it is ${current})`);
        if (row.min_encryption_version === 0) throw new KeyhavenError('invalid_argument', 'set a minimum encryption version before trimming');
        if (min > row.min_encryption_version) throw new KeyhavenError('invalid_argument', `the minimum available version cannot be above the minimum encryption version (${row.min_encryption_version})`);
        if (min > row.min_decryption_version) throw new KeyhavenError('invalid_argument', `the minimum available version cannot be above the minimum decryption version (${row.min_decryption_version})`);
        const at = new Date().toISOString();
        let destroyed = 0;
        for (const v of await tx.listKeyVersions(row.id)) {
          if (v.version >= min || v.state === 'destroyed') continue;
          await barrier.delete(tx, versionPath(row.id, v.version));
          await tx.updateKeyVersion(row.id, v.version, { state: 'destroyed', destroyed_at: at });
          destroyed += 1;
        }
        await tx.updateKey(row.id, { updated_at: at });
        return { details: { minAvailableVersion: min, destroyed } };
      });
    },

    async delete(name, actor) {
      let id: string | undefined;
      try {
        await store.transaction(async (tx) => {
          const row = await mustFind(tx, name);
          if (row.deletion_allowed !== 1) throw new KeyhavenError('failed_precondition', `deletion is not allowed for key "${name}"; allow it in the key's configuration first`);
          for (const v of await tx.listKeyVersions(row.id)) if (v.state !== 'destroyed') await barrier.delete(tx, versionPath(row.id, v.version));
          await tx.deleteKey(row.id);
          await audit.recordIn(tx, { actor, operation: 'key.delete', keyName: name, keyVersion: row.current_version, result: 'ok' });
          // Approval requests name keys by name: one still pending would act on
          // whatever key takes the name next. They end with the key.
          const at = new Date().toISOString();
          for (const a of await tx.listApprovals('pending')) {
            if ((JSON.parse(a.params) as { key?: unknown }).key !== name) continue;
            await tx.updateApproval(a.id, { state: 'denied', decided_at: at, result: JSON.stringify({ error: 'key_deleted', reason: `key "${name}" was deleted while the request was pending` }) });
            await audit.recordIn(tx, { actor, operation: 'approval.cancel', keyName: name, result: 'ok', details: { approval: a.id, operation: a.operation, reason: 'key deleted' } });
          }
          id = row.id;
        });
      } catch (e) {
        const code = e instanceof KeyhavenError ? e.code : 'internal';
        await audit.record({ actor, operation: 'key.delete', keyName: KEY_NAME.test(name) ? name : undefined, result: code }).catch(() => {});
        throw e;
      }
      forget(id!);
    },

    async runScheduled(now, actor) {
      const rotated: string[] = [];
      const destroyed: string[] = [];
      const iso = now.toISOString();
      for (const candidate of await store.listKeys()) {
        const dueRotation = candidate.state === 'enabled' && candidate.next_rotation_at !== null && candidate.next_rotation_at <= iso;
        const dueDestroy = candidate.state === 'pending_destruction' && candidate.destroy_at !== null && candidate.destroy_at <= iso;
        if (!dueRotation && !dueDestroy) continue;
        const done = await store.transaction(async (tx) => {
          // Re-read under the write lock: another server may have acted already.
          const row = await tx.findKeyById(candidate.id);
          if (!row) return undefined;
          if (row.state === 'enabled' && row.next_rotation_at !== null && row.next_rotation_at <= iso) {
            const { version } = await rotateIn(tx, row, iso);
            await audit.recordIn(tx, { actor, operation: 'key.rotate', keyName: row.name, keyVersion: version, result: 'ok', details: { scheduled: true } });
            return 'rotated' as const;
          }
          if (row.state === 'pending_destruction' && row.destroy_at !== null && row.destroy_at <= iso) {
            for (const v of await tx.listKeyVersions(row.id)) {
              if (v.state === 'destroyed') continue;
              await barrier.delete(tx, versionPath(row.id, v.version));
              await tx.updateKeyVersion(row.id, v.version, { state: 'destroyed', destroyed_at: iso });
            }
            await tx.updateKey(row.id, { state: 'destroyed', updated_at: iso });
            await audit.recordIn(tx, { actor, operation: 'key.destroy', keyName: row.name, result: 'ok', details: { scheduled: true } });
            return 'destroyed' as const;
          }
          return undefined;
        });
        if (done === 'rotated') rotated.push(candidate.name);
        if (done === 'destroyed') destroyed.push(candidate.name);
        if (done && byId.has(candidate.id)) await reload(() => store.findKeyById(candidate.id));
      }
      return { rotated, destroyed };
    },

    idOf(name) {
      return idByName.get(name);
    },

    liveVersionTags(name) {
      const id = idByName.get(name);
      const entry = id === undefined ? undefined : byId.get(id);
      const out = new Map<number, string>();
      if (!entry) return out;
      for (const [v, tag] of entry.tags) if (!entry.destroyed.has(v) && v >= entry.row.min_decryption_version) out.set(v, tag);
      return out;
    },

    wipe() {
      wipes += 1;
      for (const entry of byId.values()) for (const m of entry.material.values()) m.fill(0);
      for (const m of retired) m.fill(0);
      retired = [];
      byId.clear();
      idByName.clear();
    },

    async ensureLoaded(name) {
      if (idByName.has(name)) return;
      await reload(() => mustFind(store, name));
    },

    destroyVersion(name, version, actor) {
      return mutate('key.destroy-version', name, actor, async (tx, row) => {
        if (!Number.isInteger(version) || version < 1) throw new KeyhavenError('invalid_argument', 'version must be a positive integer');
        if (version === row.current_version) {
          throw new KeyhavenError('failed_precondition', `version ${version} is the current version of key "${name}"; rotate first`);
        }
        const v = (await tx.listKeyVersions(row.id)).find((x) => x.version === version);
        if (!v) throw new KeyhavenError('not_found', `key "${name}" has no version ${version}`);
        if (v.state === 'destroyed') throw new KeyhavenError('key_destroyed', `key "${name}" version ${version} is already destroyed`);
        const at = new Date().toISOString();
        await barrier.delete(tx, versionPath(row.id, version));
        await tx.updateKeyVersion(row.id, version, { state: 'destroyed', destroyed_at: at });
        // The key row changes too: other servers notice changes by their key rows (refreshChanged).
        await tx.updateKey(row.id, { updated_at: at });
        return { version };
      });
    },

    async refresh(name) {
      const entry = await reload(() => mustFind(store, name));
      return info(entry!.row);
    },

    describe(ciphertext) {
      const h = parseHeader(ciphertext);
      return { keyId: h.keyRef.toString('hex'), version: h.version };
    },

    async roundTrip(name, allowedKeys) {
      const probe = randomBytes(32);
      const enc = this.encrypt(name, probe);
      const dec = await this.decrypt(enc.ciphertext, { allowedKeys });
      if (!constantTimeEqual(dec.plaintext, probe)) throw new KeyhavenError('internal', 'round trip returned different bytes');
      return enc;
    },

    async refreshCached() {
      for (const id of [...byId.keys()]) {
        const entry = await reload(() => store.findKeyById(id));
        if (!entry) forget(id); // deleted by another process
      }
    },

    async refreshChanged() {
      if (byId.size === 0) return;
      const readAt = ++generation;
      const rows = new Map((await store.listKeys()).map((r) => [r.id, r]));
      for (const [id, entry] of [...byId]) {
        const row = rows.get(id);
        if (!row) {
          // Deleted by another server, unless this one loaded it after the read.
          if (entry.readAt < readAt) forget(id);
          continue;
        }
        if (!sameRow(entry.row, row)) await load(row, readAt);
      }
    },

    encrypt(name, plaintext, pinned, context) {
      const id = idByName.get(name);
      const entry = id ? byId.get(id) : undefined;
      if (!entry) throw new KeyhavenError('not_found', `key "${name}" is not loaded`);
      if (entry.row.state !== 'enabled') throw new KeyhavenError('key_disabled', `key "${name}" is disabled`);
      const version = pinned ?? entry.row.current_version;
      const material = entry.material.get(version);
      if (!material) throw new KeyhavenError('key_destroyed', `key "${name}" version ${version} is not available`);
      return { ciphertext: sealBlob(material, entry.ref, version, plaintext, context), keyName: entry.row.name, keyId: entry.row.id, version, versionTag: entry.tags.get(version)! };
    },

    async decrypt(ciphertext, opts = {}) {
      const { expectTag, allowedKeys } = opts;
      const header = parseHeader(ciphertext);
      const id = header.keyRef.toString('hex');
      let entry = byId.get(id);
      if (!entry || (!entry.material.has(header.version) && !entry.destroyed.has(header.version))) {
        // Not cached: another process may have created or rotated the key.
        entry = await reload(() => store.findKeyById(id));
        if (!entry) throw new KeyhavenError('unknown_key_id', 'ciphertext names a key this store does not hold');
      }
      if (allowedKeys && !allowedKeys.has(entry.row.name)) {
        throw new KeyhavenError('permission_denied', `ciphertext was made with key "${entry.row.name}", which this plugin is not configured to use`);
      }
      // A disabled key still decrypts: disabling stops new writes (Encrypt and
      // Status fail), while data already written stays readable, as the KMS
      // contract asks of every key version that still exists. Destroying a
      // version is what makes data unreadable.
      if (entry.row.state === 'pending_destruction') {
        throw new KeyhavenError('key_disabled', `key "${entry.row.name}" is scheduled for destruction; cancel it to use the key again`);
      }
      if (entry.destroyed.has(header.version)) {
        throw new KeyhavenError('key_destroyed', `key "${entry.row.name}" version ${header.version} was destroyed; this ciphertext can no longer be decrypted`);
      }
      const material = entry.material.get(header.version);
      if (!material) throw new KeyhavenError('unknown_key_id', `key "${entry.row.name}" has no version ${header.version}`);
      if (header.version < entry.row.min_decryption_version) {
        throw new KeyhavenError('key_disabled', `key "${entry.row.name}" version ${header.version} is retired (below the minimum decryption version ${entry.row.min_decryption_version})`);
      }
      const versionTag = entry.tags.get(header.version)!;
      if (expectTag !== undefined && expectTag !== versionTag) {
        throw new KeyhavenError('unknown_key_id', `key "${entry.row.name}" version ${header.version} here is not the version this key_id names (was a copy of this store rotated separately?)`);
      }
      return { plaintext: openBlob(material, ciphertext, opts.context), keyName: entry.row.name, keyId: entry.row.id, version: header.version, versionTag };
    },

    async withVersionMaterial(name, pinned, use, fn) {
      const id = idByName.get(name);
      let entry = id === undefined ? undefined : byId.get(id);
      // Not cached (or a version rotated in by another process): read it.
      if (!entry || (pinned !== undefined && !entry.tags.has(pinned))) entry = (await reload(() => mustFind(store, name)))!;
      const row = entry.row;
      if (row.state === 'destroyed') throw new KeyhavenError('key_destroyed', `key "${name}" has been destroyed`);
      if (row.state === 'pending_destruction') throw new KeyhavenError('key_disabled', `key "${name}" is scheduled for destruction; cancel it to use the key again`);
      if (use === 'encrypt' && row.state !== 'enabled') throw new KeyhavenError('key_disabled', `key "${name}" is disabled`);
      const version = pinned ?? row.current_version;
      if (!entry.tags.has(version)) throw new KeyhavenError('not_found', `key "${name}" has no version ${version}`);
      if (entry.destroyed.has(version)) throw new KeyhavenError('key_destroyed', `key "${name}" version ${version} was destroyed`);
      if (version < row.min_decryption_version) {
        throw new KeyhavenError('key_disabled', `key "${name}" version ${version} is retired (below the minimum decryption version ${row.min_decryption_version})`);
      }
      if (use === 'encrypt' && version < row.min_encryption_version) {
        throw new KeyhavenError('key_disabled', `key "${name}" version ${version} may not encrypt (below the minimum encryption version ${row.min_encryption_version})`);
      }
      const material = entry.material.get(version);
      if (!material) throw new KeyhavenError('key_destroyed', `key "${name}" version ${version} is not available`);
      return fn(material, version);
    },
  };
}
