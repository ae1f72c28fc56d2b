import { Worker } from 'node:worker_threads';
import type { AuditDraft, AuditRow } from '../storage/store.js';
import type { WriteAnswer, WriteJob } from './sqlite-writer-worker.js';

const WORKER_URL = new URL('./sqlite-writer-worker.js', import.meta.url);
// An idle thread closes its connection and ends; the next batch starts another.
const IDLE_MS = 10_000;

/**
 * Request records for a SQLite store, written on a thread of its own
 * (sqlite-writer-worker.ts), so the event loop serves requests while a batch
 * is inserted, committed and fsynced. One batch at a time.
 */
export interface SqliteWriter {
  /** Appends the batch as one transaction; resolves with its last row once committed (and fsynced with `fsync`). */
  append(drafts: readonly AuditDraft[], headKey: Buffer | undefined, fsync: boolean): Promise<AuditRow>;
  /**
   * Closes the thread's connection and waits for the thread to end (after
   * any batch it holds). The store's last connection to close then merges the
   * write-ahead log into the database file, as a clean stop always did.
   */
  close(): Promise<void>;
}

export function createSqliteWriter(file: string): SqliteWriter {
  let worker: Worker | undefined;
  let nextId = 0;
  const pending = new Map<number, { resolve: (last: AuditRow) => void; reject: (e: unknown) => void }>();
  let idle: NodeJS.Timeout | undefined;
  // Threads told to close: their exit is no failure.
  const closing = new WeakSet<Worker>();

  const start = (): Worker => {
    // No inherited node flags: the thread needs none (a profiling flag would write a profile of its own).
    const w = new Worker(WORKER_URL, { workerData: { file }, execArgv: [] });
    w.on('message', (a: WriteAnswer) => {
      const p = pending.get(a.id);
      if (!p) return;
      pending.delete(a.id);
      if (pending.size === 0) {
        // Only a thread with work keeps the process alive (a CLI command ends when its work does).
        w.unref();
        idle = setTimeout(() => {
          if (worker !== w || pending.size > 0) return;
          worker = undefined;
          closing.add(w);
          w.postMessage('close');
        }, IDLE_MS).unref();
      }
      if ('error' in a) p.reject(Object.assign(new Error(a.error), { code: a.code }));
      else p.resolve(a.last);
    });
    const gone = (e: unknown) => {
      if (closing.has(w)) return;
      if (worker === w) worker = undefined;
      for (const p of pending.values()) p.reject(e);
      pending.clear();
    };
    w.on('error', gone);
    w.on('exit', () => gone(new Error('the audit writer thread stopped')));
    return w;
  };

  return {
    async close() {
      clearTimeout(idle);
      const w = worker;
      worker = undefined;
      if (!w) return;
      closing.add(w);
      const ended = new Promise<void>((r) => w.once('exit', () => r()));
      // An idle thread is unreferenced: referenced again, the wait for its end keeps the process up.
      w.ref();
      w.postMessage('close');
      await ended;
      // Close comes after flush: nothing should be pending, but nothing may hang either.
      for (const p of pending.values()) p.reject(new Error('the audit writer thread was closed'));
      pending.clear();
    },
    append(drafts, headKey, fsync) {
      return new Promise((resolve, reject) => {
        clearTimeout(idle);
        worker ??= start();
        const id = ++nextId;
        pending.set(id, { resolve, reject });
        worker.ref();
        // A copy of the key travels (zeroed on both sides after use).
        const key = headKey ? new Uint8Array(headKey) : null;
        const job: WriteJob = { id, drafts, headKey: key, fsync };
        worker.postMessage(job);
        key?.fill(0);
      });
    },
  };
}
