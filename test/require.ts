import type { TestContext } from 'node:test';

/**
 * Skips a test whose outside dependency is missing, with the reason; under
 * KEYHAVEN_REQUIRE_ALL=1 (CI) a missing dependency fails the test instead.
 * Returns whether the test may go on.
 */
export function requireDependency(t: TestContext, available: boolean, reason: string): boolean {
  if (available) return true;
  if (process.env.KEYHAVEN_REQUIRE_ALL === '1') throw new Error(`required dependency missing: ${reason}`);
  t.skip(`skipped: dependency missing: ${reason}`);
  return false;
}
