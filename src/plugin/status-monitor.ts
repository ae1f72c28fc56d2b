import { KeyhavenError } from '../errors.js';
import type { KmsProvider } from './provider.js';
import { asKeyhavenError, isTransient } from './runtime/error-class.js';

// Which failures Status rides out for the grace period is decided in one
// place, runtime/error-class.ts; the providers' Encrypt gate uses the same.

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
      const err = asKeyhavenError(e, 'key provider did not answer');
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
