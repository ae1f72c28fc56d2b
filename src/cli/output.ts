import type { KeyInfo } from '../keys/key-store.js';

export type OutputFormat = 'text' | 'json';

export function printJson(v: unknown): void {
  process.stdout.write(`${JSON.stringify(v, null, 2)}\n`);
}

export function formatKeyTable(keys: readonly KeyInfo[]): string {
  const rows = [['NAME', 'STATE', 'CURRENT', 'VERSIONS', 'DESTROYED', 'UPDATED']];
  for (const k of keys) {
    const destroyed = k.versions.filter((v) => v.state === 'destroyed').map((v) => v.version);
    rows.push([k.name, k.state, String(k.currentVersion), String(k.versions.length), destroyed.length ? destroyed.join(',') : '-', k.updatedAt]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n') + '\n';
}
