import { scryptSync } from 'node:crypto';
import { readlinkSync } from 'node:fs';
import { setPriority } from 'node:os';
import { parentPort } from 'node:worker_threads';

// Runs scrypt for the password-hashing pool (password-pool.ts) on its own
// thread, so the hash neither blocks the event loop nor takes one of libuv's
// four threads that file-system work (the audit fsync) needs.

export interface HashJob {
  readonly id: number;
  readonly password: string;
  readonly salt: Uint8Array;
  readonly N: number;
  readonly r: number;
  readonly p: number;
  readonly len: number;
}

export type HashAnswer = { readonly id: number; readonly key: Uint8Array } | { readonly id: number; readonly error: string };

// On Linux the nice value is per thread: this one runs at the lowest
// priority, so when the CPU is short the event loop (crypto, health) is served
// first and sign-ins wait (or are refused as busy). Elsewhere the thread keeps
// the process's priority.
try {
  const tid = /\/task\/(\d+)$/.exec(readlinkSync('/proc/thread-self'))?.[1];
  if (tid !== undefined) setPriority(Number(tid), 19);
} catch {
  // no /proc/thread-self, or not allowed: not needed for correctness
}

parentPort?.on('message', (job: HashJob) => {
  try {
    const key = scryptSync(job.password, job.salt, job.len, { N: job.N, r: job.r, p: job.p, maxmem: 128 * job.N * job.r * 2 });
    parentPort!.postMessage({ id: job.id, key } satisfies HashAnswer);
  } catch (e) {
    // Only the reason's class, never the input.
    parentPort!.postMessage({ id: job.id, error: (e as NodeJS.ErrnoException).code ?? 'scrypt failed' } satisfies HashAnswer);
  }
});
