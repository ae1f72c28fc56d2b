import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

// Bounded labels only: route templates, status classes, key ids (a few per
// deployment) and operation names. Never an error message or a principal.
// Key names are labels only when metrics.keyNames is set: /metrics may be
// read by whoever reaches the port, and the API hides names from apps without a grant.
export interface ServerMetrics {
  readonly registry: Registry;
  readonly requests: Counter<'route' | 'method' | 'status_class'>;
  readonly duration: Histogram<'route' | 'method'>;
  /** `key` is given as the key's name; the label holds its id unless keyNames is set. */
  readonly cryptoOps: { inc(labels: { key: string; operation: string; result: string }): void };
  readonly auditWrite: Histogram;
  readonly sealed: Gauge;
}

export interface ServerMetricsOptions {
  /** Label crypto metrics with key names instead of key ids. */
  readonly keyNames: boolean;
  /** A loaded key's id by name, from memory (undefined if not loaded, or sealed). */
  readonly keyId: (name: string) => string | undefined;
}

// A name that is not a loaded key (refused before the key was read) is counted
// under one label: the name came from the caller and may not exist.
const UNKNOWN_KEY = 'unknown';

export function createServerMetrics(opts: ServerMetricsOptions = { keyNames: false, keyId: () => undefined }): ServerMetrics {
  const registry = new Registry();
  // The default 10 ms event-loop sampling wakes an idle server 100 times a second.
  collectDefaultMetrics({ register: registry, prefix: 'keyhaven_', eventLoopMonitoringPrecision: 100 });
  const buckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 3];
  const cryptoOps = new Counter({ name: 'keyhaven_crypto_operations_total', help: `Crypto operations by key ${opts.keyNames ? 'name' : 'id'}, operation and result (batch items count one each)`, labelNames: ['key', 'operation', 'result'] as const, registers: [registry] });
  return {
    registry,
    requests: new Counter({ name: 'keyhaven_http_requests_total', help: 'HTTP requests by route, method and status class', labelNames: ['route', 'method', 'status_class'] as const, registers: [registry] }),
    duration: new Histogram({ name: 'keyhaven_http_request_duration_seconds', help: 'HTTP request latency by route', labelNames: ['route', 'method'] as const, buckets, registers: [registry] }),
    cryptoOps: {
      inc({ key, operation, result }) {
        const id = opts.keyId(key);
        cryptoOps.inc({ key: id === undefined ? UNKNOWN_KEY : opts.keyNames ? key : id, operation, result });
      },
    },
    auditWrite: new Histogram({ name: 'keyhaven_audit_write_seconds', help: 'Time from queueing a request audit record to it being durably stored', buckets, registers: [registry] }),
    sealed: new Gauge({ name: 'keyhaven_seal_state', help: '0 unsealed, 1 sealed, 2 not initialised', registers: [registry] }),
  };
}
