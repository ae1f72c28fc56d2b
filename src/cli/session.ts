import { chmodSync, closeSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { homedir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { KeyhavenError } from '../errors.js';

// Saved logins, one per named context (like kubectl contexts): a bearer token
// is as good as the password for its lifetime, so the file is 0600 in a 0700
// folder and written atomically.

export interface Session {
  readonly server: string;
  readonly token: string;
  readonly expiresAt: string;
  /** The CA file given at login, so later commands reach a private-CA server without repeating it. */
  readonly caFile?: string;
}

/** A named server; the token is gone after logout, the server and CA file stay. */
export interface Context {
  readonly server: string;
  readonly token?: string;
  readonly expiresAt?: string;
  readonly caFile?: string;
}

export interface Sessions {
  readonly current?: string;
  readonly contexts: Readonly<Record<string, Context>>;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

/** Context names stay plain words: they appear in shell completion and file keys. */
export function checkContextName(name: string, from = '--context'): string {
  if (!NAME.test(name)) throw new KeyhavenError('invalid_argument', `${from} must be 1-63 letters, digits, ".", "_" or "-" starting with a letter or digit, not ${JSON.stringify(name)}`);
  return name;
}

/** The context name login picks for a server when none is given: its host and port. */
export function contextNameFor(server: string): string {
  const u = new URL(server);
  const name = `${u.hostname.replace(/^\[|\]$/g, '').replace(/:/g, '.')}${u.port ? `-${u.port}` : ''}`.replace(/[^A-Za-z0-9._-]/g, '-');
  return NAME.test(name) ? name : 'default';
}

function configDir(): string {
  // XDG: a relative XDG_CONFIG_HOME is invalid and ignored.
  const xdg = process.env.XDG_CONFIG_HOME;
  return join(xdg && isAbsolute(xdg) ? xdg : join(homedir(), '.config'), 'keyhaven');
}

function sessionPath(): string {
  return join(configDir(), 'session.json');
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

function parseContext(v: unknown): Context | undefined {
  if (typeof v !== 'object' || v === null) return undefined;
  const c = v as Record<string, unknown>;
  const server = str(c.server);
  if (!server) return undefined;
  const token = str(c.token);
  const expiresAt = str(c.expiresAt);
  const caFile = str(c.caFile);
  return { server, ...(token && expiresAt ? { token, expiresAt } : {}), ...(caFile ? { caFile } : {}) };
}

function parseSessions(raw: string): Sessions | undefined {
  let j: unknown;
  try {
    j = JSON.parse(raw);
  } catch {
    return undefined;
  }
  if (typeof j !== 'object' || j === null) return undefined;
  const o = j as Record<string, unknown>;
  if (o.version === undefined) {
    // The single-session file of earlier versions: one context, rewritten in the new shape on the next save.
    const c = parseContext(o);
    if (!c?.token) return undefined;
    const name = contextNameFor(c.server);
    return { current: name, contexts: { [name]: c } };
  }
  if (o.version !== 2 || typeof o.contexts !== 'object' || o.contexts === null) return undefined;
  const contexts: Record<string, Context> = {};
  for (const [name, v] of Object.entries(o.contexts as Record<string, unknown>)) {
    const c = parseContext(v);
    if (NAME.test(name) && c) contexts[name] = c;
  }
  const current = str(o.current);
  return { ...(current && contexts[current] ? { current } : {}), contexts };
}

/** Every saved context; an unreadable file counts as none (with a warning). */
export function readSessions(): Sessions {
  let raw: string;
  try {
    raw = readFileSync(sessionPath(), 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { contexts: {} };
    throw new KeyhavenError('config_invalid', `cannot read the saved session ${sessionPath()}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  const s = parseSessions(raw);
  if (s) return s;
  process.stderr.write(`keyhaven: ignoring the unreadable saved session ${sessionPath()}; run keyhaven login\n`);
  return { contexts: {} };
}

export function writeSessions(s: Sessions): string {
  const path = sessionPath();
  if (Object.keys(s.contexts).length === 0) {
    try {
      rmSync(path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new KeyhavenError('config_invalid', `cannot remove the saved session ${path}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
    }
    return path;
  }
  const dir = configDir();
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
  const tmp = `${path}.${process.pid}.tmp`;
  const fd = openSync(tmp, 'w', 0o600);
  try {
    writeSync(fd, `${JSON.stringify({ version: 2, ...(s.current ? { current: s.current } : {}), contexts: s.contexts }, null, 2)}\n`);
  } finally {
    closeSync(fd);
  }
  // openSync's mode only applies to new files; a leftover temp file keeps its own.
  chmodSync(tmp, 0o600);
  renameSync(tmp, path);
  return path;
}

/** Saves a login under a context name and makes it the current context. */
export function saveSession(name: string, s: Session): string {
  const all = readSessions();
  return writeSessions({ current: name, contexts: { ...all.contexts, [name]: s } });
}

/**
 * The context a command uses: the one named (--context, then
 * $KEYHAVEN_CONTEXT), else the current one. A name that is not saved is an error.
 */
export function selectContext(all: Sessions, explicit: string | undefined, from: string): { name: string; context: Context } | undefined {
  if (explicit !== undefined) {
    checkContextName(explicit, from);
    const c = all.contexts[explicit];
    if (!c) {
      const known = Object.keys(all.contexts);
      throw new KeyhavenError('not_found', `no saved context "${explicit}" (from ${from}); ${known.length ? `saved: ${known.join(', ')}` : 'none saved: run "keyhaven login --context NAME"'}`);
    }
    return { name: explicit, context: c };
  }
  if (all.current && all.contexts[all.current]) return { name: all.current, context: all.contexts[all.current]! };
  return undefined;
}
