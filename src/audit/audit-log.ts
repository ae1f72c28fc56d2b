import { constantTimeEqual } from '../crypto/kdf.js';
import { KeyhavenError } from '../errors.js';
import type { AuditDraft, AuditRow, Store } from '../storage/store.js';
import type { Anchor, WitnessFailure } from './checkpoint.js';
import { verifyWithWitness, type WitnessInput, type WitnessVerifyResult } from './checkpoint-verify.js';
import { headMac, headValue, linkRecord, verifyRecords, type VerifyResult } from './chain.js';
import { createSqliteWriter, type SqliteWriter } from './sqlite-writer.js';

const HEAD = 'audit_head';

export interface AuditEvent {
  readonly actor: string;
  readonly operation: string;
  readonly keyName?: string | undefined;
  readonly keyVersion?: number | undefined;
  readonly result: string;
  readonly requestId?: string | undefined;
  /** Safe metadata only: never plaintext, ciphertext, key material or credentials. */
  readonly details?: Record<string, string | number | boolean> | undefined;
}

export interface AuditLog {
  /** Resolves once the record is durably stored; rejects (audit_failed) if it is not. */
  record(event: AuditEvent): Promise<void>;
  /** Writes the record inside the caller's transaction: the change and its record commit together. */
  recordIn(tx: Store, event: AuditEvent): Promise<void>;
  /** Waits for every pending record. */
  flush(): Promise<void>;
  /** Waits for every pending record, then ends the SQLite writer thread (before the store closes). */
  close(): Promise<void>;
  /** With anchors (a witness's seq and hash pairs), also checks the chain contains each. */
  verify(opts?: { anchors?: readonly Anchor[] }): Promise<StoreVerifyResult>;
  /**
   * Checks a witness's checkpoints (signatures, links) and the chain against
   * them; needs the checkpoint key (an unsealed server), else `sealed`.
   */
  verifyWitness(w: WitnessInput): Promise<WitnessVerifyResult>;
  /**
   * Sets (on unseal) or drops (on seal) the key that signs the chain head.
   * Without it records still join the chain; the next signed write covers
   * them. Dropping it also drops the checkpoint key. Records already handed
   * to the writer thread are signed with the key they went with: await
   * flush() after dropping it before anything that deletes the head.
   */
  setHeadKey(key: Buffer | undefined): void;
  /** The key that checks checkpoint signatures (derived from the root key on unseal). */
  setCheckpointKey(key: Buffer | undefined): void;
  /**
   * Sets the head key after checking the stored head with it. If the head no
   * longer matches the chain (records cut from the end, or rewritten), later
   * records are not signed, so verify keeps reporting the damage instead of a
   * fresh head hiding it. Resolves whether the stored head held. With
   * `expectHead` (the store was signed before) a missing head over existing
   * records counts as broken too: a deleted head is not replaced.
   */
  adoptHeadKey(key: Buffer, expectHead?: boolean): Promise<boolean>;
  /**
   * How many records after the stored head the last adoptHeadKey found (and
   * the next signed write covers): written while sealed, or appended to the
   * database by someone else. The unseal record names them.
   */
  unsignedAtAdopt(): number;
  /**
   * Called after each batch is stored (sinks use it to forward records
   * promptly) with its last record; `change` is true for a record written
   * with a key or access change (recordIn). `records` is the whole batch as
   * written (the operational log picks its lines from it).
   */
  onStored(listener: (last: AuditRow, change: boolean, records: readonly AuditDraft[]) => void): void;
}

interface Pending {
  draft: AuditDraft;
  resolve: () => void;
  reject: (e: unknown) => void;
}

// Group commit: records arriving while a write is in flight are stored
// together in the next transaction, so one fsync covers many requests and no
// request is answered before its record is on disk.
// Formatting a timestamp costs more than the rest of a draft; calls in the
// same millisecond share one string.
let lastMs = -1;
let lastIso = '';
function isoNow(): string {
  const ms = Date.now();
  if (ms !== lastMs) {
    lastMs = ms;
    lastIso = new Date(ms).toISOString();
  }
  return lastIso;
}

function toDraft(event: AuditEvent): AuditDraft {
  return {
    time: isoNow(),
    actor: event.actor,
    operation: event.operation,
    key_name: event.keyName ?? null,
    key_version: event.keyVersion ?? null,
    result: event.result,
    request_id: event.requestId ?? null,
    details: event.details ? JSON.stringify(event.details) : null,
  };
}

export interface AuditLogOptions {
  /** Key for the chain-head HMAC (derived from the root key); absent while sealed. */
  readonly headKey?: Buffer | undefined;
  readonly maxBatch?: number;
  /**
   * fsync every batch of request records (default false: records survive a
   * process crash, and a power loss may cost the newest ones). Records written
   * with a key change are always fsynced with it.
   */
  readonly fsync?: boolean;
}

export function createAuditLog(store: Store, opts: AuditLogOptions): AuditLog {
  let headKey = opts.headKey;
  let checkpointKey: Buffer | undefined;
  let unsigned = 0;
  let head = headKey ? headValue(headKey) : undefined;
  const listeners: ((last: AuditRow, change: boolean, records: readonly AuditDraft[]) => void)[] = [];
  const notify = (rows: readonly AuditRow[], change: boolean, records: readonly AuditDraft[] = rows) => {
    const last = rows[rows.length - 1];
    if (last) for (const l of listeners) l(last, change, records);
  };
  const fsync = opts.fsync ?? false;
  const maxBatch = opts.maxBatch ?? 512;
  let queue: Pending[] = [];
  let writing: Promise<void> | undefined;
  let scheduled = false;
  // On SQLite, batches go to a writer thread with its own connection
  // (sqlite-writer.ts): the event loop serves requests while a batch is
  // committed and fsynced, and the records arriving meanwhile form the next.
  let writer: SqliteWriter | undefined;
  let writerFile: string | undefined;
  const writerFor = (file: string): SqliteWriter => {
    if (!writer || writerFile !== file) {
      writer = createSqliteWriter(file);
      writerFile = file;
    }
    return writer;
  };
  const failed = (e: unknown) => new KeyhavenError('audit_failed', 'the audit record could not be written; request refused', { cause: e });

  const drain = async (): Promise<void> => {
    while (queue.length > 0) {
      const batch = queue.slice(0, maxBatch);
      queue = queue.slice(batch.length);
      try {
        // Read per batch: a closed store has none, and its appendAudit refuses.
        const file = store.auditFile;
        if (file !== undefined) {
          const last = await writerFor(file).append(
            batch.map((p) => p.draft),
            head ? headKey : undefined,
            fsync,
          );
          for (const p of batch) p.resolve();
          // The writer thread hands back only the last row; the batch is the drafts sent.
          notify([last], false, batch.map((p) => p.draft));
          continue;
        }
        const rows = await store.appendAudit(
          batch.map((p) => p.draft),
          linkRecord,
          { head, fsync },
        );
        for (const p of batch) p.resolve();
        notify(rows, false);
      } catch (e) {
        const err = failed(e);
        for (const p of batch) p.reject(err);
      }
    }
  };

  const kick = (): void => {
    if (writing || scheduled) return;
    scheduled = true;
    // setImmediate lets every request already decoded in this turn join the batch.
    setImmediate(() => {
      scheduled = false;
      writing = drain().finally(() => {
        writing = undefined;
        if (queue.length > 0) kick();
      });
    });
  };

  return {
    record(event) {
      const draft = toDraft(event);
      return new Promise<void>((resolve, reject) => {
        queue.push({ draft, resolve, reject });
        kick();
      });
    },
    async flush() {
      while (writing || scheduled || queue.length > 0) {
        await (writing ?? new Promise((r) => setImmediate(r)));
      }
    },
    async close() {
      while (writing || scheduled || queue.length > 0) {
        await (writing ?? new Promise((r) => setImmediate(r)));
      }
      await writer?.close();
      writer = undefined;
      writerFile = undefined;
    },
    async recordIn(tx, event) {
      try {
        const rows = await tx.appendAudit([toDraft(event)], linkRecord, { head });
        // After the enclosing transaction has had its turn to commit.
        setImmediate(() => notify(rows, true));
      } catch (e) {
        throw new KeyhavenError('audit_failed', 'the audit record could not be written; change refused', { cause: e });
      }
    },
    async verify(o) {
      return verifyStore(store, headKey, o);
    },
    async verifyWitness(w) {
      const key = checkpointKey;
      if (!key) throw new KeyhavenError('sealed', 'the server is sealed; checkpoints can be checked once it is unsealed');
      return verifyWithWitness((anchors) => verifyStore(store, headKey, { anchors }), await store.getMeta('store_id'), key, w);
    },
    setHeadKey(key) {
      headKey = key;
      head = key ? headValue(key) : undefined;
      if (!key) {
        checkpointKey?.fill(0);
        checkpointKey = undefined;
      }
    },
    setCheckpointKey(key) {
      checkpointKey?.fill(0);
      checkpointKey = key;
    },
    async adoptHeadKey(key, expectHead = false) {
      const held = await storedHeadHolds(store, key, expectHead);
      const h = held ? await readHead(store) : undefined;
      unsigned = h !== undefined && h !== 'unreadable' ? Math.max(0, (await store.lastAuditSeq()) - h.seq) : 0;
      headKey = key;
      head = held ? headValue(key) : undefined;
      return held;
    },
    unsignedAtAdopt() {
      return unsigned;
    },
    onStored(listener) {
      listeners.push(listener);
    },
  };
}

interface StoredHead {
  seq: number;
  hash: string;
  mac: string;
}

async function readHead(store: Store): Promise<StoredHead | 'unreadable' | undefined> {
  const raw = await store.getMeta(HEAD);
  if (raw === undefined) return undefined;
  try {
    const h = JSON.parse(raw) as StoredHead;
    return { seq: Number(h.seq), hash: String(h.hash), mac: String(h.mac) };
  } catch {
    return 'unreadable';
  }
}

function macHolds(key: Buffer, h: StoredHead): boolean {
  return constantTimeEqual(Buffer.from(headMac(key, h.seq, h.hash), 'hex'), Buffer.from(h.mac, 'hex'));
}

/** Whether the stored head (if any) is signed with this key and names a record still in the chain. */
async function storedHeadHolds(store: Store, key: Buffer, expectHead: boolean): Promise<boolean> {
  const h = await readHead(store);
  // A store signed before has a head; none now means it was deleted (with the log, if empty).
  if (h === undefined) return !expectHead;
  if (h === 'unreadable' || !macHolds(key, h)) return false;
  // Read after the head: a head and its record commit together.
  const [row] = await store.readAudit(h.seq - 1, 1);
  return row !== undefined && row.seq === h.seq && row.hash === h.hash;
}

/** A seal record or the barrier canary: the store has been initialised, so its log has a signed head. */
async function isInitialised(store: Store): Promise<boolean> {
  return (await store.getMeta('seal')) !== undefined || (await store.barrierGet('sys/canary')) !== undefined;
}

export interface StoreVerifyResult extends VerifyResult {
  /** Anchors (from a witness) the chain does not contain; present when anchors were given. */
  readonly anchorFailures?: WitnessFailure[];
}

/**
 * Walks the whole chain in pages and reports the first broken record; with
 * the head key it also checks the signed chain head against the chain.
 * Without it, an initialised store must still have a head, at least as many
 * records as the head names, and at least one record. Each anchor (a
 * witness's seq and hash) must be in the chain with exactly that hash.
 */
export async function verifyStore(store: Store, headKey?: Buffer, opts: { anchors?: readonly Anchor[] } = {}): Promise<StoreVerifyResult> {
  const initialised = await isInitialised(store);
  // The head is read before the walk: records appended meanwhile (a live
  // server, or another server on the same database) are then never taken
  // for records deleted from the end.
  const first = await readHead(store);
  const headSeq = first !== undefined && first !== 'unreadable' ? first.seq : undefined;
  const anchors = new Map<number, Anchor[]>();
  for (const a of opts.anchors ?? []) {
    const list = anchors.get(a.seq);
    if (list) list.push(a);
    else anchors.set(a.seq, [a]);
  }
  const failures: WitnessFailure[] = [];
  let hashAtHead: string | undefined;
  let after = 0;
  let prev: string | undefined;
  let total = 0;
  const withAnchors = (r: VerifyResult): StoreVerifyResult => {
    if (!opts.anchors) return r;
    const res: StoreVerifyResult = { ...r, anchorFailures: failures };
    if (!r.ok || failures.length === 0) return res;
    const worst = failures.reduce((a, b) => (b.seq < a.seq ? b : a));
    return { ...res, ok: false, firstBroken: { seq: worst.seq, reason: worst.reason } };
  };
  for (;;) {
    const page: AuditRow[] = await store.readAudit(after, 1000);
    if (page.length === 0) break;
    const res = verifyRecords(page, prev, after + 1);
    if (!res.ok) return withAnchors({ ok: false, records: total + res.records, firstBroken: res.firstBroken! });
    total += res.records;
    if (headSeq !== undefined) hashAtHead ??= page.find((r) => r.seq === headSeq)?.hash;
    if (anchors.size) {
      for (const r of page) {
        const here = anchors.get(r.seq);
        if (!here) continue;
        anchors.delete(r.seq);
        for (const a of here) {
          if (a.hash !== r.hash) failures.push({ at: a.at, seq: a.seq, problem: 'diverged', reason: `record ${a.seq} differs from the ${a.what} at ${a.at}: the log was rolled back and rewritten, or forked, from record ${a.seq} or earlier` });
        }
      }
    }
    const last = page[page.length - 1]!;
    after = last.seq;
    prev = last.hash;
  }
  for (const here of anchors.values()) {
    for (const a of here) {
      failures.push(
        total === 0
          ? { at: a.at, seq: a.seq, problem: 'wiped', reason: `the log holds no records, but the ${a.what} at ${a.at} names record ${a.seq}: the log was wiped` }
          : { at: a.at, seq: a.seq, problem: 'truncated', reason: `the log ends at record ${after}, but the ${a.what} at ${a.at} names record ${a.seq}: records were cut from the end (rolled back)` },
      );
    }
  }
  const broken = (seq: number, reason: string): StoreVerifyResult => withAnchors({ ok: false, records: total, firstBroken: { seq, reason } });
  if (initialised && total === 0) return broken(1, 'the store is initialised but its audit log holds no records (wiped)');
  if (!headKey) {
    if (!initialised) return withAnchors({ ok: true, records: total });
    if (first === undefined) return broken(1, 'the signed chain head is missing (deleted) on an initialised store');
    if (first === 'unreadable') return broken(after, 'the signed chain head is unreadable');
    if (first.seq > after) return broken(after + 1, `records ${after + 1} to ${first.seq} were deleted (the chain head names record ${first.seq})`);
    return withAnchors({ ok: true, records: total });
  }
  return withAnchors(await checkHead(store, headKey, first, hashAtHead, total, after, prev, initialised));
}

async function checkHead(
  store: Store,
  key: Buffer,
  first: StoredHead | 'unreadable' | undefined,
  hashAtHead: string | undefined,
  records: number,
  lastSeq: number,
  lastHash: string | undefined,
  initialised: boolean,
): Promise<VerifyResult> {
  const broken = (seq: number, reason: string): VerifyResult => ({ ok: false, records, firstBroken: { seq, reason } });
  // No head when the walk began: the first signed write may have come since.
  const signedDuringWalk = first === undefined;
  let head = first ?? (await readHead(store));
  if (head === undefined) return records === 0 && !initialised ? { ok: true, records } : broken(1, 'the signed chain head is missing (deleted) on an initialised store');
  if (head === 'unreadable') return broken(lastSeq, 'the signed chain head is unreadable');
  if (!macHolds(key, head)) {
    return broken(Math.min(head.seq || 1, lastSeq + 1), 'the chain head signature does not verify (head edited, or written without the root key)');
  }
  if (signedDuringWalk) {
    if (head.seq > lastSeq) return { ok: true, records };
  } else if (head.seq > lastSeq) {
    return broken(lastSeq + 1, `records ${lastSeq + 1} to ${head.seq} were deleted (the signed head names record ${head.seq})`);
  } else if (hashAtHead !== head.hash) {
    return broken(head.seq, `record ${head.seq} is not the one the signed head names (the log was cut and rewritten from there or earlier)`);
  }
  if (head.seq < lastSeq) {
    // Records after the head read: signed since, or not signed at all.
    const now = await readHead(store);
    if (now === undefined || now === 'unreadable' || !macHolds(key, now)) return broken(head.seq + 1, 'the signed chain head changed unreadably during verification');
    head = now;
  }
  if (head.seq < lastSeq) {
    return broken(head.seq + 1, `record ${head.seq + 1} onwards is not covered by the signed chain head (appended outside keyhaven, or written while the server was sealed and not yet signed)`);
  }
  if (head.seq === lastSeq && head.hash !== lastHash) {
    return broken(lastSeq, 'the last record does not match the signed chain head');
  }
  return { ok: true, records };
}
