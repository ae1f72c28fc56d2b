import type { ServerCore } from './core.js';
import type { ServerMetrics } from './metrics.js';

/** What every dialect's routes are given: the server core and its metrics, and a few settings. */
export interface RouteDeps {
  readonly core: ServerCore;
  readonly metrics: ServerMetrics;
  readonly destroyPendingS: number;
  /** For the sign-in routes' `config.rateLimit`. */
  readonly signInRateLimit: { readonly max: number; readonly timeWindow: number };
}
