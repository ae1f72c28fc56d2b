import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { KeyhavenError } from '../errors.js';
import { DEFAULT_PASSWORD_POOL, PasswordPool, type HashSlot, type PasswordPoolOptions } from './password-pool.js';

// Passwords: scrypt (N=2^15, r=8, p=1: ~50 ms and 32 MiB here), salted,
// encoded with its parameters so they can be raised later. N can be set
// (auth.hashing.scryptN); each stored hash keeps the N it was made with.
export const DEFAULT_SCRYPT_N = 1 << 15;
const R = 8;
const P = 1;
const LEN = 32;

// Every password hash and check goes through one bounded pool of worker
// threads (password-pool.ts). Process-wide, because hashPassword and
// verifyPassword keep their plain signatures for every caller.
let pool = new PasswordPool(DEFAULT_PASSWORD_POOL);
let N = DEFAULT_SCRYPT_N;
let dummy = dummyHash(N);

export interface PasswordHashingOptions extends PasswordPoolOptions {
  /** scrypt cost for new hashes (a power of two); DEFAULT_SCRYPT_N when absent. */
  readonly scryptN?: number | undefined;
}

/** Sets the pool's size and the cost of new hashes (server start-up, from auth.hashing); the old pool's workers stop. */
export function configurePasswordHashing(opts: PasswordHashingOptions): void {
  const n = opts.scryptN ?? DEFAULT_SCRYPT_N;
  if (!Number.isInteger(n) || n < 2 || (n & (n - 1)) !== 0) throw new KeyhavenError('config_invalid', 'the scrypt cost N must be a power of two');
  const old = pool;
  pool = new PasswordPool(opts);
  void old.close();
  N = n;
  dummy = dummyHash(n);
}

/** Stops the hashing workers (they never hold the process open while idle; this is for a clean shutdown). */
export function closePasswordHashing(): Promise<void> {
  return pool.close();
}

/** Hashes admitted to the pool and not yet done (for metrics and tests). */
export function passwordHashesInUse(): number {
  return pool.inUse;
}

export const HASHING_BUSY = 'sign-in is busy; retry shortly';

/**
 * Admits one password hash or check, or refuses at once with
 * `too_many_attempts` when the pool is full. A login takes its slot before it
 * counts the attempt, so a refusal for load is not a failed login.
 */
export function takeHashSlot(): HashSlot {
  const slot = pool.tryAcquire();
  if (!slot) throw new KeyhavenError('too_many_attempts', HASHING_BUSY);
  return slot;
}

export async function hashPassword(password: string, slot?: HashSlot): Promise<string> {
  const s = slot ?? takeHashSlot();
  try {
    const salt = randomBytes(16);
    const key = await s.scrypt(password, salt, { N, r: R, p: P, len: LEN });
    return `scrypt$${N}$${R}$${P}$${salt.toString('base64')}$${key.toString('base64')}`;
  } finally {
    s.release();
  }
}

export async function verifyPassword(password: string, encoded: string, slot?: HashSlot): Promise<boolean> {
  const parts = encoded.split('$');
  if (parts.length !== 6 || parts[0] !== 'scrypt') {
    slot?.release();
    throw new KeyhavenError('integrity', 'stored password hash has an unknown format');
  }
  const [, n, r, p, salt, hash] = parts as [string, string, string, string, string, string];
  const expected = Buffer.from(hash, 'base64');
  const s = slot ?? takeHashSlot();
  try {
    const key = await s.scrypt(password, Buffer.from(salt, 'base64'), { N: Number(n), r: Number(r), p: Number(p), len: expected.length || LEN });
    return key.length === expected.length && timingSafeEqual(key, expected);
  } finally {
    s.release();
  }
}

function dummyHash(n: number): string {
  return `scrypt$${n}$${R}$${P}$${Buffer.alloc(16).toString('base64')}$${Buffer.alloc(LEN).toString('base64')}`;
}

/** A hash at the configured cost to verify against when the user does not exist, so timing does not tell. */
export function dummyPasswordHash(): string {
  return dummy;
}

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
