import { closeSync, fstatSync, fsyncSync, openSync, readSync, writeSync } from 'node:fs';
import { KeyhavenError } from '../errors.js';
import type { AuditRow, Store } from '../storage/store.js';
import { checkpointHash, checkpointLine, parseCheckpoint, signCheckpoint, ZERO_PREV, type Checkpoint } from './checkpoint.js';
import type { AuditSink } from './sinks.js';

// Emits signed checkpoints of the audit chain to witnesses outside the
// database: every `every` records, every `intervalMs` when new records exist,
// soon after a key or access change, on seal and on clean shutdown. Only an
// unsealed server holds the key, so only it emits.

export interface CheckpointWitness {
  write(c: Checkpoint): Promise<void>;
  close(): Promise<void>;
}

/** What the server core calls: the key arrives on unseal and leaves on seal. */
export interface CheckpointKeyHolder {
  unsealed(key: Buffer, storeId: string): void;
  /** Writes a last checkpoint with the key, then drops it. */
  sealing(): Promise<void>;
}

export interface Checkpointer extends CheckpointKeyHolder {
  /** Hook for AuditLog.onStored. */
  stored(last: AuditRow, change: boolean): void;
  /** Writes what is new now (tests, and the interval). */
  emitNow(): Promise<void>;
  /** A last checkpoint, then closes the checkpoint file. */
  stop(): Promise<void>;
}

const TAIL_BYTES = 64 * 1024;

/**
 * The checkpoint file: JSON lines, append-only, 0600, fsynced per line.
 * Returns the newest checkpoint already in it, so a restarted server
 * continues the prev chain.
 */
export function checkpointFile(path: string): { witness: CheckpointWitness; last: Checkpoint | undefined } {
  let fd: number;
  try {
    fd = openSync(path, 'a+', 0o600);
  } catch (e) {
    throw new KeyhavenError('config_invalid', `cannot open the audit checkpoint file ${path}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  const st = fstatSync(fd);
  if ((st.mode & 0o077) !== 0) {
    closeSync(fd);
    throw new KeyhavenError('config_invalid', `the audit checkpoint file ${path} is readable or writable by group or others; chmod 600 it`);
  }
  let last: Checkpoint | undefined;
  if (st.size > 0) {
    const len = Math.min(st.size, TAIL_BYTES);
    const buf = Buffer.alloc(len);
    readSync(fd, buf, 0, len, st.size - len);
    const lines = buf.toString('utf8').split('\n');
    for (let i = lines.length - 1; i >= 0 && !last; i--) {
      try {
        const c = parseCheckpoint((JSON.parse(lines[i]!) as { checkpoint?: unknown }).checkpoint);
        if (typeof c !== 'string') last = c;
      } catch {
        // a partial first line of the tail, or not a checkpoint
      }
    }
  }
  return {
    last,
    witness: {
      async write(c) {
        writeSync(fd, checkpointLine(c) + '\n');
        fsyncSync(fd);
      },
      async close() {
        closeSync(fd);
      },
    },
  };
}

/** An audit sink as a witness (the sink pump closes the sink). */
export function sinkWitness(sink: AuditSink): CheckpointWitness {
  return { write: (c) => sink.writeCheckpoint(c), close: async () => {} };
}

export interface CheckpointerOptions {
  readonly store: Store;
  readonly witnesses: readonly CheckpointWitness[];
  /** A checkpoint at least every this many records. */
  readonly every: number;
  /** And at least this often while new records exist. */
  readonly intervalMs: number;
  /** Delay after a key or access change record (lets a burst share one checkpoint). */
  readonly changeDelayMs?: number;
  /** The newest checkpoint already written (from the checkpoint file). */
  readonly last?: Checkpoint | undefined;
  readonly onError: (e: unknown) => void;
  /**
   * Told at unseal when the log no longer holds the newest checkpoint in the
   * file (rolled back or wiped while the server was down).
   */
  readonly onMismatch?: (what: string) => void;
}

export function startCheckpointer(o: CheckpointerOptions): Checkpointer {
  let key: Buffer | undefined;
  let storeId: string | undefined;
  let prev = ZERO_PREV;
  let lastSeq = 0;
  let latest = 0;
  let running: Promise<void> | undefined;
  let again = false;
  let changeTimer: NodeJS.Timeout | undefined;
  let stopped = false;

  const emit = async (): Promise<void> => {
    if (!key || !storeId) return;
    const seq = await o.store.lastAuditSeq();
    // Also when the log is now shorter than the last checkpoint (rolled back
    // under a running server): a checkpoint of what is there now makes the
    // fork visible in the witness too.
    if (seq === 0 || seq === lastSeq) return;
    const [row] = await o.store.readAudit(seq - 1, 1);
    if (!row || row.seq !== seq || !key) return;
    const c = signCheckpoint(key, { store: storeId, seq, hash: row.hash, time: new Date().toISOString(), prev });
    let failed: unknown;
    for (const w of o.witnesses) {
      try {
        await w.write(c);
      } catch (e) {
        failed ??= e;
      }
    }
    // A witness that missed it gets the next attempt (same prev, so the
    // others' copies still link); until then every tick retries.
    if (failed !== undefined) throw failed;
    prev = checkpointHash(c);
    lastSeq = seq;
  };

  // One emit at a time; a request during one runs once more after it.
  const trigger = (): Promise<void> => {
    if (running) {
      again = true;
      return running;
    }
    running = emit()
      .catch(o.onError)
      .finally(() => {
        running = undefined;
        if (again) {
          again = false;
          void trigger();
        }
      });
    return running;
  };

  const settle = async () => {
    while (running) await running;
  };

  const timer = setInterval(() => void trigger(), o.intervalMs);
  timer.unref();

  return {
    unsealed(k, id) {
      key?.fill(0);
      key = k;
      storeId = id;
      if (o.last && lastSeq === 0) {
        const last = o.last;
        prev = checkpointHash(last);
        if (last.store === id) lastSeq = last.seq;
        void (async () => {
          if (last.store !== id) return o.onMismatch?.(`the checkpoint file's newest checkpoint is for store ${last.store}, this database is store ${id}`);
          const [row] = await o.store.readAudit(last.seq - 1, 1);
          if (!row || row.seq !== last.seq) o.onMismatch?.(`the audit log no longer holds record ${last.seq}, named by the newest checkpoint in the file: it was cut or wiped`);
          else if (row.hash !== last.hash) o.onMismatch?.(`record ${last.seq} differs from the newest checkpoint in the file: the log was rolled back and rewritten`);
        })().catch(o.onError);
      }
    },
    async sealing() {
      await settle();
      await trigger();
      await settle();
      key?.fill(0);
      key = undefined;
    },
    stored(last, change) {
      if (stopped) return;
      latest = Math.max(latest, last.seq);
      if (latest - lastSeq >= o.every) void trigger();
      else if (change && !changeTimer) {
        changeTimer = setTimeout(() => {
          changeTimer = undefined;
          void trigger();
        }, o.changeDelayMs ?? 1000);
        changeTimer.unref();
      }
    },
    async emitNow() {
      await settle();
      await trigger();
      await settle();
    },
    async stop() {
      stopped = true;
      clearInterval(timer);
      if (changeTimer) clearTimeout(changeTimer);
      await settle();
      await trigger();
      await settle();
      key?.fill(0);
      key = undefined;
      for (const w of o.witnesses) await w.close().catch(o.onError);
    },
  };
}
