import { stringify as yamlStringify } from 'yaml';
import type { KeyInfo } from '../keys/key-store.js';

export type OutputFormat = 'text' | 'json' | 'yaml';

/*
 * One shape convention for -o json and -o yaml, on every command:
 *   - a list prints an object with one plural field: {"keys": [...]}
 *   - a single thing prints that object itself
 *   - times stay ISO 8601 (relative ages are for human tables only)
 *   - nested data is nested (an audit record's details is an object, not a string)
 */

function printJson(v: unknown): void {
  process.stdout.write(`${JSON.stringify(v, null, 2)}\n`);
}

/** Prints data as JSON or YAML; text output is each command's own. */
export function printData(v: unknown, format: Exclude<OutputFormat, 'text'>): void {
  if (format === 'json') printJson(v);
  // The same value as JSON, so both formats carry the same shape (undefined fields dropped).
  else process.stdout.write(yamlStringify(JSON.parse(JSON.stringify(v ?? null)) as unknown, { lineWidth: 0 }));
}

/** Columns padded to their widest cell; the first row is the header. */
export function formatTable(rows: readonly (readonly string[])[]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n') + '\n';
}

/**
 * An ISO time as an age for a human table: "12s ago", "3m ago", "5h ago",
 * "2d ago"; a future time as "in 3m". Anything unparsable is shown as given.
 */
export function relativeTime(iso: string | null | undefined, now: number = Date.now()): string {
  if (iso === null || iso === undefined || iso === '') return '-';
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return iso;
  const d = now - t;
  const s = Math.floor(Math.abs(d) / 1000);
  const age = s < 60 ? `${s}s` : s < 3600 ? `${Math.floor(s / 60)}m` : s < 86_400 ? `${Math.floor(s / 3600)}h` : `${Math.floor(s / 86_400)}d`;
  if (s === 0) return 'now';
  return d >= 0 ? `${age} ago` : `in ${age}`;
}

/** The fields a key table needs: the embedded store's KeyInfo and the server's key view both have them. */
type KeyRowView = Pick<KeyInfo, 'name' | 'currentVersion' | 'updatedAt'> & { state: string; versions: readonly { version: number; state: string }[] };

export function formatKeyTable<K extends KeyRowView>(keys: readonly K[], extra?: { header: string; cell: (k: K) => string }): string {
  const rows = [['NAME', 'STATE', 'CURRENT', 'VERSIONS', 'DESTROYED', ...(extra ? [extra.header] : []), 'UPDATED']];
  const now = Date.now();
  for (const k of keys) {
    const destroyed = k.versions.filter((v) => v.state === 'destroyed').map((v) => v.version);
    rows.push([k.name, k.state, String(k.currentVersion), String(k.versions.length), destroyed.length ? destroyed.join(',') : '-', ...(extra ? [extra.cell(k)] : []), relativeTime(k.updatedAt, now)]);
  }
  return formatTable(rows);
}

/**
 * Text from outside (etcd keys, provider names) for a terminal: control
 * characters shown as escapes, so a crafted name cannot move the cursor,
 * clear lines or set the window title.
 */
export function printable(s: string): string {
  return s.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}
