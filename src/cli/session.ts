import { chmodSync, closeSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { homedir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { KeyhavenError } from '../errors.js';

// The login session: a bearer token is as good as the password for its
// lifetime, so the file is 0600 in a 0700 folder and written atomically.

export interface Session {
  readonly server: string;
  readonly token: string;
  readonly expiresAt: string;
  /** The CA file given at login, so later commands reach a private-CA server without repeating it. */
  readonly caFile?: string;
}

function configDir(): string {
  // XDG: a relative XDG_CONFIG_HOME is invalid and ignored.
  const xdg = process.env.XDG_CONFIG_HOME;
  return join(xdg && isAbsolute(xdg) ? xdg : join(homedir(), '.config'), 'keyhaven');
}

function sessionPath(): string {
  return join(configDir(), 'session.json');
}

export function readSession(): Session | undefined {
  let raw: string;
  try {
    raw = readFileSync(sessionPath(), 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new KeyhavenError('config_invalid', `cannot read the saved session ${sessionPath()}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  try {
    const s = JSON.parse(raw) as Partial<Session>;
    if (typeof s.server === 'string' && typeof s.token === 'string' && typeof s.expiresAt === 'string') {
      return { server: s.server, token: s.token, expiresAt: s.expiresAt, ...(typeof s.caFile === 'string' ? { caFile: s.caFile } : {}) };
    }
  } catch {
    // fall through: an unreadable file is treated like a missing login
  }
  process.stderr.write(`keyhaven: ignoring the unreadable saved session ${sessionPath()}; run keyhaven login\n`);
  return undefined;
}

export function saveSession(s: Session): string {
  const dir = configDir();
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
  const path = sessionPath();
  const tmp = `${path}.${process.pid}.tmp`;
  const fd = openSync(tmp, 'w', 0o600);
  try {
    writeSync(fd, `${JSON.stringify(s, null, 2)}\n`);
  } finally {
    closeSync(fd);
  }
  // openSync's mode only applies to new files; a leftover temp file keeps its own.
  chmodSync(tmp, 0o600);
  renameSync(tmp, path);
  return path;
}

export function deleteSession(): boolean {
  const path = sessionPath();
  try {
    rmSync(path);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw new KeyhavenError('config_invalid', `cannot remove the saved session ${path}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
}
