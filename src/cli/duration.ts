import parseDuration from 'parse-duration';
import { KeyhavenError } from '../errors.js';

// Units glued to numbers, no spaces or words: "1h30m", "90s", "1.5h", "2w".
// parse-duration alone also takes "5" (as ms) and "3m ago"; a flag should not.
const SHAPE = /^(?:\d{1,9}(?:\.\d{1,6})?(?:ms|s|m|h|d|w))+$/;

/** Milliseconds of a duration flag such as "1h30m", or undefined when `v` is not one. */
function durationOrUndefined(v: string): number | undefined {
  if (!SHAPE.test(v)) return undefined;
  const ms = parseDuration(v);
  return ms === null || !Number.isFinite(ms) ? undefined : Math.round(ms);
}

/**
 * A duration flag ("1h30m", "500ms", "30d") in milliseconds; the error names
 * the flag. Every CLI flag taking a duration goes through here.
 */
export function parseDurationFlag(flag: string, v: string, bounds: { minMs?: number; maxMs?: number } = {}): number {
  const ms = durationOrUndefined(v);
  if (ms === undefined) throw new KeyhavenError('invalid_argument', `${flag} must be a duration like 1h30m, 90s or 30d, not ${JSON.stringify(v)}`);
  const min = bounds.minMs ?? 1;
  if (ms < min) throw new KeyhavenError('invalid_argument', `${flag} must be at least ${compactDuration(min)}, not ${JSON.stringify(v)}`);
  if (bounds.maxMs !== undefined && ms > bounds.maxMs) throw new KeyhavenError('invalid_argument', `${flag} must be at most ${compactDuration(bounds.maxMs)}, not ${JSON.stringify(v)}`);
  return ms;
}

/**
 * A point in time for a flag such as --since: a duration back from `now`
 * ("1h" is an hour ago) or an ISO 8601 time. Returned as ISO 8601 UTC.
 */
export function parseTimeFlag(flag: string, v: string, now: number = Date.now()): string {
  const ms = durationOrUndefined(v);
  if (ms !== undefined) return new Date(now - ms).toISOString();
  // An ISO date or date-time (with Z or an offset); Date.parse alone takes far more.
  if (/^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:?\d{2})?)?$/i.test(v)) {
    const t = Date.parse(v.replace(' ', 'T'));
    if (!Number.isNaN(t)) return new Date(t).toISOString();
  }
  throw new KeyhavenError('invalid_argument', `${flag} must be a duration like 1h30m or an ISO 8601 time, not ${JSON.stringify(v)}`);
}

/**
 * Milliseconds in the one-unit form configs and the server take ("90m",
 * "36h", "30d"): the largest unit that divides it exactly.
 */
export function compactDuration(ms: number): string {
  for (const [unit, size] of [['d', 86_400_000], ['h', 3_600_000], ['m', 60_000], ['s', 1000]] as const) {
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

/** Milliseconds as a Go duration ("1h30m", "24h", "1d" becomes "24h"): Kubernetes manifests take no days. */
export function goDuration(ms: number): string {
  let rest = Math.round(ms);
  let out = '';
  for (const [unit, size] of [['h', 3_600_000], ['m', 60_000], ['s', 1000], ['ms', 1]] as const) {
    const n = Math.floor(rest / size);
    rest -= n * size;
    if (n > 0) out += `${n}${unit}`;
  }
  return out || '0s';
}
