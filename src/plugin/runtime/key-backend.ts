import type { KeyhavenError } from '../../errors.js';
import type { DecryptContext, EncryptContext, KmsProvider, ProviderDecryptResult, ProviderEncryptResult } from '../provider.js';
import type { Clock } from './deadline.js';
import { KeyGate } from './key-gate.js';

/**
 * One KMS as the provider runtime sees it: what is specific to that KMS and
 * nothing else. Every call gets its deadline from the runtime; errors are
 * KeyhavenErrors whose code says whose fault it is (runtime/error-class.ts
 * decides what that means for Status and Encrypt).
 *
 * S is what a probe learnt that Encrypt must use (the key version or object
 * Status reported: the apiserver drops an Encrypt reply whose key_id is not
 * the one Status reported).
 */
export interface KeyBackend<S> {
  /** The provider type, as in the config. */
  readonly kind: string;
  /** Who confirms the key, for messages ("DSM", "Vault"). */
  readonly service: string;
  /** The largest plaintext whose ciphertext stays within the 1024 bytes the apiserver accepts. */
  readonly maxPlaintextBytes: number;
  /** A real round trip with the current key; resolves with the key_id Status reports, and what Encrypt then uses. */
  probe(deadlineAt: number): Promise<{ readonly keyId: string; readonly state: S }>;
  /** Wraps one seed with the key a probe confirmed. */
  wrap(plaintext: Buffer, state: S, ctx: EncryptContext & { readonly deadlineAt: number }): Promise<ProviderEncryptResult>;
  /** Unwraps one seed; keyId is the apiserver's (v2) or undefined (v1beta1). */
  unwrap(ciphertext: Buffer, keyId: string | undefined, annotations: Readonly<Record<string, Buffer>>, ctx: DecryptContext & { readonly deadlineAt: number }): Promise<ProviderDecryptResult>;
  close(): Promise<void>;
}

export interface ProviderRuntimeOptions {
  /** Encrypt is refused once checks have been failing for longer than this (the Status grace period). */
  readonly graceMs: number;
  /** The deadline of one health check, and of each Encrypt and Decrypt. */
  readonly timeoutMs: number;
  /** The clock of the grace period and of deadlines; the backend's transport must use the same. */
  readonly clock?: Clock;
  /** Called with a refusal (non-transient failure) of a health check. */
  readonly onRefused?: (err: KeyhavenError) => void;
}

/**
 * A KmsProvider over a KeyBackend: the runtime owns the Encrypt gate and its
 * grace period, the one deadline rule, and the classification of failures;
 * the backend only speaks to its KMS.
 */
export function createProviderRuntime<S>(backend: KeyBackend<S>, opts: ProviderRuntimeOptions): KmsProvider {
  const gate = new KeyGate({ service: backend.service, graceMs: opts.graceMs, timeoutMs: opts.timeoutMs, ...(opts.clock ? { clock: opts.clock } : {}), ...(opts.onRefused ? { onRefused: opts.onRefused } : {}) });
  // What the last good probe confirmed: Encrypt uses it until the next one.
  let confirmed: S | undefined;
  return {
    kind: backend.kind,
    maxPlaintextBytes: backend.maxPlaintextBytes,
    async healthCheck() {
      return gate.check(async (deadlineAt) => {
        const { keyId, state } = await backend.probe(deadlineAt);
        // Before the gate opens, so that no Encrypt passes it without the state.
        confirmed = state;
        return keyId;
      });
    },
    async encrypt(plaintext, ctx) {
      gate.assertOpen();
      return backend.wrap(plaintext, confirmed as S, { ...ctx, deadlineAt: gate.deadline() });
    },
    async decrypt(ciphertext, keyId, annotations, ctx) {
      return backend.unwrap(ciphertext, keyId, annotations, { ...ctx, deadlineAt: gate.deadline() });
    },
    close: () => backend.close(),
  };
}
