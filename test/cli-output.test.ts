import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parse as parseYaml } from 'yaml';
import { cleanCliEnv, cliExpect, initStore, removeDir, runCli, tempDir, type CliResult } from './helpers.js';

// The CLI's output convention on the embedded store and the k8s generators
// (no server needed): -o json and -o yaml carry the same object, a list is
// {<plural>: [...]}, human tables show ages, audit tail has a header and takes
// --since as a duration. The server side is in cli-audit/cli-server tests.

let base: string;
let dataDir: string;

function kh(args: string[]): Promise<CliResult> {
  return runCli(args, { env: { ...cleanCliEnv(), XDG_CONFIG_HOME: base } });
}
const { ok } = cliExpect(kh);
const refused = async (args: string[], message: RegExp) => {
  const r = await kh(args);
  assert.equal(r.code, 2, `${args.join(' ')}: ${r.stdout}${r.stderr}`);
  assert.match(r.stderr, message);
};

describe('CLI output and input conventions', () => {
  before(async () => {
    base = tempDir('kh-cli-output-');
    dataDir = join(base, 'store');
    initStore(dataDir, 'k1');
    await ok(['key', 'rotate', 'k1', '--data-dir', dataDir]);
  });
  after(() => removeDir(base));

  it('a list prints {keys: [...]}; -o yaml is the same object; a single key prints the key', async () => {
    const [j, y, show, showY] = await Promise.all([
      ok(['key', 'list', '--data-dir', dataDir, '-o', 'json']),
      ok(['key', 'list', '--data-dir', dataDir, '-o', 'yaml']),
      ok(['key', 'show', 'k1', '--data-dir', dataDir, '-o', 'json']),
      ok(['key', 'show', 'k1', '--data-dir', dataDir, '-o', 'yaml']),
    ]);
    const list = JSON.parse(j.stdout) as { keys: Array<{ name: string; currentVersion: number; updatedAt: string }> };
    assert.deepEqual(Object.keys(list), ['keys']);
    assert.deepEqual(list.keys.map((k) => [k.name, k.currentVersion]), [['k1', 2]]);
    // Machine output keeps ISO times.
    assert.match(list.keys[0]!.updatedAt, /^\d{4}-\d{2}-\d{2}T[\d:.]+Z$/);
    assert.deepEqual(parseYaml(y.stdout), list);
    const key = JSON.parse(show.stdout) as { name: string };
    assert.equal(key.name, 'k1');
    assert.deepEqual(parseYaml(showY.stdout), key);
  });

  it('human tables show ages, not ISO times', async () => {
    const t = await ok(['key', 'list', '--data-dir', dataDir]);
    const [head, row] = t.stdout.trimEnd().split('\n');
    assert.match(head!, /^NAME\s+STATE\s+CURRENT\s+VERSIONS\s+DESTROYED\s+UPDATED$/);
    assert.match(row!, /^k1\s+enabled\s+2\s+2\s+-\s+(?:now|\d+[smhd] ago)$/);
  });

  it('-o takes text, json or yaml and names the flag otherwise', async () => {
    await refused(['key', 'list', '--data-dir', dataDir, '-o', 'xml'], /--output must be text, json or yaml, not "xml"/);
  });

  it('audit tail: a header row, --since as a duration or ISO time, details as an object in JSON', async () => {
    const [text, recent, none, iso, y] = await Promise.all([
      ok(['audit', 'tail', '--data-dir', dataDir]),
      ok(['audit', 'tail', '--data-dir', dataDir, '--since', '1h', '-o', 'json']),
      ok(['audit', 'tail', '--data-dir', dataDir, '--until', '1h30m', '-o', 'json']),
      ok(['audit', 'tail', '--data-dir', dataDir, '--since', '2000-01-01T00:00:00Z', '-o', 'json']),
      ok(['audit', 'tail', '--data-dir', dataDir, '-n', '1', '-o', 'yaml']),
    ]);
    const lines = text.stdout.trimEnd().split('\n');
    assert.match(lines[0]!, /^SEQ\s+TIME\s+PRINCIPAL\s+OPERATION\s+KEY\s+RESULT\s+DETAILS$/);
    assert.match(lines[1]!, /^1\s+\S+Z\s+cli:\S+\s+key\.create\s+k1@v1\s+ok$/);
    assert.match(lines[2]!, /^2\s+\S+Z\s+cli:\S+\s+key\.rotate\s+k1@v2\s+ok$/);
    // Columns line up under the header.
    assert.equal(lines[1]!.indexOf('key.create'), lines[0]!.indexOf('OPERATION'));
    const rows = recent.stdout.trim().split('\n').map((l) => JSON.parse(l) as { operation: string; details: unknown });
    assert.deepEqual(rows.map((r) => r.operation), ['key.create', 'key.rotate']);
    for (const r of rows) assert.ok(r.details === null || typeof r.details === 'object', JSON.stringify(r));
    assert.equal(none.stdout, '', 'nothing is older than 90 minutes');
    assert.equal(iso.stdout.trim().split('\n').length, 2);
    const doc = parseYaml(y.stdout.replace(/^---\n/, '')) as { operation: string; seq: number };
    assert.deepEqual([doc.seq, doc.operation], [2, 'key.rotate']);
  });

  it('a bad --since/--until names the flag', async () => {
    await Promise.all([
      refused(['audit', 'tail', '--data-dir', dataDir, '--since', 'yesterday'], /--since must be a duration like 1h30m or an ISO 8601 time, not "yesterday"/),
      refused(['audit', 'export', '--data-dir', dataDir, '--until', '5'], /--until must be a duration like 1h30m or an ISO 8601 time, not "5"/),
    ]);
  });

  it('k8s encryption-config and static-pod: YAML by default, -o json the same object; --timeout takes 1h30m', async () => {
    const args = ['k8s', 'encryption-config', '--name', 'keyhaven', '--socket', 'unix:///run/keyhaven/kms.sock', '--timeout', '1m30s'];
    const [yaml, json, asYaml, pod, podJson] = await Promise.all([
      ok(args),
      ok([...args, '-o', 'json']),
      ok([...args, '-o', 'yaml']),
      ok(['k8s', 'static-pod']),
      ok(['k8s', 'static-pod', '-o', 'json']),
    ]);
    const cfg = JSON.parse(json.stdout) as { kind: string; resources: Array<{ providers: Array<{ kms?: { timeout: string } }> }> };
    assert.equal(cfg.kind, 'EncryptionConfiguration');
    assert.equal(cfg.resources[0]!.providers[0]!.kms!.timeout, '1m30s');
    assert.deepEqual(parseYaml(yaml.stdout), cfg);
    assert.equal(asYaml.stdout, yaml.stdout);
    assert.deepEqual(JSON.parse(podJson.stdout), parseYaml(pod.stdout));
    assert.equal((JSON.parse(podJson.stdout) as { kind: string }).kind, 'Pod');
    // A day is not a Go duration: it is written as hours.
    const day = await ok([...args.slice(0, -2), '--timeout', '1d', '-o', 'json']);
    assert.equal((JSON.parse(day.stdout) as typeof cfg).resources[0]!.providers[0]!.kms!.timeout, '24h');
    await refused([...args.slice(0, -2), '--timeout', '3'], /--timeout must be a duration like 1h30m, 90s or 30d, not "3"/);
  });

  it('plugin durations take compound forms and name the flag', async () => {
    await refused(['plugin', 'status', '--socket', `unix://${join(base, 'none.sock')}`, '--timeout', 'soon'], /--timeout must be a duration like 1h30m, 90s or 30d, not "soon"/);
    await refused(['plugin', 'status', '--socket', `unix://${join(base, 'none.sock')}`, '--timeout', '1h'], /--timeout must be at most 10m, not "1h"/);
    await refused(['plugin', '--data-dir', dataDir, '--grace-period', '5 minutes'], /--grace-period must be a duration like 1h30m, 90s or 30d, not "5 minutes"/);
  });
});
