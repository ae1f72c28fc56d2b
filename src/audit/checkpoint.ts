import { createHash, createHmac } from 'node:crypto';
import { constantTimeEqual } from '../crypto/kdf.js';
import { GENESIS_HASH } from '../storage/store.js';

// A checkpoint anchors the audit chain outside the database: "record `seq` of
// store `store` had hash `hash` at `time`", signed with a key derived from the
// root key and chained to the checkpoint before it (like CloudTrail's digest
// files). Someone who can rewrite the database but not the witness cannot
// roll the chain back past a checkpoint, wipe it or fork it unnoticed.

export const CHECKPOINT_KEY_INFO = 'keyhaven audit checkpoint key v1';
const MAC_LABEL = 'keyhaven audit checkpoint v1\n';
const HEX64 = /^[0-9a-f]{64}$/;

export interface Checkpoint {
  readonly v: 1;
  /** The store id (meta "store_id"): a checkpoint belongs to one database. */
  readonly store: string;
  readonly seq: number;
  /** The chain hash of record `seq`. */
  readonly hash: string;
  /** ISO 8601, the emitting server's clock. */
  readonly time: string;
  /** Hash of the previous checkpoint's canonical form (zeros for the first of an emitter). */
  readonly prev: string;
  readonly mac: string;
}

export type CheckpointBody = Omit<Checkpoint, 'mac'>;

// Fixed field order, so the MAC and the hash never depend on how a line was
// re-serialised by a log collector.
function bodyText(c: CheckpointBody): string {
  return JSON.stringify([c.v, c.store, c.seq, c.hash, c.time, c.prev]);
}

function macOf(key: Buffer, c: CheckpointBody): string {
  return createHmac('sha256', key).update(MAC_LABEL).update(bodyText(c)).digest('hex');
}

export function signCheckpoint(key: Buffer, body: Omit<CheckpointBody, 'v'>): Checkpoint {
  const b: CheckpointBody = { v: 1, store: body.store, seq: body.seq, hash: body.hash, time: body.time, prev: body.prev };
  return { ...b, mac: macOf(key, b) };
}

function macHolds(key: Buffer, c: Checkpoint): boolean {
  return constantTimeEqual(Buffer.from(macOf(key, c), 'hex'), Buffer.from(c.mac, 'hex'));
}

/** What the next checkpoint's `prev` names: the hash of this one, MAC included. */
export function checkpointHash(c: Checkpoint): string {
  return createHash('sha256').update(JSON.stringify([c.v, c.store, c.seq, c.hash, c.time, c.prev, c.mac])).digest('hex');
}

/** The witness line: an object that cannot be mistaken for an audit record. */
export function checkpointLine(c: Checkpoint): string {
  return JSON.stringify({ checkpoint: c });
}

export const ZERO_PREV = GENESIS_HASH;

/** A checkpoint from untrusted input, or a reason it is not one. */
export function parseCheckpoint(v: unknown): Checkpoint | string {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return 'not an object';
  const c = v as Record<string, unknown>;
  if (c.v !== 1) return 'unknown version (v must be 1)';
  if (typeof c.store !== 'string' || !/^[0-9a-f]{1,64}$/.test(c.store)) return 'store must be a store id';
  if (!Number.isSafeInteger(c.seq) || (c.seq as number) < 1) return 'seq must be a positive integer';
  if (typeof c.hash !== 'string' || !HEX64.test(c.hash)) return 'hash must be 64 hex digits';
  if (typeof c.time !== 'string' || c.time.length > 40 || Number.isNaN(Date.parse(c.time))) return 'time must be an ISO 8601 time';
  if (typeof c.prev !== 'string' || !HEX64.test(c.prev)) return 'prev must be 64 hex digits';
  if (typeof c.mac !== 'string' || !HEX64.test(c.mac)) return 'mac must be 64 hex digits';
  const extra = Object.keys(c).filter((k) => !['v', 'store', 'seq', 'hash', 'time', 'prev', 'mac'].includes(k));
  if (extra.length) return `unknown field ${extra[0]}`;
  return { v: 1, store: c.store, seq: c.seq as number, hash: c.hash, time: c.time, prev: c.prev, mac: c.mac };
}

/** A checkpoint or a copied record, with where it was read (file:line, or #index). */
export interface WitnessEntry<T> {
  readonly at: string;
  readonly value: T;
}

export type WitnessProblem = 'signature' | 'link' | 'store' | 'truncated' | 'wiped' | 'diverged';

export interface WitnessFailure {
  /** Where the witness line came from. */
  readonly at: string;
  readonly seq: number;
  readonly problem: WitnessProblem;
  readonly reason: string;
}

/** A (seq, hash) pair the database's chain must contain. */
export interface Anchor {
  readonly at: string;
  readonly seq: number;
  readonly hash: string;
  readonly what: 'checkpoint' | 'record';
}

/**
 * Checks the checkpoints among themselves: each MAC (a bad one is reported
 * and not trusted), the store id, and the prev links. A checkpoint's prev must
 * be zeros (an emitter's first) or name a checkpoint read earlier, except for
 * the first checkpoint of each source (a witness file may start mid-chain,
 * e.g. after log rotation). Returns the trusted anchors and the failures.
 */
export function checkCheckpoints(
  key: Buffer,
  storeId: string,
  cps: readonly WitnessEntry<Checkpoint>[],
  sourceOf: (at: string) => string,
): { anchors: Anchor[]; failures: WitnessFailure[] } {
  const anchors: Anchor[] = [];
  const failures: WitnessFailure[] = [];
  const seen = new Set<string>();
  const started = new Set<string>();
  for (const { at, value: c } of cps) {
    const source = sourceOf(at);
    const first = !started.has(source);
    started.add(source);
    if (!macHolds(key, c)) {
      failures.push({ at, seq: c.seq, problem: 'signature', reason: `checkpoint at ${at} (record ${c.seq}) has a bad signature: forged or edited, or signed with another root key; not trusted` });
      continue;
    }
    seen.add(checkpointHash(c));
    if (c.store !== storeId) {
      failures.push({ at, seq: c.seq, problem: 'store', reason: `checkpoint at ${at} (record ${c.seq}) belongs to store ${c.store}, but this database is store ${storeId} (store id changed, or another store's witness)` });
      continue;
    }
    if (c.prev !== ZERO_PREV && !seen.has(c.prev) && !first) {
      failures.push({ at, seq: c.seq, problem: 'link', reason: `checkpoint at ${at} (record ${c.seq}) names a previous checkpoint missing from the witness (a witness line was removed or edited)` });
    }
    anchors.push({ at, seq: c.seq, hash: c.hash, what: 'checkpoint' });
  }
  return { anchors, failures };
}
