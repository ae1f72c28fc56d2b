/**
 * The provider runtime's clock: milliseconds, as Date.now. One clock is given
 * to a provider and to its transport (HTTP client, KMS SDK wrapper), so that a
 * deadline computed by one is measured by the other, and tests can move it.
 */
export type Clock = () => number;

export const systemClock: Clock = Date.now;

/**
 * The one deadline rule: an operation (a whole health check, one Encrypt, one
 * Decrypt, retries and re-reads included) ends `timeoutMs` after it starts on
 * the runtime's clock. The provider's `timeout` is sized to fit the
 * apiserver's own per-call deadline (3 s by default).
 */
export function deadlineAfter(clock: Clock, timeoutMs: number): number {
  return clock() + timeoutMs;
}
