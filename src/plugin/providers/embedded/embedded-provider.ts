import { KeyhavenError } from '../../../errors.js';
import { CIPHERTEXT_OVERHEAD, type KeyStore } from '../../../keys/key-store.js';
import { MAX_CIPHERTEXT_BYTES } from '../../limits.js';
import { formatKeyId, parseKeyId } from '../../../keys/key-id.js';
import type { KmsProvider } from '../../provider.js';

/** The provider backed by the embedded key store (SQLite + root key file). */
export function createEmbeddedProvider(deps: {
  keys: KeyStore;
  storeId: string;
  keyName: string;
  /** How often to re-read key state written by other processes (the CLI). */
  refreshIntervalMs: number;
  /** Keys Decrypt may also use (a cluster moved from one key to another); the configured key always. */
  previousKeys?: readonly string[];
  close?: () => Promise<void>;
}): KmsProvider {
  const { keys, storeId, keyName } = deps;
  // Least privilege: a store may hold keys of several clusters; this plugin uses its own.
  const allowedKeys: ReadonlySet<string> = new Set([keyName, ...(deps.previousKeys ?? [])]);
  // Without this, a disable or a destroyed version would only take effect on
  // the next Status poll, which the apiserver sends once a minute.
  const timer = setInterval(() => {
    keys.refreshCached().catch(() => {
      // Reported by the next health check, which reads the same rows.
    });
  }, deps.refreshIntervalMs);
  timer.unref();
  // The version behind the key_id Status last reported. Encrypt uses it, not
  // whatever the background refresh loaded since: the apiserver discards an
  // Encrypt reply whose key_id differs from Status's.
  let statusVersion: number | undefined;
  return {
    kind: 'embedded',
    maxPlaintextBytes: MAX_CIPHERTEXT_BYTES - CIPHERTEXT_OVERHEAD,
    async healthCheck() {
      // Re-reading metadata picks up a rotation or a disable made by another
      // process (the CLI), and proves storage answers.
      try {
        await keys.refresh(keyName);
      } catch (e) {
        if (e instanceof KeyhavenError) throw e;
        throw new KeyhavenError('unavailable', 'key store is not reachable', { cause: e });
      }
      const enc = await keys.roundTrip(keyName, allowedKeys);
      statusVersion = enc.version;
      return formatKeyId(storeId, enc.keyId, enc.version, enc.versionTag);
    },
    async encrypt(plaintext) {
      const r = keys.encrypt(keyName, plaintext, statusVersion);
      return { ciphertext: r.ciphertext, keyId: formatKeyId(storeId, r.keyId, r.version, r.versionTag), keyName: r.keyName, keyVersion: r.version };
    },
    async decrypt(ciphertext, keyId) {
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
      await deps.close?.();
    },
  };
}
