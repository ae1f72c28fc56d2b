import { createHash, randomBytes, randomInt } from 'node:crypto';
import { combine, split } from 'shamir-secret-sharing';
import { KeyhavenError } from '../errors.js';
import { KEY_BYTES } from '../crypto/aead.js';
import { requireKind } from './record.js';
import type { InitOptions, InitResult, Seal, SealRecord } from './seal.js';

/**
 * Shamir seal: the root key exists only in memory, rebuilt from M of N shares
 * that operators enter after each start.
 *
 * Share text: "khshare1-" + base64url(share bytes || checksum), where the share
 * bytes are the library's format (32 y-values, then the x-coordinate) and the
 * checksum is the first 4 bytes of SHA-256 over a label and the share bytes.
 * The checksum catches typos before a share is matched against the record,
 * so an operator hears "damaged" rather than "not ours" for a slip of the
 * keyboard. The record keeps SHA-256 of each share's bytes: shares are
 * uniformly random, so their digests reveal nothing and let a wrong share be
 * refused as soon as it is entered.
 */

export const SHARE_PREFIX = 'khshare1-';
export const MAX_SHARES = 16;
const SHARE_BYTES = KEY_BYTES + 1;
const CHECKSUM_BYTES = 4;
const ENCODED_BYTES = SHARE_BYTES + CHECKSUM_BYTES;
const ENCODED_CHARS = Math.ceil((ENCODED_BYTES * 8) / 6);
const CHECKSUM_LABEL = Buffer.from('keyhaven share checksum v1\0');
const DIGEST_RE = /^[0-9a-f]{64}$/;
const BASE64URL_RE = /^[A-Za-z0-9_-]+$/;

export interface ShamirRecord extends SealRecord {
  readonly kind: 'shamir';
  readonly shares: number;
  readonly threshold: number;
  /** SHA-256 (hex) of each share's bytes, in the order the shares were handed out. */
  readonly digests: readonly string[];
}

function checksum(share: Uint8Array): Buffer {
  return createHash('sha256').update(CHECKSUM_LABEL).update(share).digest().subarray(0, CHECKSUM_BYTES);
}

function shareDigest(share: Uint8Array): string {
  return createHash('sha256').update(share).digest('hex');
}

function encodeShare(share: Uint8Array): string {
  const payload = Buffer.concat([share, checksum(share)]);
  const text = SHARE_PREFIX + payload.toString('base64url');
  payload.fill(0);
  return text;
}

/**
 * Decodes a share's text into its bytes. Surrounding whitespace (a pasted
 * newline) is ignored. Errors say what is wrong, never what the share holds.
 */
export function parseShare(s: string): Buffer {
  if (typeof s !== 'string') throw new KeyhavenError('invalid_argument', 'a share must be a string');
  const text = s.trim();
  if (!text.startsWith(SHARE_PREFIX)) {
    const other = /^khshare(\d+)-/.exec(text);
    throw new KeyhavenError(
      'invalid_argument',
      other ? `share format version ${other[1]} is not supported (expected "${SHARE_PREFIX}...")` : `a share must start with "${SHARE_PREFIX}"`,
    );
  }
  const body = text.slice(SHARE_PREFIX.length);
  if (!BASE64URL_RE.test(body)) {
    throw new KeyhavenError('invalid_argument', `a share must be "${SHARE_PREFIX}" followed by base64url text (A-Z, a-z, 0-9, "-", "_"); this one has other characters`);
  }
  const payload = Buffer.from(body, 'base64url');
  if (payload.length !== ENCODED_BYTES) {
    throw new KeyhavenError(
      'invalid_argument',
      `a share must decode to ${ENCODED_BYTES} bytes, this one decodes to ${payload.length} (${body.length} characters after the prefix, expected ${ENCODED_CHARS}): was it copied completely?`,
    );
  }
  const share = Buffer.from(payload.subarray(0, SHARE_BYTES));
  const sum = payload.subarray(SHARE_BYTES);
  const ok = checksum(share).equals(sum);
  payload.fill(0);
  if (!ok) {
    share.fill(0);
    throw new KeyhavenError('invalid_argument', 'the share is damaged (checksum mismatch): check it was copied without typos');
  }
  return share;
}

/** Validates a stored record; a malformed one is a configuration problem, not a wrong share. */
function shamirRecord(record: SealRecord | undefined): ShamirRecord {
  requireKind(record, 'shamir');
  const r = record as Record<string, unknown>;
  const { shares, threshold, digests } = r;
  const bad = (why: string): never => {
    throw new KeyhavenError('config_invalid', `the stored shamir seal record is malformed: ${why}`);
  };
  if (!validCounts(shares, threshold)) bad(`shares ${String(shares)} and threshold ${String(threshold)} are not a valid pair`);
  if (!Array.isArray(digests) || !digests.every((d) => typeof d === 'string' && DIGEST_RE.test(d))) bad('digests must be SHA-256 hex strings');
  const list = digests as string[];
  if (list.length !== shares) bad(`it has ${list.length} share digests for ${String(shares)} shares`);
  if (new Set(list).size !== list.length) bad('it lists a share digest twice');
  return { kind: 'shamir', shares: shares as number, threshold: threshold as number, digests: list };
}

function validCounts(n: unknown, m: unknown): boolean {
  if (!Number.isSafeInteger(n) || !Number.isSafeInteger(m)) return false;
  const N = n as number;
  const M = m as number;
  if (N < 1 || N > MAX_SHARES || M < 1 || M > N) return false;
  // A threshold of 1 with several shares would make each share the key.
  return M >= 2 || N === 1;
}

/**
 * Checks a share against the record and returns its position in
 * record.digests (0-based: the order the shares were handed out).
 * Accepts the share's text or bytes from parseShare.
 */
export function checkShare(record: SealRecord, share: string | Uint8Array): number {
  const r = shamirRecord(record);
  const bytes = typeof share === 'string' ? parseShare(share) : share;
  if (bytes.length !== SHARE_BYTES) {
    throw new KeyhavenError('invalid_argument', `a share must hold ${SHARE_BYTES} bytes, this one holds ${bytes.length}`);
  }
  const index = r.digests.indexOf(shareDigest(bytes));
  if (typeof share === 'string') bytes.fill(0);
  if (index < 0) throw new KeyhavenError('invalid_argument', 'this share does not belong to this server');
  return index;
}

export function shamirSeal(): Seal {
  return {
    kind: 'shamir',
    needsShares: true,

    async initialize(opts: InitOptions): Promise<InitResult> {
      const { shares: n, threshold: m } = opts ?? {};
      if (n === undefined || m === undefined) {
        throw new KeyhavenError('invalid_argument', 'a shamir seal needs the number of shares (N) and the threshold (M)');
      }
      if (!validCounts(n, m)) {
        throw new KeyhavenError(
          'invalid_argument',
          `invalid shamir parameters: shares ${String(n)}, threshold ${String(m)}: need whole numbers with 1 <= threshold <= shares <= ${MAX_SHARES}, and threshold >= 2 unless there is a single share`,
        );
      }
      const rootKey = randomBytes(KEY_BYTES);
      let raw: Uint8Array[];
      if (n === 1) {
        // Threshold 1 is a constant polynomial: the one share's y-values are
        // the key itself; split() does not go below 2 shares.
        const one = new Uint8Array(SHARE_BYTES);
        one.set(rootKey);
        one[KEY_BYTES] = randomInt(1, 256);
        raw = [one];
      } else {
        // The library checks for exactly Uint8Array, not a Buffer subclass.
        const secret = new Uint8Array(rootKey);
        try {
          raw = await split(secret, n, m);
        } finally {
          secret.fill(0);
        }
      }
      const shares = raw.map(encodeShare);
      const record: ShamirRecord = { kind: 'shamir', shares: n, threshold: m, digests: raw.map(shareDigest) };
      for (const s of raw) s.fill(0);
      return { rootKey, record, shares };
    },

    async unseal(record: SealRecord, shares?: readonly string[]): Promise<Buffer> {
      const r = shamirRecord(record);
      if (shares !== undefined && !Array.isArray(shares)) throw new KeyhavenError('invalid_argument', 'shares must be a list of share strings');
      const byIndex = new Map<number, Buffer>();
      try {
        for (const [i, text] of (shares ?? []).entries()) {
          let bytes: Buffer | undefined;
          let index: number;
          try {
            bytes = parseShare(text);
            index = checkShare(r, bytes);
          } catch (e) {
            bytes?.fill(0);
            if (e instanceof KeyhavenError && (shares?.length ?? 0) > 1) {
              throw new KeyhavenError(e.code, `share ${i + 1} of ${shares?.length}: ${e.message}`, { cause: e });
            }
            throw e;
          }
          // The same share entered twice counts once.
          if (byIndex.has(index)) bytes.fill(0);
          else byIndex.set(index, bytes);
        }
        if (byIndex.size < r.threshold) {
          throw new KeyhavenError(
            'failed_precondition',
            `unsealing needs ${r.threshold} distinct valid shares of ${r.shares}; ${byIndex.size} given${(shares?.length ?? 0) > byIndex.size ? ' (duplicates count once)' : ''}`,
          );
        }
        const use = [...byIndex.values()].slice(0, r.threshold);
        let key: Buffer;
        if (r.threshold === 1) {
          key = Buffer.from(use[0]!.subarray(0, KEY_BYTES));
        } else {
          const plain = use.map((b) => new Uint8Array(b));
          try {
            const out = await combine(plain);
            key = Buffer.from(out);
            out.fill(0);
          } finally {
            for (const p of plain) p.fill(0);
          }
        }
        if (key.length !== KEY_BYTES) throw new KeyhavenError('internal', 'rebuilt root key has the wrong length');
        return key;
      } finally {
        for (const b of byIndex.values()) b.fill(0);
      }
    },

    async close(): Promise<void> {},
  };
}
