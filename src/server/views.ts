import type { KeyInfo } from '../keys/key-store.js';

/** Seconds as the largest whole unit: 2592000 → "30d". */
function formatPeriod(s: number | null): string | null {
  if (s === null) return null;
  for (const [unit, n] of [['d', 86400], ['h', 3600], ['m', 60]] as const) if (s % n === 0) return `${s / n}${unit}`;
  return `${s}s`;
}

export function parsePeriodS(v: string): number {
  const m = /^(\d{1,9})(s|m|h|d)$/.exec(v)!;
  return Number(m[1]) * { s: 1, m: 60, h: 3600, d: 86400 }[m[2] as 's' | 'm' | 'h' | 'd'];
}

/** A key as the API shows it: metadata only (no ids, no material). */
export function keyView(k: KeyInfo) {
  return {
    name: k.name,
    state: k.state,
    currentVersion: k.currentVersion,
    minDecryptionVersion: k.minDecryptionVersion,
    rotationPeriod: formatPeriod(k.rotationPeriodS),
    nextRotationAt: k.nextRotationAt,
    destroyAt: k.destroyAt,
    createdAt: k.createdAt,
    updatedAt: k.updatedAt,
    versions: k.versions.map((v) => ({ version: v.version, state: v.state, createdAt: v.createdAt, destroyedAt: v.destroyedAt })),
  };
}
