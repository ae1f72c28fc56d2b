import { spawnSync } from 'node:child_process';
import { accessSync, constants, readFileSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { Agent, request } from 'undici';
import { freePort } from './ports.js';
import { ownedTempDir, spawnOwned, type Teardown } from './reaper.js';

// A real etcd (Debian's etcd-server) for the tests of src/k8s/etcd and of the
// commands built on it: one member on loopback ports, its data dir and
// process owned by the reaper. Keys are written through the same JSON gateway
// the code under test reads (a test writes; keyhaven itself never does).

function find(name: string): string | undefined {
  for (const d of [...(process.env.PATH ?? '').split(delimiter), '/usr/bin']) {
    if (!d) continue;
    try {
      accessSync(join(d, name), constants.X_OK);
      return join(d, name);
    } catch {
      // Not here.
    }
  }
  return undefined;
}

const ETCD_BIN = find('etcd');
const ETCDCTL_BIN = find('etcdctl');
/** Whether etcd and etcdctl are installed (apt-get install etcd-server etcd-client). */
export const ETCD_AVAILABLE = !!ETCD_BIN && !!ETCDCTL_BIN && spawnSync(ETCD_BIN, ['--version'], { stdio: 'ignore' }).status === 0;

export interface EtcdTls {
  caFile: string;
  /** The server's certificate: also sent as the client certificate by put/get/snapshot, so it needs both serverAuth and clientAuth (etcd's gateway uses it to reach its own gRPC port, too). */
  certFile: string;
  keyFile: string;
  clientCertAuth: boolean;
}

export interface EtcdProcess {
  /** `http://127.0.0.1:port`, or https with TLS. */
  endpoint: string;
  dataDir: string;
  /** A string key is written as UTF-8; a Buffer as its bytes (keys need not be UTF-8). */
  put(key: string | Buffer, value: Buffer): Promise<void>;
  get(key: string | Buffer): Promise<Buffer | undefined>;
  /** `etcdctl snapshot save`. */
  snapshot(file: string): Promise<void>;
  /** Runs etcdctl against this etcd (with its TLS files); resolves with its output, rejects when it fails. */
  etcdctl(...args: string[]): Promise<string>;
  stop(): Promise<void>;
}

const b64 = (k: string | Buffer) => (typeof k === 'string' ? Buffer.from(k, 'utf8') : k).toString('base64');

/** Starts a one-member etcd; `t`'s teardown kills it and removes its data dir. */
export async function startEtcd(t: Teardown, o: { tls?: EtcdTls } = {}): Promise<EtcdProcess> {
  if (!ETCD_BIN || !ETCDCTL_BIN) throw new Error('etcd is not installed (apt-get install etcd-server etcd-client)');
  const dataDir = ownedTempDir('kh-etcd-', t);
  const tls = o.tls;
  const scheme = tls ? 'https' : 'http';
  const endpoint = `${scheme}://127.0.0.1:${await freePort()}`;
  const peer = `http://127.0.0.1:${await freePort()}`;
  const args = [
    '--name', 'kh-test', '--data-dir', join(dataDir, 'data'),
    '--listen-client-urls', endpoint, '--advertise-client-urls', endpoint,
    '--listen-peer-urls', peer, '--initial-advertise-peer-urls', peer, '--initial-cluster', `kh-test=${peer}`,
    '--logger', 'zap', '--log-outputs', 'stderr', '--log-level', 'error',
    ...(tls ? ['--cert-file', tls.certFile, '--key-file', tls.keyFile, '--trusted-ca-file', tls.caFile, ...(tls.clientCertAuth ? ['--client-cert-auth'] : [])] : []),
  ];
  const child = spawnOwned(ETCD_BIN, args, { t, stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr!.on('data', (d: Buffer) => {
    log = (log + d.toString()).slice(-8192);
  });
  const agent = new Agent({
    connect: tls ? { ca: readFileSync(tls.caFile), cert: readFileSync(tls.certFile), key: readFileSync(tls.keyFile) } : {},
  });
  t.after(() => agent.close());

  const call = async (path: string, body: object): Promise<Record<string, unknown>> => {
    const res = await request(endpoint + path, { method: 'POST', body: JSON.stringify(body), dispatcher: agent });
    const text = await res.body.text();
    if (res.statusCode !== 200) throw new Error(`etcd ${path}: HTTP ${res.statusCode}: ${text}`);
    return JSON.parse(text) as Record<string, unknown>;
  };
  const tlsFlags = tls ? ['--cacert', tls.caFile, '--cert', tls.certFile, '--key', tls.keyFile] : [];
  const etcdctl = (...a: string[]) =>
    new Promise<string>((resolve, reject) => {
      const c = spawnOwned(ETCDCTL_BIN, ['--endpoints', endpoint, ...tlsFlags, ...a], { t, env: { ...process.env, ETCDCTL_API: '3' }, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      c.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      c.stderr!.on('data', (d: Buffer) => (out += d.toString()));
      c.once('error', reject);
      c.once('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`etcdctl ${a.join(' ')} failed (${code}): ${out}`))));
    });

  // Ready once the gateway answers a read.
  for (let i = 0; ; i++) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`etcd exited during start: ${log}`);
    try {
      await call('/v3/kv/range', { key: b64('\0') });
      break;
    } catch (e) {
      if (i > 300) throw new Error(`etcd did not answer within 30 s: ${String(e)}: ${log}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  return {
    endpoint,
    dataDir,
    async put(key, value) {
      await call('/v3/kv/put', { key: b64(key), value: value.toString('base64') });
    },
    async get(key) {
      const r = await call('/v3/kv/range', { key: b64(key) });
      const kv = (r.kvs as { value?: string }[] | undefined)?.[0];
      return kv ? Buffer.from(kv.value ?? '', 'base64') : undefined;
    },
    async snapshot(file) {
      await etcdctl('snapshot', 'save', file);
    },
    etcdctl,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      process.kill(-child.pid!, 'SIGKILL');
      await exited;
    },
  };
}
