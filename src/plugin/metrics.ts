import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

// Labels stay bounded: method names, gRPC code names, and the key_id (one
// per key version). Never an error message.
export interface PluginMetrics {
  readonly registry: Registry;
  readonly requests: Counter<'method' | 'code'>;
  readonly duration: Histogram<'method' | 'code'>;
  readonly providerDuration: Histogram<'operation'>;
  readonly keyInfo: Gauge<'key_id' | 'provider'>;
  readonly providerUp: Gauge;
  /** Calls to key servers by server URL (from the config: bounded), operation and result code. */
  readonly serverCalls: Counter<'server' | 'operation' | 'result'>;
  readonly serverUp: Gauge<'server'>;
  readonly kekLookups: Counter<'result'>;
  readonly kekCacheEntries: Gauge;
  setKeyId(keyId: string | undefined, provider: string): void;
}

export function createPluginMetrics(): PluginMetrics {
  const registry = new Registry();
  // The event-loop delay monitor samples every eventLoopMonitoringPrecision ms: prom-client's 10 ms wakes an idle
  // plugin 100 times a second, CPU taken from the apiserver and the key server on the same node.
  collectDefaultMetrics({ register: registry, prefix: 'keyhaven_', eventLoopMonitoringPrecision: 100 });
  const buckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 3];
  const requests = new Counter({ name: 'keyhaven_plugin_grpc_requests_total', help: 'KMS gRPC calls by method and gRPC status code', labelNames: ['method', 'code'] as const, registers: [registry] });
  const duration = new Histogram({ name: 'keyhaven_plugin_grpc_request_duration_seconds', help: 'KMS gRPC call latency by method and gRPC status code', labelNames: ['method', 'code'] as const, buckets, registers: [registry] });
  const providerDuration = new Histogram({ name: 'keyhaven_plugin_provider_duration_seconds', help: 'Key provider call latency', labelNames: ['operation'] as const, buckets, registers: [registry] });
  const keyInfo = new Gauge({ name: 'keyhaven_plugin_key_info', help: 'The key_id Status currently reports (value 1)', labelNames: ['key_id', 'provider'] as const, registers: [registry] });
  const providerUp = new Gauge({ name: 'keyhaven_plugin_provider_up', help: '1 if the last provider round trip succeeded, else 0', registers: [registry] });
  const serverCalls = new Counter({ name: 'keyhaven_plugin_key_server_calls_total', help: 'Calls to key servers by server, operation and result (ok or an error code)', labelNames: ['server', 'operation', 'result'] as const, registers: [registry] });
  const serverUp = new Gauge({ name: 'keyhaven_plugin_key_server_up', help: '1 while a key server answers, 0 while its circuit breaker keeps it out', labelNames: ['server'] as const, registers: [registry] });
  const kekLookups = new Counter({ name: 'keyhaven_plugin_kek_cache_lookups_total', help: 'Decrypt lookups of a local KEK: hit (cached), miss (asked the key server), joined (waited for a call already in flight)', labelNames: ['result'] as const, registers: [registry] });
  const kekCacheEntries = new Gauge({ name: 'keyhaven_plugin_kek_cache_entries', help: 'Unwrapped local KEKs held in memory', registers: [registry] });
  let current: string | undefined;
  return {
    registry,
    requests,
    duration,
    providerDuration,
    keyInfo,
    providerUp,
    serverCalls,
    serverUp,
    kekLookups,
    kekCacheEntries,
    setKeyId(keyId, provider) {
      if (keyId === current) return;
      keyInfo.reset();
      if (keyId) keyInfo.set({ key_id: keyId, provider }, 1);
      current = keyId;
    },
  };
}
