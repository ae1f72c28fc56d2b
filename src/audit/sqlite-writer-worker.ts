import { parentPort, workerData } from 'node:worker_threads';
import { openSqliteAuditConnection } from '../storage/sqlite-audit.js';
import type { AuditDraft, AuditRow } from '../storage/store.js';
import { headValue, linkRecord } from './chain.js';

// The SQLite audit writer's thread (sqlite-writer.ts): batches of request
// records are linked and committed here, on a connection of its own, so the
// inserts, the commit and its fsync never block the event loop. The chain
// tail is read under the write lock, as on the main connection.

export interface WriteJob {
  readonly id: number;
  readonly drafts: readonly AuditDraft[];
  /** The key that signs the chain head, or null to leave the head as it is. */
  readonly headKey: Uint8Array | null;
  readonly fsync: boolean;
}

export type WriteAnswer =
  | { readonly id: number; readonly last: AuditRow }
  | { readonly id: number; readonly error: string; readonly code?: string | undefined };

const port = parentPort!;
const conn = openSqliteAuditConnection((workerData as { file: string }).file);

port.on('message', (job: WriteJob | 'close') => {
  if (job === 'close') {
    conn.close();
    port.close();
    return;
  }
  let answer: WriteAnswer;
  try {
    const head = job.headKey ? headValue(Buffer.from(job.headKey.buffer, job.headKey.byteOffset, job.headKey.byteLength)) : undefined;
    const rows = conn.append(job.drafts, linkRecord, { head, fsync: job.fsync });
    answer = { id: job.id, last: rows[rows.length - 1]! };
  } catch (e) {
    const err = e as { message?: unknown; code?: unknown };
    answer = { id: job.id, error: String(err?.message ?? e), code: typeof err?.code === 'string' ? err.code : undefined };
  } finally {
    job.headKey?.fill(0);
  }
  port.postMessage(answer);
});
