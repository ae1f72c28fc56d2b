import { KeyhavenError } from '../../../errors.js';
import { CIPHERTEXT_OVERHEAD, type KeyStore } from '../../../keys/key-store.js';
import { MAX_CIPHERTEXT_BYTES } from '../../limits.js';
import { formatKeyId, parseKeyId } from '../../../keys/key-id.js';
import type { KmsProvider } from '../../provider.js';
import type { Clock } from '../../runtime/deadline.js';
import { createProviderRuntime, type KeyBackend } from '../../runtime/key-backend.js';

export interface EmbeddedProviderOptions {
  readonly keys: KeyStore;
  readonly storeId: string;
  readonly keyName: string;
  /** How often to re-read key state written by other processes (the CLI). */
  readonly refreshIntervalMs: number;
  /** Keys Decrypt may also use (a cluster moved from one key to another); the configured key always. */
  readonly previousKeys?: readonly string[];
  /** Encrypt is refused when probes have failed for this long (the Status grace period). */
  readonly graceMs: number;
  /** The clock of the grace period and of deadlines. */
  readonly now?: Clock;
  readonly close?: () => Promise<void>;
}

// The key store is in this process and answers from memory or its SQLite
// file (synchronous): no call waits on a network, so the deadline bounds
// nothing here. Within the apiserver's 3 s, as the other providers' `timeout`.
const TIMEOUT_MS = 2000;

/** The provider backed by the embedded key store (SQLite + root key file). */
export function createEmbeddedProvider(opts: EmbeddedProviderOptions): KmsProvider {
  return createProviderRuntime(createEmbeddedBackend(opts), { graceMs: opts.graceMs, timeoutMs: TIMEOUT_MS, ...(opts.now ? { clock: opts.now } : {}) });
}

/** The key store as a KeyBackend; its state is the key version behind the key_id a probe confirmed. */
function createEmbeddedBackend(opts: EmbeddedProviderOptions): KeyBackend<number> {
  const { keys, storeId, keyName } = opts;
  // Least privilege: a store may hold keys of several clusters; this plugin uses its own.
  const allowedKeys: ReadonlySet<string> = new Set([keyName, ...(opts.previousKeys ?? [])]);
  // Without this, a disable or a destroyed version would only take effect on
  // the next Status poll, which the apiserver sends once a minute.
  const timer = setInterval(() => {
    keys.refreshCached().catch(() => {
      // Reported by the next health check, which reads the same rows.
    });
  }, opts.refreshIntervalMs);
  timer.unref();
  return {
    kind: 'embedded',
    service: 'the key store',
    maxPlaintextBytes: MAX_CIPHERTEXT_BYTES - CIPHERTEXT_OVERHEAD,
    async probe() {
      // Re-reading metadata picks up a rotation or a disable made by another
      // process (the CLI), and proves storage answers.
      try {
        await keys.refresh(keyName);
      } catch (e) {
        if (e instanceof KeyhavenError) throw e;
        throw new KeyhavenError('unavailable', 'key store is not reachable', { cause: e });
      }
      const enc = await keys.roundTrip(keyName, allowedKeys);
      return { keyId: formatKeyId(storeId, enc.keyId, enc.version, enc.versionTag), state: enc.version };
    },
    // The version Status reported, not whatever the background refresh loaded
    // since: the apiserver discards an Encrypt reply whose key_id differs from Status's.
    async wrap(plaintext, version) {
      const r = keys.encrypt(keyName, plaintext, version);
      return { ciphertext: r.ciphertext, keyId: formatKeyId(storeId, r.keyId, r.version, r.versionTag), keyName: r.keyName, keyVersion: r.version };
    },
    async unwrap(ciphertext, keyId) {
      if (keyId !== undefined) {
        const parsed = parseKeyId(keyId);
        if (parsed.storeId !== storeId) throw new KeyhavenError('unknown_key_id', `key_id ${keyId} was issued by another key store`);
        // The header is authenticated by decrypt below; checking it first
        // refuses a ciphertext paired with the wrong key_id without any crypto.
        const named = keys.describe(ciphertext);
        if (named.keyId !== parsed.keyRef || named.version !== parsed.version) {
          throw new KeyhavenError('invalid_argument', `ciphertext does not belong to key_id ${keyId}`);
        }
        const r = await keys.decrypt(ciphertext, { expectTag: parsed.tag, allowedKeys });
        return { plaintext: r.plaintext, keyId, keyName: r.keyName, keyVersion: r.version };
      }
      const r = await keys.decrypt(ciphertext, { allowedKeys });
      return { plaintext: r.plaintext, keyId: formatKeyId(storeId, r.keyId, r.version, r.versionTag), keyName: r.keyName, keyVersion: r.version };
    },
    async close() {
      clearInterval(timer);
      await opts.close?.();
    },
  };
}
