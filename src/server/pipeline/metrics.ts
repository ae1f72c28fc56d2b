import type { Counter, Histogram } from 'prom-client';
import type { ServerMetrics } from '../metrics.js';

interface MethodSeries {
  readonly duration: Histogram.Internal<'route' | 'method'>;
  /** Request counters by status class (index 1-5). */
  readonly byClass: (Counter.Internal | undefined)[];
}

/**
 * One route's request metrics with their label children bound once (a label
 * lookup per request costs more than the count itself). Series appear on
 * first use, so /metrics lists only what happened.
 */
export class RouteSeries {
  readonly #metrics: ServerMetrics;
  readonly #route: string;
  readonly #byMethod = new Map<string, MethodSeries>();

  constructor(metrics: ServerMetrics, route: string) {
    this.#metrics = metrics;
    this.#route = route;
  }

  observe(method: string, status: number, seconds: number): void {
    let m = this.#byMethod.get(method);
    if (!m) {
      m = { duration: this.#metrics.duration.labels(this.#route, method), byClass: [] };
      this.#byMethod.set(method, m);
    }
    const cls = Math.floor(status / 100);
    let counter = m.byClass[cls];
    if (!counter) {
      counter = this.#metrics.requests.labels(this.#route, method, `${cls}xx`);
      m.byClass[cls] = counter;
    }
    counter.inc();
    m.duration.observe(seconds);
  }
}
