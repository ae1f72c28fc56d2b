import { createHmac } from 'node:crypto';
import { constantTimeEqual } from '../crypto/kdf.js';
import { KeyhavenError } from '../errors.js';
import type { AuditDraft, AuditRow, Store } from '../storage/store.js';
import { linkRecord, verifyRecords, type VerifyResult } from './chain.js';

const HEAD = 'audit_head';

// The chain head (last seq and hash) is stored with an HMAC under a key
// derived from the root key, updated in the same transaction as the records.
// It catches what a bare hash chain cannot: records cut from the end, and
// records appended (or a chain rewritten) by someone without the root key.
function headMac(key: Buffer, seq: number, hash: string): string {
  return createHmac('sha256', key).update(`keyhaven audit head v1\n${seq}\n${hash}`).digest('hex');
}

function headValue(key: Buffer): (last: AuditRow) => string {
  return (last) => JSON.stringify({ seq: last.seq, hash: last.hash, mac: headMac(key, last.seq, last.hash) });
}

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
  verify(): Promise<VerifyResult>;
  /**
   * Sets (on unseal) or drops (on seal) the key that signs the chain head.
   * Without it records still join the chain; the next signed write covers them.
   */
  setHeadKey(key: Buffer | undefined): void;
  /** Called after each batch is stored (sinks use it to forward records promptly). */
  onStored(listener: () => void): void;
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
  let head = headKey ? headValue(headKey) : undefined;
  const listeners: (() => void)[] = [];
  const notify = () => {
    for (const l of listeners) l();
  };
  const fsync = opts.fsync ?? false;
  const maxBatch = opts.maxBatch ?? 512;
  let queue: Pending[] = [];
  let writing: Promise<void> | undefined;
  let scheduled = false;

  const drain = async (): Promise<void> => {
    while (queue.length > 0) {
      const batch = queue.slice(0, maxBatch);
      queue = queue.slice(batch.length);
      try {
        await store.appendAudit(
          batch.map((p) => p.draft),
          linkRecord,
          { head, fsync },
        );
        for (const p of batch) p.resolve();
        notify();
      } catch (e) {
        const err = new KeyhavenError('audit_failed', 'the audit record could not be written; request refused', { cause: e });
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
    async recordIn(tx, event) {
      try {
        await tx.appendAudit([toDraft(event)], linkRecord, { head });
        setImmediate(notify);
      } catch (e) {
        throw new KeyhavenError('audit_failed', 'the audit record could not be written; change refused', { cause: e });
      }
    },
    async verify() {
      return verifyStore(store, headKey);
    },
    setHeadKey(key) {
      headKey = key;
      head = key ? headValue(key) : undefined;
    },
    onStored(listener) {
      listeners.push(listener);
    },
  };
}

/**
 * Walks the whole chain in pages and reports the first broken record; with
 * the head key it also checks the signed chain head against the last record.
 */
export async function verifyStore(store: Store, headKey?: Buffer): Promise<VerifyResult> {
  let after = 0;
  let prev: string | undefined;
  let total = 0;
  for (;;) {
    const page: AuditRow[] = await store.readAudit(after, 1000);
    if (page.length === 0) return headKey ? checkHead(store, headKey, total, after, prev) : { ok: true, records: total };
    const res = verifyRecords(page, prev, after + 1);
    if (!res.ok) return { ok: false, records: total + res.records, firstBroken: res.firstBroken! };
    total += res.records;
    const last = page[page.length - 1]!;
    after = last.seq;
    prev = last.hash;
  }
}

async function checkHead(store: Store, key: Buffer, records: number, lastSeq: number, lastHash: string | undefined): Promise<VerifyResult> {
  const raw = await store.getMeta(HEAD);
  if (raw === undefined) {
    return records === 0 ? { ok: true, records } : { ok: false, records, firstBroken: { seq: 1, reason: 'the signed chain head is missing' } };
  }
  let head: { seq: number; hash: string; mac: string };
  try {
    head = JSON.parse(raw) as typeof head;
  } catch {
    return { ok: false, records, firstBroken: { seq: lastSeq, reason: 'the signed chain head is unreadable' } };
  }
  const expected = Buffer.from(headMac(key, Number(head.seq), String(head.hash)), 'hex');
  if (!constantTimeEqual(expected, Buffer.from(String(head.mac), 'hex'))) {
    return { ok: false, records, firstBroken: { seq: Math.min(Number(head.seq) || 1, lastSeq + 1), reason: 'the chain head signature does not verify (head edited, or written without the root key)' } };
  }
  if (head.seq > lastSeq) {
    return { ok: false, records, firstBroken: { seq: lastSeq + 1, reason: `records ${lastSeq + 1} to ${head.seq} were deleted (the signed head names record ${head.seq})` } };
  }
  if (head.seq < lastSeq) {
    return { ok: false, records, firstBroken: { seq: head.seq + 1, reason: `record ${head.seq + 1} onwards is not covered by the signed chain head (appended outside keyhaven, or written while the server was sealed and not yet signed)` } };
  }
  if (head.hash !== lastHash) {
    return { ok: false, records, firstBroken: { seq: lastSeq, reason: 'the last record does not match the signed chain head' } };
  }
  return { ok: true, records };
}
