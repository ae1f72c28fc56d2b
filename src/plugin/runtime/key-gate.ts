import { KeyhavenError } from '../../errors.js';
import { deadlineAfter, systemClock, type Clock } from './deadline.js';
import { asKeyhavenError, isTransient } from './error-class.js';

export interface KeyGateOptions {
  /** Who confirms the key, for messages: "the key server", "AWS KMS", "DSM", "Vault". */
  readonly service: string;
  /** Encrypt is refused once checks have been failing for longer than this (the Status grace period). */
  readonly graceMs: number;
  /** The deadline of one health check, and of each Encrypt or Decrypt. */
  readonly timeoutMs: number;
  readonly clock?: Clock;
  /** Called with a non-transient failure (a refusal), after Encrypt has been blocked by it. */
  readonly onRefused?: (err: KeyhavenError) => void;
}

/**
 * The health gate every remote-KMS provider puts in front of Encrypt: closed
 * until a health check confirmed the key; closed at once by a refusal (key
 * disabled, access revoked), which the next good check lifts; and closed once
 * transient failures have lasted longer than the grace period — the same
 * clock and stamp (a check's start) as the Status monitor, so both agree on
 * when the grace period ends. While checks succeed Encrypt never waits for one.
 */
export class KeyGate {
  private blocked: KeyhavenError | undefined;
  private failing = false;
  private lastSuccess: number | undefined;
  readonly clock: Clock;

  constructor(private readonly opts: KeyGateOptions) {
    this.clock = opts.clock ?? systemClock;
  }

  /** When the last good check started, if any. */
  get lastSuccessAt(): number | undefined {
    return this.lastSuccess;
  }

  /** The deadline of an operation starting now. */
  deadline(): number {
    return deadlineAfter(this.clock, this.opts.timeoutMs);
  }

  /**
   * Runs one health check under one deadline; a failure is classified (a
   * foreign error becomes `unavailable`) and thrown as a KeyhavenError.
   */
  async check<T>(fn: (deadlineAt: number) => Promise<T>): Promise<T> {
    const started = this.clock();
    let out: T;
    try {
      out = await fn(deadlineAfter(this.clock, this.opts.timeoutMs));
    } catch (e) {
      throw this.failed(e);
    }
    this.blocked = undefined;
    this.failing = false;
    this.lastSuccess = started;
    return out;
  }

  /** Records a failed check; returns the error to throw. */
  failed(e: unknown): KeyhavenError {
    const err = asKeyhavenError(e, `${this.opts.service} health check failed`);
    if (isTransient(err.code)) {
      this.failing = true;
    } else {
      this.blocked = err;
      this.opts.onRefused?.(err);
    }
    return err;
  }

  /** Encrypt's gate: throws the refusal, or `unavailable` when the key is not (or no longer) confirmed. */
  assertOpen(): void {
    if (this.blocked) throw this.blocked;
    const service = this.opts.service;
    if (this.lastSuccess === undefined) throw new KeyhavenError('unavailable', `${service} has not confirmed the key yet`);
    if (this.failing && this.clock() - this.lastSuccess > this.opts.graceMs) throw new KeyhavenError('unavailable', `${service} has not confirmed the key within the Status grace period`);
  }
}
