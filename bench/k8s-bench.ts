// The k8s section of `npm run bench`: `keyhaven k8s scan` and `keyhaven k8s
// recover` on N Secrets (default 10,000) that a real etcd holds in KMS v2
// form, as kube-apiserver writes them; objects/s and peak memory of each
// command, beside a bare read of the same keys by etcdctl in the same run.
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Pool } from 'undici';
import { BenchError, Child, envNumber, fmt, freePort, log, ROOT, run, table } from './procs.js';

export interface K8sSectionOptions {
  readonly tmpDir: string;
}

const SEEDS = 4;
const PROVIDER = 'keyhaven';

function which(cmd: string): string | undefined {
  for (const d of (process.env.PATH ?? '/usr/bin').split(':')) if (existsSync(join(d, cmd))) return join(d, cmd);
  return undefined;
}

/** Runs a command to its end, sampling its peak resident memory (VmHWM) from /proc while it runs. */
async function measured(label: string, cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env, keepOutput = true): Promise<{ seconds: number; peakMiB: number; stdout: string }> {
  const started = performance.now();
  const child = new Child(label, args, env, cmd);
  let stdout = '';
  child.proc.stdout?.on('data', (d: string) => {
    if (keepOutput) stdout += d;
  });
  let peak = 0;
  const done = new Promise<number | null>((r) => child.proc.once('exit', (code) => r(code)));
  let finished = false;
  void done.then(() => (finished = true));
  while (!finished) {
    try {
      const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.proc.pid}/status`, 'utf8'));
      if (m) peak = Math.max(peak, Number(m[1]));
    } catch {
      // gone
    }
    await Promise.race([done, sleep(20)]);
  }
  const code = await done;
  const seconds = (performance.now() - started) / 1000;
  if (code !== 0 && code !== 1) throw new BenchError(`${label} exited with ${code}${child.output()}`);
  return { seconds, peakMiB: peak / 1024, stdout };
}

export async function runK8sSection(o: K8sSectionOptions): Promise<{ text: string; failed: boolean }> {
  const n = envNumber('BENCH_K8S_N', 10_000);
  const etcdBin = which('etcd');
  const etcdctl = which('etcdctl');
  if (!etcdBin || !etcdctl) throw new BenchError('the k8s section needs etcd and etcdctl (apt-get install etcd-server etcd-client)');
  const { buildProvider } = await import('../src/plugin/providers/registry.js');
  const { parsePluginConfig } = await import('../src/config/plugin-config.js');
  const { createLogger } = await import('../src/log/logger.js');
  const { createPluginMetrics } = await import('../src/plugin/metrics.js');
  const { encodeKmsV2, sealKmsV2 } = await import('../src/k8s/storage/kms-v2.js');
  const { encodeSecretProtobuf } = await import('../src/k8s/storage/k8s-object.js');

  const dir = join(o.tmpDir, 'k8s');
  const store = join(dir, 'store');
  const cli = join(ROOT, 'bin', 'keyhaven');
  const init = await run(process.execPath, [cli, 'init', '--data-dir', store]);
  if (init.code !== 0) throw new BenchError(`keyhaven init failed: ${init.stderr}`);

  const [clientPort, peerPort] = [await freePort(), await freePort()];
  const endpoint = `http://127.0.0.1:${clientPort}`;
  const etcd = new Child('etcd', ['--name', 'bench', '--data-dir', join(dir, 'etcd'), '--listen-client-urls', endpoint, '--advertise-client-urls', endpoint, '--listen-peer-urls', `http://127.0.0.1:${peerPort}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${peerPort}`, '--initial-cluster', `bench=http://127.0.0.1:${peerPort}`], process.env, etcdBin);
  const pool = new Pool(endpoint, { connections: 32 });
  try {
    for (let i = 0; ; i++) {
      const r = await pool.request({ method: 'POST', path: '/v3/maintenance/status', body: '{}' }).then((x) => x.body.text().then(() => x.statusCode), () => 0);
      if (r === 200) break;
      if (i > 300) throw new BenchError(`etcd not ready at ${endpoint}${etcd.output()}`);
      await sleep(100);
    }

    // Seeds wrapped by the embedded store's provider, as the plugin does for the apiserver.
    const cfg = parsePluginConfig({ provider: { type: 'embedded', dataDir: store }, log: { level: 'silent' } }, 'bench');
    const { provider } = await buildProvider({ cfg, logger: createLogger({ level: 'silent' }), metrics: createPluginMetrics() });
    // As the apiserver's first Status does: the provider confirms its key before it wraps.
    await provider.healthCheck();
    const seeds: { seed: Buffer; w: Awaited<ReturnType<typeof provider.encrypt>> }[] = [];
    for (let i = 0; i < SEEDS; i++) {
      const seed = randomBytes(32);
      const w = await provider.encrypt(seed, { uid: 'bench', annotations: true });
      seeds.push({ seed, w });
    }
    await provider.close();

    log(`k8s: writing ${n} Secrets (KMS v2, ${SEEDS} seeds) into etcd`);
    const b64 = (s: string | Buffer) => Buffer.from(s).toString('base64');
    let next = 0;
    const writer = async () => {
      while (next < n) {
        const i = next++;
        const ns = `ns-${i % 50}`;
        const key = `/registry/secrets/${ns}/secret-${i}`;
        const s = seeds[i % SEEDS]!;
        const plain = encodeSecretProtobuf({ namespace: ns, name: `secret-${i}`, data: { password: randomBytes(32), 'tls.crt': randomBytes(600) } });
        const value = encodeKmsV2(PROVIDER, { encryptedData: sealKmsV2(plain, s.seed, key), keyID: s.w.keyId, encryptedDEKSource: s.w.ciphertext, annotations: s.w.annotations ?? {}, encryptedDEKSourceType: 1 });
        const r = await pool.request({ method: 'POST', path: '/v3/kv/put', body: JSON.stringify({ key: b64(key), value: b64(value) }) });
        await r.body.text();
        if (r.statusCode !== 200) throw new BenchError(`etcd put answered ${r.statusCode}`);
      }
    };
    await Promise.all(Array.from({ length: 32 }, writer));

    const env = { ...process.env, ETCDCTL_API: '3' };
    const bare = await measured('etcdctl get', etcdctl, ['--endpoints', endpoint, 'get', '--prefix', '/registry/', '-w', 'protobuf'], env, false);
    const scan = await measured('k8s scan', process.execPath, [cli, 'k8s', 'scan', '--etcd', endpoint, '--data-dir', store, '-o', 'json']);
    const scanned = (JSON.parse(scan.stdout) as { objects: number }).objects;
    if (scanned !== n) throw new BenchError(`scan counted ${scanned} objects, not ${n}`);
    const out = join(dir, 'recovered');
    const rec = await measured('k8s recover', process.execPath, [cli, 'k8s', 'recover', '--etcd', endpoint, '--data-dir', store, '--out', out, '-o', 'json']);
    const written = (JSON.parse(rec.stdout) as { written: number; failed: unknown[] }).written;
    rmSync(out, { recursive: true, force: true });
    if (written !== n) throw new BenchError(`recover wrote ${written} objects, not ${n}`);
    const snapFile = join(dir, 'backup.db');
    const save = await run(etcdctl, ['--endpoints', endpoint, 'snapshot', 'save', snapFile], { env });
    if (save.code !== 0) throw new BenchError(`etcdctl snapshot save failed: ${save.stderr}`);
    const snapScan = await measured('k8s scan --snapshot', process.execPath, [cli, 'k8s', 'scan', '--snapshot', snapFile, '--data-dir', store, '-o', 'json']);

    const rows = [
      ['etcdctl get --prefix (bare read)', fmt(n / bare.seconds), fmt(bare.seconds, 2), '1.00', fmt(bare.peakMiB)],
      ['keyhaven k8s scan --etcd', fmt(n / scan.seconds), fmt(scan.seconds, 2), fmt(bare.seconds / scan.seconds, 2), fmt(scan.peakMiB)],
      ['keyhaven k8s recover --etcd', fmt(n / rec.seconds), fmt(rec.seconds, 2), fmt(bare.seconds / rec.seconds, 2), fmt(rec.peakMiB)],
      ['keyhaven k8s scan --snapshot', fmt(n / snapScan.seconds), fmt(snapScan.seconds, 2), fmt(bare.seconds / snapScan.seconds, 2), fmt(snapScan.peakMiB)],
    ];
    const text = [
      `k8s: ${n} Secrets in KMS v2 form (${SEEDS} seeds, 632 bytes of data each) in a real etcd on 127.0.0.1; whole commands, start-up included`,
      table(['command', 'objects/s', 'seconds', 'speed vs bare', 'peak MiB'], rows),
      'speed vs bare: the bare read\'s seconds over the command\'s (1.00 = as fast as etcdctl reading the same keys).',
      'peak MiB: the process\'s peak resident memory (VmHWM); the snapshot scan also restores and serves the snapshot with a temporary etcd (its memory not counted).',
      '',
      'results (JSON):',
      JSON.stringify({ section: 'k8s', n, bare: { ...bare, stdout: undefined }, scan: { ...scan, stdout: undefined }, recover: { ...rec, stdout: undefined }, snapshotScan: { ...snapScan, stdout: undefined } }),
    ].join('\n');
    return { text, failed: false };
  } finally {
    await pool.close().catch(() => {});
    await etcd.stop();
  }
}
