import { KeyhavenError, type ErrorCode } from '../errors.js';
import type { KmsProvider } from './provider.js';

// Failures that mean "the provider cannot answer now": Status rides them out
// with the last good key_id for the grace period. Every other failure means
// "do not write with this key" and fails Status at once: a Status that returns
// a key_id keeps the apiserver writing for minutes.
const TRANSIENT: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['unavailable', 'sealed', 'audit_failed', 'internal', 'too_many_attempts']);

export function isTransient(code: ErrorCode): boolean {
  return TRANSIENT.has(code);
}

/**
 * A provider's Encrypt gate: refused until `service` has confirmed the key,
 * and once checks have been failing for longer than the grace period (the
 * same clock as Status; while checks succeed Encrypt never waits for one).
 */
export function assertConfirmed(service: string, s: { readonly lastSuccessAt: number | undefined; readonly failing: boolean; readonly now: number; readonly staleAfterMs: number }): void {
  if (s.lastSuccessAt === undefined) throw new KeyhavenError('unavailable', `${service} has not confirmed the key yet`);
  if (s.failing && s.now - s.lastSuccessAt > s.staleAfterMs) throw new KeyhavenError('unavailable', `${service} has not confirmed the key within the Status grace period`);
}

export interface StatusSnapshot {
  readonly keyId: string;
  /** True while answering from the last good result because the provider is unreachable. */
  readonly degraded: boolean;
}

export interface StatusMonitorOptions {
  readonly cacheTtlMs: number;
  readonly graceMs: number;
  readonly now?: () => number;
  readonly onChange?: (event: { keyId?: string; previousKeyId?: string; error?: KeyhavenError; degraded: boolean }) => void;
}

export interface StatusMonitor {
  /** Resolves with the key_id to report, or rejects with the error Status must return. */
  check(): Promise<StatusSnapshot>;
  lastKeyId(): string | undefined;
}

export function createStatusMonitor(provider: KmsProvider, opts: StatusMonitorOptions): StatusMonitor {
  const now = opts.now ?? Date.now;
  let lastGood: { keyId: string; at: number } | undefined;
  let cached: { at: number; result: StatusSnapshot | KeyhavenError } | undefined;
  let inflight: Promise<StatusSnapshot> | undefined;
  let lastReported: string | undefined;

  const evaluate = async (): Promise<StatusSnapshot> => {
    const t = now();
    try {
      const keyId = await provider.healthCheck();
      lastGood = { keyId, at: t };
      const snap = { keyId, degraded: false };
      if (keyId !== lastReported) opts.onChange?.({ keyId, previousKeyId: lastReported, degraded: false });
      lastReported = keyId;
      cached = { at: t, result: snap };
      return snap;
    } catch (e) {
      const err = e instanceof KeyhavenError ? e : new KeyhavenError('unavailable', 'key provider did not answer', { cause: e });
      if (!isTransient(err.code)) {
        lastGood = undefined;
      } else if (lastGood && t - lastGood.at <= opts.graceMs) {
        const snap = { keyId: lastGood.keyId, degraded: true };
        opts.onChange?.({ keyId: lastGood.keyId, error: err, degraded: true });
        cached = { at: t, result: snap };
        return snap;
      }
      opts.onChange?.({ error: err, degraded: false });
      lastReported = undefined;
      cached = { at: t, result: err };
      throw err;
    }
  };

  return {
    check() {
      if (cached && now() - cached.at < opts.cacheTtlMs) {
        return cached.result instanceof KeyhavenError ? Promise.reject(cached.result) : Promise.resolve(cached.result);
      }
      // One round trip at a time: a probe storm shares it.
      inflight ??= evaluate().finally(() => {
        inflight = undefined;
      });
      return inflight;
    },
    lastKeyId() {
      return lastGood?.keyId;
    },
  };
}
