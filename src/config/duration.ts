import { z } from 'zod';

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** A duration such as "500ms", "5s", "5m" or "1h", parsed to milliseconds. */
export const durationMs = z
  .string()
  .regex(/^\d{1,9}(ms|s|m|h)$/, 'must be a duration such as 500ms, 5s, 5m or 1h')
  .transform((v) => {
    const m = /^(\d+)(ms|s|m|h)$/.exec(v)!;
    return Number(m[1]) * UNITS[m[2]!]!;
  });
