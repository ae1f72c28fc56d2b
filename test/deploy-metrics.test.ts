import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parse as parseYaml, stringify as toYaml } from 'yaml';
import { ROOT, call, httpGet, kmsClients, metric, removeDir, startPlugin, tempDir, waitFor, type KmsClients, type PluginProcess } from './helpers.js';
import { api, setupCast, startServerProcess, type Cast, type ServerProcess } from './server-helpers.js';

// deploy/grafana-dashboard.json and deploy/prometheus-rules.yaml name metrics
// in PromQL; a renamed or removed metric would leave a panel empty and an
// alert silent. Every name they use must be on a live /metrics: a real key
// server and a real plugin (keyhaven provider, local KEK on, so every plugin
// series exists) after traffic.

const KEY = 'kubernetes-secrets';
// Written by Prometheus itself for every scrape target, never by an exporter.
const SYNTHETIC = new Set(['up']);
const FUNCTIONS = new Set([
  'abs', 'absent', 'absent_over_time', 'avg_over_time', 'ceil', 'changes', 'clamp', 'clamp_max', 'clamp_min', 'count_over_time',
  'day_of_month', 'day_of_week', 'day_of_year', 'days_in_month', 'delta', 'deriv', 'exp', 'floor', 'histogram_quantile',
  'histogram_avg', 'histogram_count', 'histogram_sum', 'histogram_fraction', 'holt_winters', 'hour', 'idelta', 'increase',
  'irate', 'label_join', 'label_replace', 'label_values', 'last_over_time', 'ln', 'log10', 'log2', 'max_over_time',
  'min_over_time', 'minute', 'month', 'predict_linear', 'present_over_time', 'quantile_over_time', 'rate', 'resets', 'round',
  'scalar', 'sgn', 'sort', 'sort_desc', 'sqrt', 'stddev_over_time', 'stdvar_over_time', 'sum_over_time', 'time', 'timestamp',
  'vector', 'year', 'query_result', 'metrics',
]);
const AGGREGATIONS = new Set(['sum', 'min', 'max', 'avg', 'group', 'stddev', 'stdvar', 'count', 'count_values', 'bottomk', 'topk', 'quantile']);
const KEYWORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'and', 'or', 'unless', 'bool', 'offset', 'inf', 'nan', 'atan2']);

/**
 * The metric names a PromQL expression uses. String literals, label matchers
 * ({...}), ranges and subqueries ([...]) and the label lists of by/without/
 * on/ignoring/group_left/group_right go first; what is left that looks like a
 * name and is neither a function call, an aggregation nor a keyword is a metric.
 */
export function metricNames(expr: string): Set<string> {
  let s = expr.replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, ' ');
  s = s.replace(/\{[^{}]*\}/g, ' ').replace(/\[[^\]]*\]/g, ' ');
  s = s.replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)/gi, ' ');
  // Grafana variables ($plugin, ${datasource}, $__rate_interval) are not names.
  s = s.replace(/\$\{[^}]*\}|\$\w+/g, ' ');
  const names = new Set<string>();
  for (const m of s.matchAll(/(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(\s*\()?/g)) {
    const word = m[1]!;
    // A number's exponent (1e3) or a duration (5m) starts with a digit and never matches; these are words.
    if (m[2] !== undefined || FUNCTIONS.has(word) || AGGREGATIONS.has(word) || KEYWORDS.has(word.toLowerCase())) continue;
    names.add(word);
  }
  return names;
}

interface Family {
  type: string;
  samples: number;
}

/** Metric families of a Prometheus text exposition, with their sample counts. */
function families(text: string): Map<string, Family> {
  const out = new Map<string, Family>();
  for (const line of text.split('\n')) {
    const t = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (t) {
      out.set(t[1]!, { type: t[2]!, samples: 0 });
      continue;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{.*\})?\s+\S+/.exec(line);
    if (!m) continue;
    const name = m[1]!;
    const base = out.has(name) ? name : name.replace(/_(bucket|sum|count)$/, '');
    const f = out.get(base) ?? { type: 'untyped', samples: 0 };
    f.samples += 1;
    out.set(base, f);
  }
  return out;
}

function has(f: Map<string, Family>, name: string): boolean {
  if ((f.get(name)?.samples ?? 0) > 0) return true;
  const suffix = /^(.*)_(bucket|sum|count)$/.exec(name);
  const base = suffix ? f.get(suffix[1]!) : undefined;
  return base !== undefined && (base.type === 'histogram' || base.type === 'summary') && base.samples > 0;
}

interface Rule {
  alert?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

function readRules(): Rule[] {
  const doc = parseYaml(readFileSync(join(ROOT, 'deploy', 'prometheus-rules.yaml'), 'utf8')) as any;
  assert.equal(doc.apiVersion, 'monitoring.coreos.com/v1');
  assert.equal(doc.kind, 'PrometheusRule');
  assert.ok(typeof doc.metadata?.name === 'string');
  assert.ok(Array.isArray(doc.spec?.groups) && doc.spec.groups.length > 0);
  return doc.spec.groups.flatMap((g: { name: string; rules: Rule[] }) => {
    assert.ok(typeof g.name === 'string' && Array.isArray(g.rules) && g.rules.length > 0, `group ${g.name}`);
    return g.rules;
  });
}

/** Every PromQL expression of the dashboard: panel targets (rows included) and template variable queries. */
function dashboardExprs(): string[] {
  const d = JSON.parse(readFileSync(join(ROOT, 'deploy', 'grafana-dashboard.json'), 'utf8')) as any;
  assert.equal(typeof d.title, 'string');
  assert.equal(typeof d.uid, 'string');
  assert.equal(typeof d.schemaVersion, 'number');
  assert.ok(Array.isArray(d.panels) && d.panels.length > 0);
  const exprs: string[] = [];
  const ids = new Set<number>();
  const panels = d.panels.flatMap((p: any) => [p, ...(p.panels ?? [])]);
  for (const p of panels) {
    assert.ok(Number.isInteger(p.id) && !ids.has(p.id), `panel id ${p.id} is a unique integer`);
    ids.add(p.id);
    assert.ok(typeof p.type === 'string' && typeof p.title === 'string' && p.title.length > 0, `panel ${p.id} has a type and title`);
    for (const k of ['h', 'w', 'x', 'y']) assert.ok(Number.isInteger(p.gridPos?.[k]), `panel ${p.id} gridPos.${k}`);
    assert.ok(p.gridPos.x + p.gridPos.w <= 24, `panel ${p.id} fits the 24-column grid`);
    if (p.type === 'row') continue;
    assert.ok(Array.isArray(p.targets) && p.targets.length > 0, `panel "${p.title}" has targets`);
    for (const t of p.targets) {
      assert.ok(typeof t.expr === 'string' && t.expr.length > 0, `panel "${p.title}" target ${t.refId} has an expr`);
      exprs.push(t.expr);
    }
  }
  for (const v of d.templating?.list ?? []) {
    if (v.type !== 'query') continue;
    const q = typeof v.query === 'string' ? v.query : v.query?.query;
    assert.equal(typeof q, 'string', `variable ${v.name} has a query`);
    exprs.push(q);
  }
  return exprs;
}

describe('deploy/: the dashboard and the alert rules use only metrics that exist', () => {
  it('the PromQL name extractor skips functions, keywords, labels, strings, durations and variables', () => {
    assert.deepEqual(
      [...metricNames('sum by (le, instance) (rate(a_seconds_bucket{job="x",le!="+Inf",method=~"v2.Status|rate"}[5m] offset 1h)) / on (instance) group_left (route) b:recorded > bool 1e3')].sort(),
      ['a_seconds_bucket', 'b:recorded'],
    );
    assert.deepEqual([...metricNames('histogram_quantile(0.99, sum without (code) (rate(x_bucket{instance=~"$plugin"}[$__rate_interval])))')], ['x_bucket']);
    assert.deepEqual([...metricNames('label_values(keyhaven_seal_state, instance)')], ['keyhaven_seal_state', 'instance']);
    assert.deepEqual([...metricNames('increase(c_total[5m]) > 0 and up{job="s"} == 0 or vector(0)')].sort(), ['c_total', 'up']);
    assert.deepEqual([...metricNames('max_over_time(g[1h:5m]) > Inf')], ['g']);
  });

  it('the alert rules: each has an expr, for, a severity and what to do', () => {
    const rules = readRules();
    assert.ok(rules.length >= 8);
    const names = new Set<string>();
    for (const r of rules) {
      assert.ok(typeof r.alert === 'string' && /^[A-Z][A-Za-z]+$/.test(r.alert), `alert name ${r.alert}`);
      assert.ok(!names.has(r.alert), `alert ${r.alert} is unique`);
      names.add(r.alert);
      assert.ok(typeof r.expr === 'string' && r.expr.length > 0, `${r.alert}: expr`);
      if (r.for !== undefined) assert.match(r.for, /^\d+[smh]$/, `${r.alert}: for`);
      assert.ok(['critical', 'warning', 'info'].includes(r.labels?.severity ?? ''), `${r.alert}: severity`);
      assert.ok((r.annotations?.summary ?? '').length > 0 && (r.annotations?.description ?? '').length > 40, `${r.alert}: summary and description`);
    }
    for (const wanted of ['KeyhavenPluginStatusFailing', 'KeyhavenKeyServerUnreachable', 'KeyhavenAuditWriteFailing', 'KeyhavenServerSealed', 'KeyhavenPluginLatencyNearDeadline', 'KeyhavenClustersOnOldKeyVersion']) {
      assert.ok(names.has(wanted), `alert ${wanted} exists`);
    }
  });

  describe('against a live key server and plugin', () => {
    let dir = '';
    let server: ServerProcess | undefined;
    let plugin: PluginProcess | undefined;
    let kms: KmsClients | undefined;
    let cast: Cast;

    before(async () => {
      dir = tempDir('kh-deploy-metrics-');
      server = await startServerProcess({ dir });
    });

    after(async () => {
      kms?.close();
      await plugin?.stop();
      await server?.stop();
      removeDir(dir);
    });

    it('every metric the dashboard and the alerts use is on /metrics after traffic', async () => {
      cast = await setupCast(server!.url, KEY);
      const apiKeyFile = join(dir, 'api.key');
      writeFileSync(apiKeyFile, `${cast.appKey}\n`, { mode: 0o600 });
      const pdir = join(dir, 'plugin');
      const config = join(dir, 'plugin.yaml');
      writeFileSync(config, toYaml({ provider: { type: 'keyhaven', servers: [server!.url], key: KEY, cluster: 'deploy-test', apiKeyFile, localKek: { enabled: true } } }), { mode: 0o600 });
      const socket = join(dir, 'kms.sock');
      plugin = await startPlugin({
        dataDir: pdir,
        socketPath: socket,
        command: ['plugin', '--config', config, '--socket', `unix://${socket}`, '--health-addr', '127.0.0.1:0', '--log-level', 'info', '--status-cache-ttl', '100ms'],
      });
      kms = kmsClients(socket);

      // Traffic: Status, Encrypt and Decrypt on both APIs, one refused Decrypt.
      const st = await call(kms.v2, 'Status', {});
      assert.equal(st.healthz, 'ok');
      const e = await call(kms.v2, 'Encrypt', { plaintext: randomBytes(32), uid: randomUUID() });
      await call(kms.v2, 'Decrypt', { ciphertext: e.ciphertext, uid: randomUUID(), key_id: e.key_id, annotations: e.annotations });
      await call(kms.v2, 'Decrypt', { ciphertext: e.ciphertext, uid: randomUUID(), key_id: e.key_id, annotations: e.annotations });
      const v1 = await call(kms.v1, 'Encrypt', { version: 'v1beta1', plain: randomBytes(32) });
      await call(kms.v1, 'Decrypt', { version: 'v1beta1', cipher: v1.cipher });
      await call(kms.v2, 'Decrypt', { ciphertext: Buffer.from('not ours'), uid: randomUUID(), key_id: e.key_id, annotations: {} }).catch(() => undefined);
      await waitFor(async () => ((await metric(plugin!, 'keyhaven_plugin_key_server_calls_total')) > 0 ? true : undefined), 'a key server call counted');

      // A node left on version 1 after a rotation: its report counts on the server.
      assert.equal((await api(server!.url, 'POST', `/v1/keys/${KEY}/rotate`, { token: cast.keyAdmin })).status, 200);
      const report = await api(server!.url, 'POST', `/v1/keys/${KEY}/status`, { token: cast.appKey, body: { cluster: 'old-cluster', node: 'cp-1', keyId: st.key_id } });
      assert.equal(report.status, 200, report.text);

      const pluginText = (await httpGet(plugin.healthPort!, '/metrics')).body;
      const serverScrape = await api(server!.url, 'GET', '/metrics');
      assert.equal(serverScrape.status, 200);
      const serverText: string = serverScrape.text;
      const old = /^keyhaven_cluster_nodes_on_old_key_version\{key="[0-9a-f]+"\} (\d+)$/m.exec(serverText);
      assert.ok(old && Number(old[1]) >= 1, `the node on version 1 is counted:\n${serverText.split('\n').filter((l) => l.includes('old_key')).join('\n')}`);

      const live = families(`${pluginText}\n${serverText}`);
      const used = new Map<string, string>();
      for (const r of readRules()) for (const n of metricNames(r.expr)) used.set(n, `alert ${r.alert}`);
      for (const x of dashboardExprs()) for (const n of metricNames(x)) used.set(n, `dashboard: ${x}`);
      // label_values(metric, label): the second argument is a label.
      used.delete('instance');
      assert.ok(used.size >= 15, `names found: ${[...used.keys()].join(', ')}`);
      const missing = [...used].filter(([n]) => !SYNTHETIC.has(n) && !has(live, n)).map(([n, where]) => `${n} (${where})`);
      assert.deepEqual(missing, [], `metrics used but not exposed:\n${missing.join('\n')}`);
    });
  });
});
