import type { KeyInfo } from '../keys/key-store.js';

export type OutputFormat = 'text' | 'json';

export function printJson(v: unknown): void {
  process.stdout.write(`${JSON.stringify(v, null, 2)}\n`);
}

/** Columns padded to their widest cell; the first row is the header. */
export function formatTable(rows: readonly (readonly string[])[]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n') + '\n';
}

/** The fields a key table needs: the embedded store's KeyInfo and the server's key view both have them. */
type KeyRowView = Pick<KeyInfo, 'name' | 'currentVersion' | 'updatedAt'> & { state: string; versions: readonly { version: number; state: string }[] };

export function formatKeyTable<K extends KeyRowView>(keys: readonly K[], extra?: { header: string; cell: (k: K) => string }): string {
  const rows = [['NAME', 'STATE', 'CURRENT', 'VERSIONS', 'DESTROYED', ...(extra ? [extra.header] : []), 'UPDATED']];
  for (const k of keys) {
    const destroyed = k.versions.filter((v) => v.state === 'destroyed').map((v) => v.version);
    rows.push([k.name, k.state, String(k.currentVersion), String(k.versions.length), destroyed.length ? destroyed.join(',') : '-', ...(extra ? [extra.cell(k)] : []), k.updatedAt]);
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
