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
  /** Requests refused because their audit record could not be stored. */
  readonly auditFailures: Counter;
  readonly sealed: Gauge;
  /** Replaces the per-key counts of cluster nodes whose plugin still writes with an older key version. */
  setNodesOnOldVersion(counts: readonly KeyNodeCount[]): void;
}

export interface KeyNodeCount {
  readonly id: string;
  readonly name: string;
  readonly nodes: number;
}

/** A plugin report older than this is a node gone (drained, replaced): it no longer counts. */
export const REPORT_FRESH_MS = 60 * 60 * 1000;

/**
 * Per key with a recent plugin report: how many of those nodes report a
 * version below the key's current one (0 included, so an alert sees the
 * series fall back rather than vanish).
 */
export function countNodesOnOldVersion(
  keys: ReadonlyArray<{ readonly id: string; readonly name: string; readonly currentVersion: number }>,
  reports: ReadonlyArray<{ readonly key_name: string; readonly key_version: number; readonly last_seen: string }>,
  now: number,
): KeyNodeCount[] {
  const byName = new Map(keys.map((k) => [k.name, { id: k.id, name: k.name, current: k.currentVersion, nodes: 0 }]));
  const seen = new Set<string>();
  for (const r of reports) {
    const k = byName.get(r.key_name);
    if (!k || !(now - Date.parse(r.last_seen) <= REPORT_FRESH_MS)) continue;
    seen.add(k.name);
    if (r.key_version < k.current) k.nodes += 1;
  }
  return [...byName.values()].filter((k) => seen.has(k.name)).map(({ id, name, nodes }) => ({ id, name, nodes }));
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
  const nodesOld = new Gauge({ name: 'keyhaven_cluster_nodes_on_old_key_version', help: `Cluster nodes (reported in the last hour) whose KMS plugin writes with a version older than the key's current one, by key ${opts.keyNames ? 'name' : 'id'}`, labelNames: ['key'] as const, registers: [registry] });
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
    auditFailures: new Counter({ name: 'keyhaven_audit_write_failures_total', help: 'Requests answered with an error because their audit record could not be stored', registers: [registry] }),
    sealed: new Gauge({ name: 'keyhaven_seal_state', help: '0 unsealed, 1 sealed, 2 not initialised', registers: [registry] }),
    setNodesOnOldVersion(counts) {
      nodesOld.reset();
      for (const c of counts) nodesOld.set({ key: opts.keyNames ? c.name : c.id }, c.nodes);
    },
  };
}
