import type { KeyInfo } from './key-store.js';
import { parseKeyId } from './key-id.js';

/** What a key_id found in etcd means to the store that issued it. */
export interface KeyIdStatus {
  readonly keyId: string;
  /** Issued by this store for a key version it still lists. */
  readonly known: boolean;
  readonly key?: string;
  readonly version?: number;
  /** The version: retired = below the key's minDecryptionVersion. */
  readonly state?: 'active' | 'retired' | 'destroyed';
  readonly keyState?: KeyInfo['state'];
  /** The key's current version. */
  readonly current?: boolean;
  /**
   * Why data under this version is at risk or on its way out: `key-disabled`,
   * `below-min-decryption`, `pending-destruction`, `destroyed` (its data can
   * no longer be read). Empty: the version decrypts normally.
   */
  readonly flags: readonly string[];
}

/**
 * Maps key_ids to key versions of one store: the store id, key ref and
 * version tag must all match, so a key_id from another store or from a copy
 * of this one rotated separately is not mistaken for ours.
 */
export function lookupKeyIds(storeId: string, keys: readonly KeyInfo[], keyIds: readonly string[]): KeyIdStatus[] {
  const byRef = new Map(keys.map((k) => [k.id, k]));
  return keyIds.map((keyId) => {
    let parsed;
    try {
      parsed = parseKeyId(keyId);
    } catch {
      return { keyId, known: false, flags: [] };
    }
    const k = parsed.storeId === storeId ? byRef.get(parsed.keyRef) : undefined;
    const v = k?.versions.find((x) => x.version === parsed.version);
    if (!k || !v || v.tag !== parsed.tag) return { keyId, known: false, flags: [] };
    const destroyed = v.state === 'destroyed' || k.state === 'destroyed';
    const below = v.version < k.minDecryptionVersion;
    const flags: string[] = [];
    if (destroyed) flags.push('destroyed');
    if (k.state === 'disabled') flags.push('key-disabled');
    if (k.state === 'pending_destruction') flags.push('pending-destruction');
    if (below) flags.push('below-min-decryption');
    return {
      keyId,
      known: true,
      key: k.name,
      version: v.version,
      state: destroyed ? 'destroyed' : below ? 'retired' : 'active',
      keyState: k.state,
      current: v.version === k.currentVersion,
      flags,
    };
  });
}
