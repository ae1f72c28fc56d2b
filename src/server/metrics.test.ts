import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { REPORT_FRESH_MS, countNodesOnOldVersion, createServerMetrics } from './metrics.js';

describe('server metrics: cluster nodes on an old key version', () => {
  const now = Date.parse('2026-06-01T12:00:00Z');
  const ago = (ms: number) => new Date(now - ms).toISOString();
  const keys = [
    { id: 'aa01', name: 'k8s-prod', currentVersion: 3 },
    { id: 'bb02', name: 'k8s-dev', currentVersion: 1 },
    { id: 'cc03', name: 'unused', currentVersion: 5 },
  ];

  it('counts fresh reports below the current version per key; keys with fresh reports only, 0 included', () => {
    const counts = countNodesOnOldVersion(keys, [
      { key_name: 'k8s-prod', key_version: 2, last_seen: ago(60_000) },
      { key_name: 'k8s-prod', key_version: 1, last_seen: ago(REPORT_FRESH_MS - 1) },
      { key_name: 'k8s-prod', key_version: 3, last_seen: ago(0) },
      // A node gone for longer than the window no longer counts.
      { key_name: 'k8s-prod', key_version: 1, last_seen: ago(REPORT_FRESH_MS + 1) },
      { key_name: 'k8s-dev', key_version: 1, last_seen: ago(1000) },
      // Only stale reports: the key has no series.
      { key_name: 'unused', key_version: 1, last_seen: ago(2 * REPORT_FRESH_MS) },
      // A report of a deleted key, or a bad time stamp, is ignored.
      { key_name: 'deleted', key_version: 1, last_seen: ago(0) },
      { key_name: 'k8s-dev', key_version: 0, last_seen: 'not a date' },
    ], now);
    assert.deepEqual(counts, [
      { id: 'aa01', name: 'k8s-prod', nodes: 2 },
      { id: 'bb02', name: 'k8s-dev', nodes: 0 },
    ]);
    assert.deepEqual(countNodesOnOldVersion(keys, [], now), []);
  });

  it('labels by key id unless keyNames; each update replaces the last one', async () => {
    const byId = createServerMetrics();
    byId.setNodesOnOldVersion([{ id: 'aa01', name: 'k8s-prod', nodes: 2 }, { id: 'bb02', name: 'k8s-dev', nodes: 0 }]);
    let text = await byId.registry.metrics();
    assert.match(text, /^keyhaven_cluster_nodes_on_old_key_version\{key="aa01"\} 2$/m);
    assert.match(text, /^keyhaven_cluster_nodes_on_old_key_version\{key="bb02"\} 0$/m);
    assert.ok(!text.includes('k8s-prod'), 'no key name without keyNames');
    byId.setNodesOnOldVersion([{ id: 'bb02', name: 'k8s-dev', nodes: 1 }]);
    text = await byId.registry.metrics();
    assert.doesNotMatch(text, /key="aa01"/);
    assert.match(text, /^keyhaven_cluster_nodes_on_old_key_version\{key="bb02"\} 1$/m);

    const byName = createServerMetrics({ keyNames: true, keyId: () => undefined });
    byName.setNodesOnOldVersion([{ id: 'aa01', name: 'k8s-prod', nodes: 2 }]);
    assert.match(await byName.registry.metrics(), /^keyhaven_cluster_nodes_on_old_key_version\{key="k8s-prod"\} 2$/m);
  });

  it('the audit failure counter shows 0 before any failure, so an alert has a series from the start', async () => {
    const m = createServerMetrics();
    assert.match(await m.registry.metrics(), /^keyhaven_audit_write_failures_total 0$/m);
    m.auditFailures.inc();
    assert.match(await m.registry.metrics(), /^keyhaven_audit_write_failures_total 1$/m);
  });
});
