import { Worker } from 'node:worker_threads';
import { KeyhavenError } from '../errors.js';
import type { HashAnswer, HashJob } from './hash-worker.js';

// A small, bounded pool of worker threads for password hashing.
//
// Why: scrypt on node's own thread pool shares libuv's four threads with
// file-system work (the audit log's fsync), so a flood of sign-ins stalled
// every audited request, crypto included. Here scrypt runs on a fixed number
// of worker threads, and at most `workers + queue` hashes are admitted at a
// time: a caller that finds the pool full is refused at once instead of
// queueing without bound.

export interface PasswordPoolOptions {
  /** Worker threads hashing at once. */
  readonly workers: number;
  /** Hashes admitted to wait for a worker. */
  readonly queue: number;
}

export const DEFAULT_PASSWORD_POOL: PasswordPoolOptions = Object.freeze({ workers: 1, queue: 16 });

/** One admitted hash: use it once (or not at all) and release it. */
export interface HashSlot {
  scrypt(password: string, salt: Buffer, params: { N: number; r: number; p: number; len: number }): Promise<Buffer>;
  release(): void;
}

interface Pending {
  readonly job: HashJob;
  readonly resolve: (key: Buffer) => void;
  readonly reject: (e: unknown) => void;
}

interface Slot {
  readonly worker: Worker;
  current: Pending | undefined;
}

const WORKER_URL = new URL('./hash-worker.js', import.meta.url);

export class PasswordPool {
  private held = 0;
  private nextId = 1;
  private readonly waiting: Pending[] = [];
  private readonly threads: Slot[] = [];

  constructor(readonly options: PasswordPoolOptions = DEFAULT_PASSWORD_POOL) {
    if (!Number.isInteger(options.workers) || options.workers < 1) throw new KeyhavenError('config_invalid', 'password hashing needs at least one worker');
    if (!Number.isInteger(options.queue) || options.queue < 0) throw new KeyhavenError('config_invalid', 'the password hashing queue cannot be negative');
  }

  /** Hashes admitted and not yet released (running or waiting). */
  get inUse(): number {
    return this.held;
  }

  /** Admits one hash, or undefined when the pool is full (the caller answers "busy"). */
  tryAcquire(): HashSlot | undefined {
    if (this.held >= this.options.workers + this.options.queue) return undefined;
    this.held += 1;
    let released = false;
    let used = false;
    return {
      scrypt: (password, salt, params) => {
        if (released || used) return Promise.reject(new KeyhavenError('internal', 'a password hashing slot was used twice'));
        used = true;
        return this.submit({ id: this.nextId++, password, salt, N: params.N, r: params.r, p: params.p, len: params.len });
      },
      release: () => {
        if (released) return;
        released = true;
        this.held -= 1;
      },
    };
  }

  /** Stops the workers; waiting hashes fail. A later hash starts workers again. */
  async close(): Promise<void> {
    for (const w of this.waiting.splice(0)) w.reject(new KeyhavenError('unavailable', 'the server is shutting down'));
    const threads = this.threads.splice(0);
    for (const t of threads) t.current?.reject(new KeyhavenError('unavailable', 'the server is shutting down'));
    await Promise.all(threads.map((t) => t.worker.terminate().catch(() => 0)));
  }

  private submit(job: HashJob): Promise<Buffer> {
    return new Promise<Buffer>((resolve, reject) => {
      const pending: Pending = { job, resolve, reject };
      const idle = this.threads.find((t) => t.current === undefined) ?? (this.threads.length < this.options.workers ? this.spawn() : undefined);
      if (idle) this.start(idle, pending);
      else this.waiting.push(pending);
    });
  }

  private start(t: Slot, pending: Pending): void {
    t.current = pending;
    // Only a thread with work keeps the process alive: an idle pool never holds up exit.
    t.worker.ref();
    t.worker.postMessage(pending.job);
  }

  private finish(t: Slot): void {
    t.current = undefined;
    const next = this.waiting.shift();
    if (next) this.start(t, next);
    else t.worker.unref();
  }

  private spawn(): Slot {
    // No inherited node flags: the worker needs none, and some (--input-type) stop it from starting.
    const worker = new Worker(WORKER_URL, { execArgv: [] });
    const t: Slot = { worker, current: undefined };
    worker.unref();
    worker.on('message', (a: HashAnswer) => {
      const cur = t.current;
      if (!cur || cur.job.id !== a.id) return;
      if ('key' in a) cur.resolve(Buffer.from(a.key.buffer, a.key.byteOffset, a.key.byteLength));
      else cur.reject(new KeyhavenError('internal', `password hashing failed (${a.error})`));
      this.finish(t);
    });
    const gone = (why: string) => {
      const i = this.threads.indexOf(t);
      if (i < 0) return;
      this.threads.splice(i, 1);
      t.current?.reject(new KeyhavenError('internal', `password hashing worker ${why}`));
      t.current = undefined;
      // Whatever waits gets a fresh worker.
      const next = this.waiting.shift();
      if (next) this.start(this.spawn(), next);
    };
    worker.on('error', () => gone('failed'));
    worker.on('exit', () => gone('exited'));
    this.threads.push(t);
    return t;
  }
}
