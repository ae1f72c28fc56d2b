import { createHash, randomBytes, scrypt, timingSafeEqual, type ScryptOptions } from 'node:crypto';
import { KeyhavenError } from '../errors.js';

// Passwords: scrypt (N=2^15, r=8, p=1: ~50 ms and 32 MiB here), salted,
// encoded with its parameters so they can be raised later.
const N = 1 << 15;
const R = 8;
const P = 1;
const LEN = 32;

function scryptAsync(password: string, salt: Buffer, opts: ScryptOptions): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(password, salt, LEN, { ...opts, maxmem: 128 * opts.N! * opts.r! * 2 }, (err, key) => (err ? reject(err) : resolve(key)));
  });
}

export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(16);
  const key = await scryptAsync(password, salt, { N, r: R, p: P });
  return `scrypt$${N}$${R}$${P}$${salt.toString('base64')}$${key.toString('base64')}`;
}

export async function verifyPassword(password: string, encoded: string): Promise<boolean> {
  const parts = encoded.split('$');
  if (parts.length !== 6 || parts[0] !== 'scrypt') throw new KeyhavenError('integrity', 'stored password hash has an unknown format');
  const [, n, r, p, salt, hash] = parts as [string, string, string, string, string, string];
  const expected = Buffer.from(hash, 'base64');
  const key = await scryptAsync(password, Buffer.from(salt, 'base64'), { N: Number(n), r: Number(r), p: Number(p) });
  return key.length === expected.length && timingSafeEqual(key, expected);
}

/** A hash to verify against when the user does not exist, so timing does not tell. */
export const DUMMY_PASSWORD_HASH = `scrypt$${N}$${R}$${P}$${Buffer.alloc(16).toString('base64')}$${Buffer.alloc(LEN).toString('base64')}`;

export function validatePassword(password: string): void {
  if (password.length < 12) throw new KeyhavenError('invalid_argument', 'a password must have at least 12 characters');
  if (password.length > 1024) throw new KeyhavenError('invalid_argument', 'a password must have at most 1024 characters');
}

// Tokens: `<prefix>_<id>_<secret>`. The id is the lookup key, the secret
// (256 random bits) is stored only as its SHA-256: a stolen database yields
// no usable token, and a fast hash is enough for a random secret.
export type TokenKind = 'api_key' | 'session';
const PREFIX: Record<TokenKind, string> = { api_key: 'kha', session: 'khs' };
const TOKEN = /^(kha|khs)_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$/;

export interface NewToken {
  readonly token: string;
  readonly id: string;
  readonly hash: string;
}

export function newToken(kind: TokenKind): NewToken {
  const id = randomBytes(8).toString('hex');
  const secret = randomBytes(32).toString('base64url');
  return { token: `${PREFIX[kind]}_${id}_${secret}`, id, hash: sha256Hex(secret) };
}

export interface ParsedToken {
  readonly kind: TokenKind;
  readonly id: string;
  readonly secretHash: string;
}

/** Parses a bearer token; undefined if it is not one of ours (never echo it). */
export function parseToken(token: string): ParsedToken | undefined {
  const m = TOKEN.exec(token);
  if (!m) return undefined;
  return { kind: m[1] === 'kha' ? 'api_key' : 'session', id: m[2]!, secretHash: sha256Hex(m[3]!) };
}

export function sha256Hex(s: string | Buffer): string {
  return createHash('sha256').update(s).digest('hex');
}

export function hashesEqual(a: string, b: string): boolean {
  const x = Buffer.from(a, 'hex');
  const y = Buffer.from(b, 'hex');
  return x.length === y.length && x.length > 0 && timingSafeEqual(x, y);
}

/** A random password for generated accounts (dev admin, init). */
export function generatePassword(): string {
  return randomBytes(18).toString('base64url');
}
