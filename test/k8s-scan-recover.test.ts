// `keyhaven k8s scan` and `keyhaven k8s recover` against a real etcd: values
// written in the storage forms kube-apiserver uses (KMS v2 and v1 seeds wrapped
// through keyhaven's own plugin socket, SmartKey's v1, aescbc, aesgcm,
// secretbox, identity/unencrypted), read live and from a snapshot.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it, before } from 'node:test';
import { parse as parseYaml } from 'yaml';
import { encodeKmsV1 } from '../src/k8s/storage/kms-v1.js';
import { encodeKmsV2, sealKmsV2 } from '../src/k8s/storage/kms-v2.js';
import { encodeLocal } from '../src/k8s/storage/local-forms.js';
import { encodeSecretProtobuf } from '../src/k8s/storage/k8s-object.js';
import { ETCD_AVAILABLE, startEtcd, type EtcdProcess } from './etcd.js';
import { BIN, call, cli, initStore, kmsClients, startPlugin, type PluginProcess, type V2Encrypted } from './helpers.js';
import { ownedTempDir, suiteTeardown } from './reaper.js';
import { requireDependency } from './require.js';

const ETCD_REASON = 'etcd-server and etcd-client (apt-get install etcd-server etcd-client)';
const PROVIDER = 'keyhaven';

interface Planted {
  namespace: string;
  name: string;
  data: Record<string, Buffer>;
}

describe('k8s scan and recover on a real etcd', { concurrency: false }, () => {
  let dir: string;
  let etcd: EtcdProcess | undefined;
  let plugin: PluginProcess | undefined;
  const secrets: Planted[] = [];
  // The seeds the plugin wrapped, by key version: v1 (destroyed later) and v2 (current).
  let v1KeyId = '';
  let v2KeyId = '';
  const snapshot = () => join(dir, 'backup.db');
  const td = suiteTeardown();

  before(async () => {
    if (!ETCD_AVAILABLE) return;
    dir = ownedTempDir('kh-k8s-', td);
    etcd = await startEtcd(td);
    const data = join(dir, 'store');
    initStore(data);
    plugin = await startPlugin({ dataDir: data, t: td });
    const kms = kmsClients(plugin.socket);
    try {
      const put = (key: string, v: Buffer) => etcd!.put(key, v);
      // A seed per key version, wrapped by the plugin as the apiserver asks it to.
      const wrapSeed = async () => {
        const seed = randomBytes(32);
        const r = await call<V2Encrypted>(kms.v2, 'Encrypt', { plaintext: seed, uid: 'seed' });
        return { seed, wrapped: r };
      };
      const s1 = await wrapSeed();
      v1KeyId = s1.wrapped.key_id;
      // 3 Secrets under version 1, written as kube-apiserver writes them (HKDF seed mode).
      const writeV2 = async (s: { seed: Buffer; wrapped: V2Encrypted }, p: Planted) => {
        const key = `/registry/secrets/${p.namespace}/${p.name}`;
        const plain = encodeSecretProtobuf({ namespace: p.namespace, name: p.name, data: p.data });
        const encryptedData = sealKmsV2(plain, s.seed, key);
        await put(key, encodeKmsV2(PROVIDER, { encryptedData, keyID: s.wrapped.key_id, encryptedDEKSource: s.wrapped.ciphertext, annotations: s.wrapped.annotations ?? {}, encryptedDEKSourceType: 1 }));
        secrets.push(p);
      };
      for (let i = 0; i < 3; i++) await writeV2(s1, { namespace: 'old', name: `s${i}`, data: { password: randomBytes(24), 'ca.crt': Buffer.from(`cert ${i}`) } });
      const rot = cli(['key', 'rotate', 'kubernetes-secrets', '--data-dir', data]);
      assert.equal(rot.code, 0, rot.stderr);
      // The plugin picks up the new version on its next Status.
      let s2 = await wrapSeed();
      for (let i = 0; i < 50 && s2.wrapped.key_id === v1KeyId; i++) {
        await call(kms.v2, 'Status', {});
        s2 = await wrapSeed();
      }
      assert.notEqual(s2.wrapped.key_id, v1KeyId, 'the plugin did not move to version 2');
      v2KeyId = s2.wrapped.key_id;
      for (let i = 0; i < 20; i++) await writeV2(s2, { namespace: i % 2 ? 'team-a' : 'team-b', name: `app-${i}`, data: { token: randomBytes(40), empty: Buffer.alloc(0) } });
      // KMS v1 (v1beta1 through the same plugin): a DEK per object, wrapped by the plugin.
      for (let i = 0; i < 4; i++) {
        const p: Planted = { namespace: 'legacy', name: `v1-${i}`, data: { key: randomBytes(16) } };
        const key = `/registry/secrets/${p.namespace}/${p.name}`;
        const dek = randomBytes(32);
        const w = await call<{ cipher: Buffer }>(kms.v1, 'Encrypt', { version: 'v1beta1', plain: dek });
        await put(key, encodeKmsV1(PROVIDER, w.cipher, encodeSecretProtobuf({ namespace: p.namespace, name: p.name, data: p.data }), dek, key));
        secrets.push(p);
      }
      // SmartKey's v1 values: its own DEK wrapping (AES-CBC by the DSM), which keyhaven only classifies.
      for (let i = 0; i < 2; i++) {
        const key = `/registry/secrets/smartkey/sk-${i}`;
        const dek = randomBytes(32);
        await put(key, encodeKmsV1('smartkey-test', randomBytes(48), encodeSecretProtobuf({ namespace: 'smartkey', name: `sk-${i}`, data: { a: randomBytes(8) } }), dek, key));
      }
      // Local forms and plaintext.
      const local = randomBytes(32);
      await put('/registry/secrets/local/cbc', encodeLocal('aescbc', 'key1', local, encodeSecretProtobuf({ namespace: 'local', name: 'cbc', data: { x: Buffer.from('y') } }), '/registry/secrets/local/cbc'));
      await put('/registry/secrets/local/gcm', encodeLocal('aesgcm', 'key2', local, encodeSecretProtobuf({ namespace: 'local', name: 'gcm', data: { x: Buffer.from('y') } }), '/registry/secrets/local/gcm'));
      await put('/registry/secrets/local/sbox', Buffer.concat([Buffer.from('k8s:enc:secretbox:v1:key3:'), randomBytes(60)]));
      await put('/registry/secrets/default/plain-1', encodeSecretProtobuf({ namespace: 'default', name: 'plain-1', data: { p: Buffer.from('visible') } }));
      await put('/registry/configmaps/default/cm', Buffer.from('{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"cm","namespace":"default"},"data":{"a":"b"}}'));
      await put('/registry/namespaces/default', Buffer.from('{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"default"}}'));
      // Damaged and foreign values.
      await put('/registry/secrets/bad/truncated', encodeKmsV2(PROVIDER, { encryptedData: randomBytes(40), keyID: v2KeyId, encryptedDEKSource: s2.wrapped.ciphertext, annotations: {}, encryptedDEKSourceType: 1 }).subarray(0, 30));
      await put('/registry/secrets/bad/foreign', encodeKmsV2('other-kms', { encryptedData: randomBytes(100), keyID: 'arn:aws:kms:eu-west-1:111122223333:key/x', encryptedDEKSource: randomBytes(64), annotations: {}, encryptedDEKSourceType: 1 }));
      await put('/registry/secrets/bad/never-issued', encodeKmsV2(PROVIDER, { encryptedData: randomBytes(100), keyID: `kh1:${'0'.repeat(16)}:${'1'.repeat(16)}:7:${'2'.repeat(16)}`, encryptedDEKSource: randomBytes(64), annotations: {}, encryptedDEKSourceType: 1 }));
      // Outside the prefix: never read.
      await put('/registryX/secrets/x/y', Buffer.from('not ours'));
      await etcd.snapshot(snapshot());
    } finally {
      kms.close();
    }
  });


  const scanJson = (args: string[]) => {
    const r = cli(['k8s', 'scan', ...args, '-o', 'json']);
    return { code: r.code, stderr: r.stderr, body: r.stdout ? JSON.parse(r.stdout) : undefined };
  };

  it('scan counts every form exactly, maps key_ids to key versions and names the unencrypted Secrets (live etcd), and writes nothing', async (t) => {
    if (!requireDependency(t, ETCD_AVAILABLE, ETCD_REASON)) return;
    const revision = async () => (JSON.parse(await etcd!.etcdctl('endpoint', 'status', '-w', 'json')) as Array<{ Status: { header: { revision: number } } }>)[0]!.Status.header.revision;
    const before = await revision();
    const r = scanJson(['--etcd', etcd!.endpoint, '--data-dir', join(dir, 'store'), '--page-size', '7']);
    assert.equal(await revision(), before, 'the scan changed etcd');
    assert.equal(r.code, 0, r.stderr);
    const b = r.body;
    assert.equal(b.objects, 3 + 20 + 4 + 2 + 3 + 1 + 1 + 1 + 3);
    const count = (resource: string, form: string, detail?: string) => b.rows.filter((x: any) => x.resource === resource && x.form === form && (detail === undefined || x.detail === detail)).reduce((n: number, x: any) => n + x.count, 0);
    assert.equal(count('secrets', 'kms-v2', PROVIDER), 23 + 1);
    assert.equal(count('secrets', 'kms-v2', 'other-kms'), 1);
    assert.equal(count('secrets', 'kms-v1', PROVIDER), 4);
    assert.equal(count('secrets', 'kms-v1', 'smartkey-test'), 2);
    assert.equal(count('secrets', 'aescbc', 'key1'), 1);
    assert.equal(count('secrets', 'aesgcm', 'key2'), 1);
    assert.equal(count('secrets', 'secretbox', 'key3'), 1);
    assert.equal(count('secrets', 'unencrypted'), 1);
    assert.equal(count('secrets', 'malformed'), 1);
    assert.equal(count('configmaps', 'unencrypted', 'json'), 1);
    assert.equal(count('namespaces', 'unencrypted', 'json'), 1);
    assert.deepEqual(b.plaintext, [{ resource: 'secrets', name: 'default/plain-1' }]);
    const k1 = b.keyIds.find((k: any) => k.keyId === v1KeyId);
    const k2 = b.keyIds.find((k: any) => k.keyId === v2KeyId);
    assert.deepEqual([k1.key, k1.version, k1.count, k1.known], ['kubernetes-secrets', 1, 3, true]);
    assert.deepEqual([k2.key, k2.version, k2.count, k2.known], ['kubernetes-secrets', 2, 20, true]);
    assert.equal(b.keyIds.find((k: any) => k.keyId.startsWith('kh1:000')).known, false);
    assert.equal(b.malformed.length, 1);
    assert.equal(b.malformed[0].key, '/registry/secrets/bad/truncated');
    // Nothing outside the prefix, and never a value.
    assert.ok(!JSON.stringify(b).includes('registryX'));
    for (const s of secrets) for (const v of Object.values(s.data)) if (v.length >= 8) assert.ok(!JSON.stringify(b).includes(v.toString('base64')));
  });

  it('a progress bar on a terminal (stderr), none when piped', (t) => {
    if (!requireDependency(t, ETCD_AVAILABLE, ETCD_REASON)) return;
    // script(1) gives the command a terminal; its output is what the terminal shows.
    const tty = spawnSync('script', ['-qec', `${process.execPath} ${BIN} k8s scan --etcd ${etcd!.endpoint} --no-lookup --page-size 5`, '/dev/null'], { encoding: 'utf8', env: { ...process.env, TERM: 'xterm' } });
    assert.equal(tty.status, 0, tty.stdout + tty.stderr);
    assert.match(tty.stdout, /\d+\/\d+ values/);
    assert.match(tty.stdout, /scanned \d+ value\(s\)/);
    const piped = cli(['k8s', 'scan', '--etcd', etcd!.endpoint, '--no-lookup', '--page-size', '5']);
    assert.equal(piped.code, 0);
    assert.equal(piped.stderr, '');
  });

  it('--fail-on plaintext exits 1 and says why; the text table lists the forms', (t) => {
    if (!requireDependency(t, ETCD_AVAILABLE, ETCD_REASON)) return;
    const r = cli(['k8s', 'scan', '--etcd', etcd!.endpoint, '--data-dir', join(dir, 'store'), '--fail-on', 'plaintext,malformed']);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stdout, /secrets\s+kms-v1\s+smartkey-test\s+-\s+2/);
    assert.match(r.stdout, /kubernetes-secrets v2/);
    assert.match(r.stdout, /secrets default\/plain-1/);
    assert.match(r.stdout, /FAILED:\n {2}1 sensitive object\(s\) stored unencrypted\n {2}1 value\(s\) that do not parse/);
    const bad = cli(['k8s', 'scan', '--etcd', etcd!.endpoint, '--fail-on', 'plaintext,nonsense']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--fail-on takes plaintext, retired, unknown, malformed; not "nonsense"/);
  });

  it('recover writes every Secret byte for byte, 0600 in 0700 folders, from the live etcd; damaged values are listed, the rest come out', (t) => {
    if (!requireDependency(t, ETCD_AVAILABLE, ETCD_REASON)) return;
    const out = join(dir, 'out-live');
    const r = cli(['k8s', 'recover', '--etcd', etcd!.endpoint, '--data-dir', join(dir, 'store'), '--out', out, '--provider', PROVIDER, '-o', 'json']);
    // The truncated and never-issued values fail, each with its reason; exit 1 says some failed.
    assert.equal(r.code, 1, r.stderr);
    const body = JSON.parse(r.stdout);
    const failedKeys = body.failed.map((f: any) => f.key).sort();
    assert.deepEqual(failedKeys, ['/registry/secrets/bad/never-issued', '/registry/secrets/bad/truncated']);
    const reason = (k: string) => body.failed.find((f: any) => f.key === k).reason;
    assert.match(reason('/registry/secrets/bad/truncated'), /not a valid EncryptedObject/);
    assert.match(reason('/registry/secrets/bad/never-issued'), /issued by another key store/);
    checkRecovered(out, secrets);
    assert.equal(statSync(out).mode & 0o777, 0o700);
    // One unwrap per distinct seed (2) and per v1 DEK (4), not one per object.
    assert.equal(body.unwraps, 2 + 4 + 1);
  });

  it('recover from the snapshot reproduces the same Secrets; --namespace filters', (t) => {
    if (!requireDependency(t, ETCD_AVAILABLE, ETCD_REASON)) return;
    const out = join(dir, 'out-snap');
    const r = cli(['k8s', 'recover', '--snapshot', snapshot(), '--data-dir', join(dir, 'store'), '--out', out, '--namespace', 'team-a,old']);
    assert.equal(r.code, 0, r.stderr + r.stdout);
    checkRecovered(out, secrets.filter((s) => s.namespace === 'team-a' || s.namespace === 'old'));
    assert.deepEqual(readdirSync(join(out, 'secrets')).sort(), ['old', 'team-a']);
  });

  it('recover: ConfigMaps as YAML, other kinds as stored bytes; foreign and damaged values fail one by one with their reason', async (t) => {
    if (!requireDependency(t, ETCD_AVAILABLE, ETCD_REASON)) return;
    // A Pod in protobuf: runtime.Unknown{typeMeta{apiVersion, kind}, raw}, written by hand (fields 1 and 2, short lengths).
    const field = (n: number, b: Buffer) => Buffer.concat([Buffer.from([(n << 3) | 2, b.length]), b]);
    // Pod{metadata=1 ObjectMeta{name=1, namespace=3}, spec=2 (opaque here)}.
    const podRaw = Buffer.concat([field(1, Buffer.concat([field(1, Buffer.from('web')), field(3, Buffer.from('default'))])), field(2, Buffer.from('opaque spec'))]);
    const pod = Buffer.concat([Buffer.from('k8s\0', 'latin1'), field(1, Buffer.concat([field(1, Buffer.from('v1')), field(2, Buffer.from('Pod'))])), field(2, podRaw)]);
    await etcd!.put('/registry/pods/default/web', pod);
    const out = join(dir, 'out-kinds');
    const r = cli(['k8s', 'recover', '--etcd', etcd!.endpoint, '--data-dir', join(dir, 'store'), '--out', out, '--resource', 'configmaps,namespaces,pods', '-o', 'json']);
    assert.equal(r.code, 0, r.stderr + r.stdout);
    const body = JSON.parse(r.stdout);
    // Stored as JSON, any kind is a whole object: YAML. Stored as protobuf, only Secrets and ConfigMaps are decoded.
    assert.equal(body.written, 2);
    assert.deepEqual(body.raw, ['/registry/pods/default/web']);
    const cm = parseYaml(readFileSync(join(out, 'configmaps', 'default', 'cm.yaml'), 'utf8'));
    assert.deepEqual([cm.kind, cm.metadata.name, cm.data], ['ConfigMap', 'cm', { a: 'b' }]);
    assert.equal(parseYaml(readFileSync(join(out, 'namespaces', 'default.yaml'), 'utf8')).kind, 'Namespace');
    assert.deepEqual(readFileSync(join(out, 'pods', 'default', 'web.bin')), pod);
    const bad = cli(['k8s', 'recover', '--etcd', etcd!.endpoint, '--data-dir', join(dir, 'store'), '--out', join(dir, 'out-bad'), '--namespace', 'bad,local', '-o', 'json']);
    assert.equal(bad.code, 1);
    const failed = Object.fromEntries(JSON.parse(bad.stdout).failed.map((f: any) => [f.key, f.reason]));
    assert.deepEqual(Object.keys(failed).sort(), ['/registry/secrets/bad/foreign', '/registry/secrets/bad/never-issued', '/registry/secrets/bad/truncated', '/registry/secrets/local/cbc', '/registry/secrets/local/gcm', '/registry/secrets/local/sbox']);
    assert.match(failed['/registry/secrets/bad/foreign'], /arn:aws:kms|not issued by keyhaven|key_id/);
    assert.match(failed['/registry/secrets/local/cbc'], /aescbc key "key1".*keyhaven holds only KMS keys/);
  });

  it('a destroyed key version is flagged by scan, and its objects fail to recover while the rest come out', (t) => {
    if (!requireDependency(t, ETCD_AVAILABLE, ETCD_REASON)) return;
    const store = join(dir, 'store');
    const d = cli(['key', 'destroy-version', 'kubernetes-secrets', '1', '--data-dir', store, '--yes']);
    assert.equal(d.code, 0, d.stderr + d.stdout);
    const s = scanJson(['--etcd', etcd!.endpoint, '--data-dir', store, '--fail-on', 'retired']);
    assert.equal(s.code, 1);
    const k1 = s.body.keyIds.find((k: any) => k.keyId === v1KeyId);
    assert.deepEqual(k1.flags, ['destroyed']);
    assert.match(s.body.failures.join('\n'), /3 object\(s\) under kubernetes-secrets v1 \(destroyed\)/);
    const out = join(dir, 'out-destroyed');
    const r = cli(['k8s', 'recover', '--etcd', etcd!.endpoint, '--data-dir', store, '--out', out, '--namespace', 'old,team-b', '-o', 'json']);
    assert.equal(r.code, 1);
    const body = JSON.parse(r.stdout);
    assert.equal(body.failed.length, 3);
    for (const f of body.failed) assert.match(f.key, /^\/registry\/secrets\/old\//);
    for (const f of body.failed) assert.match(f.reason, /version 1 was destroyed/);
    checkRecovered(out, secrets.filter((x) => x.namespace === 'team-b'));
  });

  it('bad input: a corrupt snapshot, both sources, a non-empty --out, a bad prefix: clear errors', (t) => {
    if (!requireDependency(t, ETCD_AVAILABLE, ETCD_REASON)) return;
    const corrupt = join(dir, 'corrupt.db');
    writeFileSync(corrupt, readFileSync(snapshot()).subarray(0, 4096));
    const r1 = cli(['k8s', 'scan', '--snapshot', corrupt, '--no-lookup']);
    assert.notEqual(r1.code, 0);
    assert.match(r1.stderr, /corrupt\.db/);
    const r2 = cli(['k8s', 'scan', '--snapshot', snapshot(), '--etcd', etcd!.endpoint]);
    assert.equal(r2.code, 2);
    assert.match(r2.stderr, /exactly one of --etcd URL or --snapshot FILE/);
    const r3 = cli(['k8s', 'recover', '--etcd', etcd!.endpoint, '--data-dir', join(dir, 'store'), '--out', join(dir, 'out-live')]);
    assert.equal(r3.code, 2);
    assert.match(r3.stderr, /is not empty/);
    const r4 = cli(['k8s', 'scan', '--etcd', etcd!.endpoint, '--prefix', 'registry']);
    assert.equal(r4.code, 2);
    assert.match(r4.stderr, /--prefix must start with "\/"/);
    // A snapshot's scan is dated by the snapshot: a report needs its real time, never a later one.
    const r6 = cli(['k8s', 'scan', '--snapshot', snapshot(), '--no-lookup', '--report', 'prod']);
    assert.equal(r6.code, 2);
    assert.match(r6.stderr, /--report with --snapshot needs --taken-at TIME/);
    const r7 = cli(['k8s', 'scan', '--snapshot', snapshot(), '--no-lookup', '--taken-at', new Date(Date.now() + 3_600_000).toISOString()]);
    assert.equal(r7.code, 2);
    assert.match(r7.stderr, /is in the future/);
    const past = cli(['k8s', 'scan', '--snapshot', snapshot(), '--no-lookup', '--taken-at', '2026-01-31T02:00:00Z', '-o', 'json']);
    assert.equal(past.code, 0, past.stderr);
    assert.equal(JSON.parse(past.stdout).scannedAt, '2026-01-31T02:00:00.000Z');
    // --out through a symbolic link is refused (it could point anywhere).
    symlinkSync(join(dir, 'out-snap'), join(dir, 'link'));
    const r5 = cli(['k8s', 'recover', '--etcd', etcd!.endpoint, '--data-dir', join(dir, 'store'), '--out', join(dir, 'link')]);
    assert.equal(r5.code, 2);
    assert.match(r5.stderr, /exists and is not a folder/);
  });

  it('an etcd key that would lead out of --out (someone who can write etcd) is refused, and nothing is written outside', async (t) => {
    if (!requireDependency(t, ETCD_AVAILABLE, ETCD_REASON)) return;
    const planted = encodeSecretProtobuf({ namespace: 'evil', name: 'x', data: { a: Buffer.from('b') } });
    await etcd!.put('/registry/secrets/evil/..', planted);
    const out = join(dir, 'nested', 'out-evil');
    const r = cli(['k8s', 'recover', '--etcd', etcd!.endpoint, '--data-dir', join(dir, 'store'), '--out', out, '--namespace', 'evil', '-o', 'json']);
    assert.equal(r.code, 1, r.stderr);
    const body = JSON.parse(r.stdout);
    assert.deepEqual(body.failed.map((f: any) => f.key), ['/registry/secrets/evil/..']);
    for (const f of body.failed) assert.match(f.reason, /does not name an object/);
    assert.deepEqual(readdirSync(join(dir, 'nested')), ['out-evil']);
    assert.deepEqual(readdirSync(out), []);
  });
});

/** Each planted Secret's YAML in out/secrets/<ns>/<name>.yaml, with exactly its data. */
function checkRecovered(out: string, planted: readonly Planted[]): void {
  for (const p of planted) {
    const file = join(out, 'secrets', p.namespace, `${p.name}.yaml`);
    assert.equal(statSync(file).mode & 0o777, 0o600, file);
    const doc = parseYaml(readFileSync(file, 'utf8')) as { apiVersion: string; kind: string; metadata: { name: string; namespace: string }; data?: Record<string, string> };
    assert.equal(doc.kind, 'Secret');
    assert.equal(doc.apiVersion, 'v1');
    assert.deepEqual([doc.metadata.namespace, doc.metadata.name], [p.namespace, p.name]);
    const got = Object.fromEntries(Object.entries(doc.data ?? {}).map(([k, v]) => [k, Buffer.from(v, 'base64')]));
    assert.deepEqual(got, p.data, file);
  }
  const files = readdirSync(join(out, 'secrets'), { recursive: true }).filter((f) => String(f).endsWith('.yaml'));
  assert.equal(files.length, planted.length);
}
