import { KeyhavenError } from '../errors.js';
import type { AuditDraft, AuditRow, Store } from '../storage/store.js';
import { linkRecord, verifyRecords, type VerifyResult } from './chain.js';

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
  /** Waits for every pending record. */
  flush(): Promise<void>;
  verify(): Promise<VerifyResult>;
}

interface Pending {
  draft: AuditDraft;
  resolve: () => void;
  reject: (e: unknown) => void;
}

// Group commit: records arriving while a write is in flight are stored
// together in the next transaction, so one fsync covers many requests and no
// request is answered before its record is on disk.
export function createAuditLog(store: Store, opts: { maxBatch?: number } = {}): AuditLog {
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
        );
        for (const p of batch) p.resolve();
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
      const draft: AuditDraft = {
        time: new Date().toISOString(),
        actor: event.actor,
        operation: event.operation,
        key_name: event.keyName ?? null,
        key_version: event.keyVersion ?? null,
        result: event.result,
        request_id: event.requestId ?? null,
        details: event.details ? JSON.stringify(event.details) : null,
      };
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
    async verify() {
      return verifyStore(store);
    },
  };
}

/** Walks the whole chain in pages; reports the first broken record. */
export async function verifyStore(store: Store): Promise<VerifyResult> {
  let after = 0;
  let prev: string | undefined;
  let total = 0;
  for (;;) {
    const page: AuditRow[] = await store.readAudit(after, 1000);
    if (page.length === 0) return { ok: true, records: total };
    const res = verifyRecords(page, prev, after + 1);
    if (!res.ok) return { ok: false, records: total + res.records, firstBroken: res.firstBroken! };
    total += res.records;
    const last = page[page.length - 1]!;
    after = last.seq;
    prev = last.hash;
  }
}
