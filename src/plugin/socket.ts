import { chownSync, chmodSync, lstatSync, readFileSync, unlinkSync } from 'node:fs';
import { connect } from 'node:net';
import { isAbsolute } from 'node:path';
import { execFileSync } from 'node:child_process';
import { KeyhavenError } from '../errors.js';

export type Endpoint = { kind: 'path'; path: string; grpcAddress: string } | { kind: 'abstract'; name: string; grpcAddress: string };

/** Parses `unix:///abs/path` or `unix:///@name` (an abstract socket, Linux only). */
export function parseEndpoint(endpoint: string): Endpoint {
  if (!endpoint.startsWith('unix://')) throw new KeyhavenError('invalid_argument', `socket ${JSON.stringify(endpoint)} must start with unix:// (unix:///path/to.sock or unix:///@name)`);
  const rest = endpoint.slice('unix://'.length);
  if (rest.startsWith('/@')) {
    const name = rest.slice(2);
    if (name.length === 0 || name.length > 100 || /[\s\0]/.test(name)) throw new KeyhavenError('invalid_argument', `abstract socket name in ${JSON.stringify(endpoint)} must be 1-100 characters without spaces`);
    return { kind: 'abstract', name, grpcAddress: `unix-abstract:${name}` };
  }
  if (!isAbsolute(rest)) throw new KeyhavenError('invalid_argument', `socket path in ${JSON.stringify(endpoint)} must be absolute (unix:///path/to.sock)`);
  // sun_path holds 108 bytes including the terminator.
  if (Buffer.byteLength(rest) > 107) throw new KeyhavenError('invalid_argument', `socket path ${rest} is longer than the 107 bytes a unix socket path may have`);
  return { kind: 'path', path: rest, grpcAddress: `unix://${rest}` };
}

function isListening(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/**
 * Removes a socket file left behind by a crash. Anything that is not a socket
 * is left alone and reported, and so is a socket something still listens on.
 */
export async function clearStaleSocket(path: string): Promise<'none' | 'removed'> {
  let st;
  try {
    st = lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return 'none';
    throw new KeyhavenError('config_invalid', `cannot inspect socket path ${path}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  if (!st.isSocket()) throw new KeyhavenError('config_invalid', `${path} exists and is not a socket; refusing to replace it`);
  if (await isListening(path)) throw new KeyhavenError('config_invalid', `another process is already serving on ${path}`);
  unlinkSync(path);
  return 'removed';
}

function resolveGroup(group: string): number {
  if (/^\d+$/.test(group)) return Number(group);
  try {
    const out = execFileSync('getent', ['group', group], { encoding: 'utf8' });
    const gid = Number(out.split(':')[2]);
    if (Number.isInteger(gid)) return gid;
  } catch {
    // fall through to the error below
  }
  throw new KeyhavenError('config_invalid', `socket group ${JSON.stringify(group)} does not exist`);
}

/** Applies the configured mode and group to a freshly bound socket file. */
export function secureSocket(path: string, mode: number, group: string | undefined): void {
  if (group !== undefined) {
    const gid = resolveGroup(group);
    try {
      chownSync(path, -1, gid);
    } catch (e) {
      throw new KeyhavenError('config_invalid', `cannot give socket ${path} to group ${group}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
    }
  }
  chmodSync(path, mode);
}

export interface SocketIdentity {
  readonly dev: bigint;
  readonly ino: bigint;
  /** Inode numbers are reused once a file is unlinked; the birth time is not. */
  readonly birth: bigint;
}

/** Identifies the socket file just bound, so shutdown removes that file and no other. */
export function socketIdentity(path: string): SocketIdentity {
  const st = lstatSync(path, { bigint: true });
  return { dev: st.dev, ino: st.ino, birth: st.birthtimeNs };
}

/**
 * Removes the socket file this process bound. A file at the same path that is
 * not that socket (another plugin started during our drain) is left alone.
 */
export function removeSocketIfOurs(path: string, ours: SocketIdentity): void {
  try {
    const st = lstatSync(path, { bigint: true });
    if (st.isSocket() && st.dev === ours.dev && st.ino === ours.ino && st.birthtimeNs === ours.birth) unlinkSync(path);
  } catch {
    // already gone
  }
}

/**
 * Some Node.js releases (20.x among them) bind an abstract socket with the
 * whole 108-byte sun_path, padding the name with NUL bytes, so a client that
 * dials "@name" (kube-apiserver, any Go program) cannot connect
 * (nodejs/node#50889). After binding, this reads /proc/net/unix and refuses
 * such a binding instead of serving on a name nobody can reach.
 */
export function assertAbstractNameExact(name: string, procNetUnix = '/proc/net/unix'): void {
  let table: string;
  try {
    table = readFileSync(procNetUnix, 'latin1');
  } catch {
    return; // nothing to check against
  }
  const paths = table.split('\n').map((l) => l.trim().split(/\s+/)[7]).filter((p): p is string => p !== undefined);
  if (paths.includes(`@${name}`)) return;
  if (paths.some((p) => p.startsWith(`@${name}`) && /^@+$/.test(p.slice(name.length + 1)))) {
    throw new KeyhavenError(
      'config_invalid',
      `this Node.js ${process.version} pads abstract socket names with NUL bytes, so kube-apiserver could not connect to unix:///@${name}; use a path socket (unix:///run/keyhaven/kms.sock) or a Node.js release that binds abstract sockets exactly`,
    );
  }
}
