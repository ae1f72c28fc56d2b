import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import { KeyhavenError } from '../../errors.js';
import { connectGateway, gatewaySource, probe, type Gateway, type GatewayTarget } from './gateway.js';
import type { EtcdSource } from './types.js';

// A snapshot file is read by restoring it into a temporary data dir and
// serving that with a temporary etcd, then reading it through the same
// gateway client as a live etcd. The etcd listens on unix sockets inside the
// 0700 temp dir, not on loopback ports: the restored copy holds every Secret
// of the cluster, and a port would serve it to every local user (the peer
// port serves the KV API too); nor can a port be taken between picking and
// binding it. Nothing of the snapshot file is changed;
// the restored copy and the etcd go away on close(), on a failure part-way,
// and on process exit or SIGINT/SIGTERM/SIGHUP.

export interface SnapshotOptions {
  file: string;
  /** Default: etcd on PATH. */
  etcdBinary?: string;
  /** Runs `snapshot restore`; default: etcdutl on PATH (etcd 3.5+), else etcdctl. */
  etcdctlBinary?: string;
  /** Where the temporary data dir goes; default os.tmpdir(). */
  workDir?: string;
  /** How long the temporary etcd may take to answer; default 60 s (a large snapshot takes a while to load). */
  startTimeoutMs?: number;
}

const MEMBER = 'keyhaven-snapshot';
const DEFAULT_START_TIMEOUT_MS = 60_000;
const REQUEST_TIMEOUT_MS = 30_000;
const INSTALL_HINT = 'install etcd-server and etcd-client (apt-get install etcd-server etcd-client) or give its path';
// Socket names relative to the temp dir (etcd's working directory), which
// keeps them short of the 108-byte limit of a unix socket path. etcd wants a
// host:port form; the name is the whole "host:port".
const CLIENT_SOCKET = 'client.sock:0';
const PEER_SOCKET = 'peer.sock:0';

// --- cleanup of what is still open when the process ends -------------------

interface Owned {
  child?: ChildProcess;
  watchdog?: ChildProcess;
  dir: string;
}

// SIGKILL (kill -9, the OOM killer) runs no handler: a shell beside etcd
// watches for it. When its parent (this process) is gone, it ends etcd and
// removes the folder with the restored copy; when etcd ends, so does it.
// The parent is read from /proc (not compared by pid alone), so a reused pid
// cannot keep it waiting.
const WATCHDOG = [
  'while :; do',
  '  read -r _ _ _ p _ < /proc/$$/stat || break',
  '  [ "$p" = "$1" ] || break',
  '  kill -0 "$2" 2>/dev/null || exit 0',
  '  sleep 1',
  'done',
  'kill -9 "$2" 2>/dev/null',
  'rm -rf -- "$3"',
].join('\n');

function startWatchdog(o: Owned, etcdPid: number): void {
  const w = spawn('/bin/sh', ['-c', WATCHDOG, 'keyhaven-etcd-watchdog', String(process.pid), String(etcdPid), o.dir], { stdio: 'ignore' });
  // It must never keep this process alive, nor fail it when sh is missing (the handlers still cover a clean exit).
  w.on('error', () => {});
  w.unref();
  o.watchdog = w;
}

function stopWatchdog(o: Owned): void {
  const w = o.watchdog;
  if (w && w.exitCode === null && w.signalCode === null) {
    try {
      w.kill('SIGKILL');
    } catch {
      // Gone already.
    }
  }
}
const owned = new Set<Owned>();
const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

function reapSync(o: Owned): void {
  stopWatchdog(o);
  if (o.child && o.child.exitCode === null && o.child.signalCode === null) {
    try {
      o.child.kill('SIGKILL');
    } catch {
      // Gone already.
    }
  }
  rmSync(o.dir, { recursive: true, force: true });
  owned.delete(o);
}

function reapAllSync(): void {
  for (const o of [...owned]) reapSync(o);
}

function onSignal(sig: NodeJS.Signals): void {
  reapAllSync();
  unhook();
  // Our handler replaced the default action; when nobody else handles the signal, take it as if we had not been here.
  if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
}

function hook(): void {
  if (owned.size > 0) return;
  process.on('exit', reapAllSync);
  for (const s of SIGNALS) process.on(s, onSignal);
}

function unhook(): void {
  if (owned.size > 0) return;
  process.off('exit', reapAllSync);
  for (const s of SIGNALS) process.off(s, onSignal);
}

function own(dir: string): Owned {
  hook();
  const o: Owned = { dir };
  owned.add(o);
  return o;
}

async function release(o: Owned): Promise<void> {
  stopWatchdog(o);
  const child = o.child;
  if (child && child.exitCode === null && child.signalCode === null) {
    // It serves a throw-away copy: nothing to flush, so no graceful stop.
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    child.kill('SIGKILL');
    await exited;
  }
  rmSync(o.dir, { recursive: true, force: true });
  owned.delete(o);
  unhook();
}

// --- binaries and processes ---------------------------------------------------

function onPath(name: string): string | undefined {
  for (const d of (process.env.PATH ?? '').split(delimiter)) {
    if (!d) continue;
    const p = join(d, name);
    try {
      accessSync(p, constants.X_OK);
      if (statSync(p).isFile()) return p;
    } catch {
      // Not here.
    }
  }
  return undefined;
}

function binary(given: string | undefined, name: string): string {
  if (given) {
    try {
      accessSync(given, constants.X_OK);
      return given;
    } catch {
      throw new KeyhavenError('failed_precondition', `${name} is not an executable at ${given}: ${INSTALL_HINT}`);
    }
  }
  const found = onPath(name);
  if (!found) throw new KeyhavenError('failed_precondition', `${name} is not installed (not on PATH): ${INSTALL_HINT}`);
  return found;
}

/** The restore command: etcdutl where there is one (etcdctl's restore is deprecated in 3.5 and gone in 3.6), else etcdctl. */
function restoreTool(o: SnapshotOptions, etcd: string): string {
  if (o.etcdctlBinary) return binary(o.etcdctlBinary, 'etcdctl');
  const besideEtcd = join(dirname(etcd), 'etcdutl');
  try {
    accessSync(besideEtcd, constants.X_OK);
    return besideEtcd;
  } catch {
    return onPath('etcdutl') ?? binary(undefined, 'etcdctl');
  }
}

/** Runs a command to its end; its output is kept (bounded) for the error message. */
function run(cmd: string, args: string[]): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ETCDCTL_API: '3' } });
    let output = '';
    const take = (d: Buffer) => {
      if (output.length < 64 * 1024) output += d.toString('utf8');
    };
    child.stdout.on('data', take);
    child.stderr.on('data', take);
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, output }));
  });
}

/** What etcdctl said, in one line: its `Error:` line, else its last line. */
function said(output: string): string {
  const lines = output.split('\n').map((l) => l.trim()).filter(Boolean);
  const err = lines.find((l) => l.startsWith('Error:'));
  const line = err ? err.slice('Error:'.length).trim() : lines.at(-1) ?? 'no output';
  return line.slice(0, 300);
}

/** The last error etcd logged (zap JSON lines): its msg and error fields only, which name no values. */
function etcdFailure(log: string): string {
  const lines = log.split('\n').filter(Boolean).reverse();
  for (const l of lines) {
    try {
      const j = JSON.parse(l) as { level?: string; msg?: unknown; error?: unknown };
      if (j.level === 'fatal' || j.level === 'panic' || j.level === 'error') {
        return `${String(j.msg)}${j.error !== undefined ? `: ${String(j.error)}` : ''}`.slice(0, 300);
      }
    } catch {
      // A line that is not JSON (a Go panic): fall through to the raw text.
    }
  }
  return (lines[0] ?? 'no output').slice(0, 300);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// --- openSnapshot ------------------------------------------------------------

/**
 * Restores the snapshot into a fresh 0700 temp data dir (etcdctl/etcdutl
 * snapshot restore), serves it by a temporary etcd on unix sockets inside
 * that dir (client and peer), and removes both on close() — also on failure part-way,
 * and on process exit/SIGINT/SIGTERM.
 */
export async function openSnapshot(o: SnapshotOptions): Promise<EtcdSource> {
  const file = o.file;
  const label = `snapshot ${file}`;
  const startTimeoutMs = o.startTimeoutMs ?? DEFAULT_START_TIMEOUT_MS;
  if (!Number.isSafeInteger(startTimeoutMs) || startTimeoutMs < 1) throw new KeyhavenError('invalid_argument', `the etcd start timeout must be a positive number of milliseconds, not ${startTimeoutMs}`);
  let st;
  try {
    st = statSync(file);
  } catch (e) {
    throw new KeyhavenError('invalid_argument', `cannot read the etcd snapshot file ${file}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  if (!st.isFile()) throw new KeyhavenError('invalid_argument', `the etcd snapshot ${file} is not a file`);
  const etcd = binary(o.etcdBinary, 'etcd');
  const restore = restoreTool(o, etcd);

  // mkdtemp makes the folder 0700: the restored copy holds every Secret of the cluster.
  const res = own(mkdtempSync(join(o.workDir ?? tmpdir(), 'keyhaven-etcd-')));
  try {
    const gw = await restoreAndStart(res, { file, label, etcd, restore, startTimeoutMs });
    return { ...gatewaySource(label, gw, () => release(res)), takenAt: st.mtime.toISOString() };
  } catch (e) {
    await release(res);
    throw e;
  }
}

interface StartContext {
  file: string;
  label: string;
  etcd: string;
  restore: string;
  startTimeoutMs: number;
}

async function restoreAndStart(res: Owned, c: StartContext): Promise<Gateway> {
  const clientUrl = `unix://${CLIENT_SOCKET}`;
  const peerUrl = `unix://${PEER_SOCKET}`;
  const dataDir = join(res.dir, 'data');
  const cluster = [`--name`, MEMBER, '--initial-cluster', `${MEMBER}=${peerUrl}`, '--initial-advertise-peer-urls', peerUrl];

  const r = await run(c.restore, ['snapshot', 'restore', c.file, '--data-dir', dataDir, ...cluster]).catch((e: unknown) => {
    throw new KeyhavenError('failed_precondition', `cannot run ${c.restore}: ${(e as NodeJS.ErrnoException).code ?? 'error'}: ${INSTALL_HINT}`);
  });
  if (r.code !== 0) {
    const why = said(r.output);
    const hint = /missing hash/.test(why) ? ' (it is truncated or damaged, or it is not a file saved by etcdctl snapshot save)' : '';
    throw new KeyhavenError('invalid_argument', `cannot restore the etcd snapshot ${c.file}: ${why}${hint}`);
  }

  const child = spawn(c.etcd, [
    ...cluster, '--data-dir', dataDir,
    '--listen-client-urls', clientUrl, '--advertise-client-urls', clientUrl, '--listen-peer-urls', peerUrl,
    '--logger', 'zap', '--log-outputs', 'stderr', '--log-level', 'error',
  ], { cwd: res.dir, stdio: ['ignore', 'ignore', 'pipe'] });
  res.child = child;
  if (child.pid !== undefined) startWatchdog(res, child.pid);
  let log = '';
  child.stderr!.on('data', (d: Buffer) => {
    log = (log + d.toString('utf8')).slice(-16 * 1024);
  });
  let exited = false;
  let spawnError: NodeJS.ErrnoException | undefined;
  child.once('error', (e) => {
    spawnError = e;
    exited = true;
  });
  // 'close' comes after the last of its log is in.
  child.once('close', () => {
    exited = true;
  });

  const target: GatewayTarget = { origin: 'http://localhost', socketPath: join(res.dir, CLIENT_SOCKET), label: c.label, tls: {}, timeoutMs: REQUEST_TIMEOUT_MS };
  const gw = await connectGateway(target);
  const deadline = Date.now() + c.startTimeoutMs;
  try {
    for (;;) {
      if (exited) {
        if (spawnError) throw new KeyhavenError('failed_precondition', `cannot run ${c.etcd}: ${spawnError.code ?? 'error'}: ${INSTALL_HINT}`);
        throw new KeyhavenError('unavailable', `the temporary etcd for ${c.label} stopped during start: ${etcdFailure(log)}`);
      }
      try {
        await probe(gw);
        return gw;
      } catch {
        // Not listening yet.
      }
      if (Date.now() > deadline) throw new KeyhavenError('unavailable', `the temporary etcd for ${c.label} did not answer within ${Math.round(c.startTimeoutMs / 1000)} s`);
      await sleep(100);
    }
  } catch (e) {
    await gw.close().catch(() => {});
    throw e;
  }
}
