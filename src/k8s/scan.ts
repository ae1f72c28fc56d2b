import { keyPrefix, objectName, objectPath } from './etcd-key.js';
import { classifyValue, type StorageForm } from './storage/storage-form.js';

/** What the key server (or an embedded store) says of a key_id: keys/key-id-lookup.ts. */
export interface KeyIdStatus {
  readonly keyId: string;
  readonly known: boolean;
  readonly key?: string;
  readonly version?: number;
  /** Why data under the version is at risk (disabled, below the minimum decryption version, pending destruction, destroyed). */
  readonly flags: readonly string[];
}

/** What a scan reads: pages of an etcd key range (a live etcd or a served snapshot). */
export interface ScanSource {
  readonly label: string;
  /** When the contents are from (a snapshot's), if not now. */
  readonly takenAt?: string;
  pages(prefix: string, pageSize?: number): AsyncIterable<ReadonlyArray<{ key: string; value: Buffer }>>;
}

export interface ScanOptions {
  /** The apiserver's etcd prefix (`--etcd-prefix`), default `/registry`. */
  readonly prefix: string;
  /** Resources whose unencrypted values count as plaintext findings (default: secrets). */
  readonly sensitive?: readonly string[];
  readonly pageSize?: number;
  /** Maps KMS v2 key_ids to keyhaven key versions (the key server, or an embedded store); absent: key_ids are listed unresolved. */
  readonly lookup?: (keyIds: readonly string[]) => Promise<readonly KeyIdStatus[]>;
  /** Called after each page with the number of values read so far. */
  readonly onProgress?: (read: number) => void;
  /** When etcd held what is read (ISO 8601), overriding the source's own time: a snapshot's real time. */
  readonly at?: string;
}

/** One line of the table: how many values of a resource are stored in one form. */
export interface FormRow {
  readonly resource: string;
  /** unencrypted, identity is the same bytes; aescbc, aesgcm, secretbox, kms-v1, kms-v2, malformed */
  readonly form: string;
  /** The encoding (unencrypted), the key name (aescbc/aesgcm/secretbox) or the provider name (kms). */
  readonly detail: string;
  /** For kms-v2: the key_id. */
  readonly keyId?: string;
  count: number;
}

export interface KeyIdRow extends KeyIdStatus {
  readonly provider: string;
  readonly count: number;
  /** Looked up: false when the scan had no key server or store to ask. */
  readonly resolved: boolean;
}

export interface ScanResult {
  readonly source: string;
  readonly prefix: string;
  /** When etcd held what was read: now for a live etcd, the snapshot's time for a snapshot (what retire-check compares). */
  readonly scannedAt: string;
  readonly objects: number;
  readonly rows: readonly FormRow[];
  /** `namespace/name` of each sensitive object stored unencrypted, by resource. */
  readonly plaintext: ReadonlyArray<{ resource: string; name: string }>;
  readonly keyIds: readonly KeyIdRow[];
  /** Values that claim an encrypted form but do not parse: the etcd key and why (never the value). */
  readonly malformed: ReadonlyArray<{ key: string; form: string; reason: string }>;
}

const formDetail = (f: StorageForm): { form: string; detail: string; keyId?: string } => {
  switch (f.kind) {
    case 'unencrypted':
      return { form: 'unencrypted', detail: f.encoding };
    case 'aescbc':
    case 'aesgcm':
    case 'secretbox':
      return { form: f.kind, detail: f.keyName };
    case 'kms-v1':
      return { form: 'kms-v1', detail: f.provider };
    case 'kms-v2':
      return { form: 'kms-v2', detail: f.provider, keyId: f.keyId };
    case 'malformed':
      return { form: 'malformed', detail: f.provider ? `${f.form} ${f.provider}` : f.form };
  }
};

/**
 * Reads every value under the prefix once, page by page, and counts how each
 * is stored. Values are classified and dropped at once: a scan holds one page
 * and the counts, never a value, and writes nothing.
 */
export async function scanEtcd(source: ScanSource, o: ScanOptions): Promise<ScanResult> {
  const scannedAt = o.at ?? source.takenAt ?? new Date().toISOString();
  const sensitive = new Set(o.sensitive ?? ['secrets']);
  const rows = new Map<string, FormRow>();
  const byKeyId = new Map<string, { provider: string; count: number }>();
  const plaintext: { resource: string; name: string }[] = [];
  const malformed: { key: string; form: string; reason: string }[] = [];
  let objects = 0;
  for await (const page of source.pages(keyPrefix(o.prefix), o.pageSize)) {
    for (const { key, value } of page) {
      objects += 1;
      const path = objectPath(o.prefix, key);
      const f = classifyValue(value);
      const d = formDetail(f);
      const id = `${path.resource}\u0000${d.form}\u0000${d.detail}\u0000${d.keyId ?? ''}`;
      const row = rows.get(id);
      if (row) row.count += 1;
      else rows.set(id, { resource: path.resource, ...d, count: 1 });
      if (f.kind === 'unencrypted' && sensitive.has(path.resource)) plaintext.push({ resource: path.resource, name: objectName(path) });
      if (f.kind === 'kms-v2') {
        const k = byKeyId.get(f.keyId);
        if (k) k.count += 1;
        else byKeyId.set(f.keyId, { provider: f.provider, count: 1 });
      }
      if (f.kind === 'malformed') malformed.push({ key, form: f.form, reason: f.reason });
    }
    o.onProgress?.(objects);
  }
  const ids = [...byKeyId.keys()];
  const statuses = o.lookup && ids.length > 0 ? await o.lookup(ids) : undefined;
  const statusOf = new Map((statuses ?? []).map((s) => [s.keyId, s]));
  const keyIds: KeyIdRow[] = ids.map((keyId) => {
    const { provider, count } = byKeyId.get(keyId)!;
    const s = statusOf.get(keyId);
    return { keyId, provider, count, resolved: s !== undefined, known: s?.known ?? false, ...(s?.key !== undefined ? { key: s.key, version: s.version } : {}), flags: s?.flags ?? [] };
  });
  const sorted = [...rows.values()].sort((a, b) => a.resource.localeCompare(b.resource) || a.form.localeCompare(b.form) || a.detail.localeCompare(b.detail) || (a.keyId ?? '').localeCompare(b.keyId ?? ''));
  // Taken before the first read: anything written later is not in this scan.
  return { source: source.label, prefix: o.prefix, scannedAt, objects, rows: sorted, plaintext, keyIds, malformed };
}

/** Conditions `--fail-on` can name. */
export const FAIL_ON = ['plaintext', 'retired', 'unknown', 'malformed'] as const;
export type FailOn = (typeof FAIL_ON)[number];

/** The findings that fail a scan under the given conditions, each as one line for the operator. */
export function scanFailures(r: ScanResult, on: readonly FailOn[]): string[] {
  const out: string[] = [];
  if (on.includes('plaintext') && r.plaintext.length > 0) out.push(`${r.plaintext.length} sensitive object(s) stored unencrypted`);
  if (on.includes('retired')) {
    for (const k of r.keyIds) if (k.flags.length > 0) out.push(`${k.count} object(s) under ${k.key ?? k.keyId} v${k.version ?? '?'} (${k.flags.join(', ')})`);
  }
  if (on.includes('unknown')) {
    for (const k of r.keyIds) if (k.resolved && !k.known) out.push(`${k.count} object(s) under key_id ${k.keyId}, which the key server does not know`);
  }
  if (on.includes('malformed') && r.malformed.length > 0) out.push(`${r.malformed.length} value(s) that do not parse`);
  return out;
}
