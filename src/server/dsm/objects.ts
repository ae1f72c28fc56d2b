import { createHash } from 'node:crypto';
import type { KeyInfo, KeyVersionInfo } from '../../keys/key-store.js';
import type { Store } from '../../storage/store.js';

// Fortanix DSM security objects, as keyhaven key versions. DSM objects have
// no versions: a rekey makes a new object linked to the old one. So each
// keyhaven key VERSION is one DSM object, with a kid derived from (store id,
// key id, version) — every server on one database computes the same kid, and
// nothing new is stored. The current version carries the key's name; older
// versions are named "<name> (version N)" (DSM renames a rotated key to
// "<name> (rotated at …)"; a version number cannot collide, as keyhaven key
// names hold no spaces).

/** A UUID (RFC 9562 version 8: custom) from the SHA-256 of a label and parts. */
export function uuidOf(label: string, ...parts: (string | number)[]): string {
  const h = createHash('sha256').update([label, ...parts.map(String)].join('\0')).digest();
  h[6] = (h[6]! & 0x0f) | 0x80;
  h[8] = (h[8]! & 0x3f) | 0x80;
  const x = h.subarray(0, 16).toString('hex');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20, 32)}`;
}

export function dsmKid(storeId: string, keyId: string, version: number): string {
  return uuidOf('keyhaven dsm kid v1', storeId, keyId, version);
}

export const UUID = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;

/** DSM times: ISO 8601 basic, "20240131T120000Z". */
function dsmTime(iso: string): string {
  return iso.replace(/\.\d+Z$/, 'Z').replace(/[-:]/g, '');
}

const OLD_NAME = /^(.{1,128}) \(version (\d{1,10})\)$/;

/** An object's DSM name: the key name for the current version, "<name> (version N)" before it. */
function objectName(keyName: string, version: number, currentVersion: number): string {
  return version === currentVersion ? keyName : `${keyName} (version ${version})`;
}

/** A DSM name → key name and version (undefined: the current version). */
export function parseObjectName(name: string): { keyName: string; version: number | undefined } {
  const m = OLD_NAME.exec(name);
  return m ? { keyName: m[1]!, version: Number(m[2]) } : { keyName: name, version: undefined };
}

export interface ObjectRef {
  readonly keyName: string;
  readonly keyId: string;
  readonly version: number;
}

export interface KidIndexOptions {
  /** Least time between two rebuilds, in ms; a kid missing from a build younger than this is missing. */
  readonly rebuildIntervalMs?: number;
  /** The clock (tests move it by hand). */
  readonly now?: () => number;
}

/**
 * kid → (key, version). Built from the key table (versions run 1..current
 * and are never removed, only destroyed); rebuilt on a miss, since another
 * server may have created or rotated a key — but at most once per interval,
 * so a stream of unknown kids costs one key-table read per interval, not one
 * per request: until the next rebuild, the latest build is the negative cache.
 * Concurrent misses share one read. Kids this server hands out (learn) are
 * added at once, so a client may use a kid it was just given; a kid made on
 * another server resolves here within one interval.
 */
export function createKidIndex(store: Pick<Store, 'listKeys'>, opts: KidIndexOptions = {}) {
  const interval = opts.rebuildIntervalMs ?? 1000;
  const now = opts.now ?? Date.now;
  let byKid = new Map<string, ObjectRef>();
  let builtAt = -Infinity;
  let rebuilds = 0;
  let rebuilding: Promise<void> | undefined;
  // Kids learnt while a rebuild reads: its read may predate them.
  let learntDuring: Map<string, ObjectRef> | undefined;
  const rebuild = (storeId: string) => {
    rebuilding ??= (async () => {
      builtAt = now();
      rebuilds += 1;
      learntDuring = new Map();
      const next = new Map<string, ObjectRef>();
      for (const row of await store.listKeys()) {
        for (let v = 1; v <= row.current_version; v++) next.set(dsmKid(storeId, row.id, v), { keyName: row.name, keyId: row.id, version: v });
      }
      for (const [kid, ref] of learntDuring) if (!next.has(kid)) next.set(kid, ref);
      byKid = next;
    })().finally(() => {
      learntDuring = undefined;
      rebuilding = undefined;
    });
    return rebuilding;
  };
  return {
    async resolve(storeId: string, kid: string): Promise<ObjectRef | undefined> {
      const k = kid.toLowerCase();
      const hit = byKid.get(k);
      if (hit) return hit;
      if (rebuilding) await rebuilding;
      else if (now() - builtAt >= interval) await rebuild(storeId);
      return byKid.get(k);
    },
    /** Adds a key's versions (a key this server just answered with). */
    learn(storeId: string, k: Pick<KeyInfo, 'id' | 'name' | 'currentVersion'>): void {
      for (let v = 1; v <= k.currentVersion; v++) {
        const kid = dsmKid(storeId, k.id, v);
        const ref = { keyName: k.name, keyId: k.id, version: v };
        byKid.set(kid, ref);
        learntDuring?.set(kid, ref);
      }
    },
    /** How many times the index was read from the store (tests). */
    rebuilds: () => rebuilds,
  };
}

export type KidIndex = ReturnType<typeof createKidIndex>;

/** What a version can do now, as DSM spells it. */
function status(k: KeyInfo, v: KeyVersionInfo): { state: string; enabled: boolean; keyOps: string[] } {
  if (k.state === 'destroyed' || v.state === 'destroyed') return { state: 'Destroyed', enabled: false, keyOps: [] };
  if (k.state === 'pending_destruction' || v.version < k.minDecryptionVersion) return { state: 'Deactivated', enabled: false, keyOps: [] };
  // A disabled keyhaven key refuses encryption but still decrypts what it wrote.
  if (k.state === 'disabled') return { state: 'Active', enabled: false, keyOps: ['DECRYPT'] };
  if (v.version < k.minEncryptionVersion) return { state: 'Active', enabled: true, keyOps: ['DECRYPT'] };
  return { state: 'Active', enabled: true, keyOps: ['ENCRYPT', 'DECRYPT'] };
}

/** One DSM security object (Sobject) for a key version: metadata only, never a value. */
export function sobjectView(storeId: string, k: KeyInfo, v: KeyVersionInfo) {
  const kid = (n: number) => dsmKid(storeId, k.id, n);
  const next = k.versions.find((x) => x.version === v.version + 1);
  const st = status(k, v);
  const links: { replacement?: string; replaced?: string } = {};
  if (next) links.replacement = kid(next.version);
  if (v.version > 1) links.replaced = kid(v.version - 1);
  return {
    acct_id: uuidOf('keyhaven dsm account v1', storeId),
    kid: kid(v.version),
    name: objectName(k.name, v.version, k.currentVersion),
    obj_type: 'AES',
    key_size: 256,
    key_ops: st.keyOps,
    enabled: st.enabled,
    state: st.state,
    origin: 'FortanixHSM',
    public_only: false,
    never_exportable: true,
    created_at: dsmTime(v.createdAt),
    // keyhaven does not track last use per version; the creation time stands in.
    lastused_at: dsmTime(v.createdAt),
    creator: { user: uuidOf('keyhaven dsm creator v1', storeId) },
    ...(v.destroyedAt ? { destruction_date: dsmTime(v.destroyedAt) } : {}),
    ...(Object.keys(links).length ? { links } : {}),
    custom_metadata: { 'keyhaven-key': k.name, 'keyhaven-version': String(v.version) },
  };
}

