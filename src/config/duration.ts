import { z } from 'zod';

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** A duration such as "500ms", "5s", "5m", "1h" or "30d", parsed to milliseconds. */
export const durationMs = z
  .string()
  .regex(/^\d{1,9}(ms|s|m|h|d)$/, 'must be a duration such as 500ms, 5s, 5m, 1h or 30d')
  .transform((v) => parseDurationMs(v)!);

/** Parses "30d", "12h", "90m", "500ms"; undefined if it is not a duration. */
function parseDurationMs(v: string): number | undefined {
  const m = /^(\d{1,9})(ms|s|m|h|d)$/.exec(v);
  return m ? Number(m[1]) * UNITS[m[2]!]! : undefined;
}
