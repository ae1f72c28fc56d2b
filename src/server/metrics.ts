import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

// Bounded labels only: route templates, status classes, key names (a few
// per deployment) and operation names. Never an error message or a principal.
export interface ServerMetrics {
  readonly registry: Registry;
  readonly requests: Counter<'route' | 'method' | 'status_class'>;
  readonly duration: Histogram<'route' | 'method'>;
  readonly cryptoOps: Counter<'key' | 'operation' | 'result'>;
  readonly auditWrite: Histogram;
  readonly sealed: Gauge;
}

export function createServerMetrics(): ServerMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'keyhaven_' });
  const buckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 3];
  return {
    registry,
    requests: new Counter({ name: 'keyhaven_http_requests_total', help: 'HTTP requests by route, method and status class', labelNames: ['route', 'method', 'status_class'] as const, registers: [registry] }),
    duration: new Histogram({ name: 'keyhaven_http_request_duration_seconds', help: 'HTTP request latency by route', labelNames: ['route', 'method'] as const, buckets, registers: [registry] }),
    cryptoOps: new Counter({ name: 'keyhaven_crypto_operations_total', help: 'Crypto operations by key, operation and result (batch items count one each)', labelNames: ['key', 'operation', 'result'] as const, registers: [registry] }),
    auditWrite: new Histogram({ name: 'keyhaven_audit_write_seconds', help: 'Time from queueing a request audit record to it being durably stored', buckets, registers: [registry] }),
    sealed: new Gauge({ name: 'keyhaven_seal_state', help: '0 unsealed, 1 sealed, 2 not initialised', registers: [registry] }),
  };
}
