import { KeyhavenError } from '../errors.js';
import type { KeyStore } from '../keys/key-store.js';
import { createEmbeddedProvider } from './embedded-provider.js';
import type { KmsProvider } from './provider.js';

/** What the plugin needs from a key server running in the same process. */
export interface InProcessServer {
  /** The unsealed server's key store and store id; throws `sealed` otherwise. */
  current(): { keys: KeyStore; storeId: string };
  /** Throws unless the plugin's app still holds encrypt and decrypt on the key. */
  authorize(): Promise<void>;
}

/**
 * The plugin wired to a key server in the same process (`keyhaven dev`): the
 * server's keys, used as the plugin's app, so its grants, the seal state and
 * key lifecycle all apply. A separate plugin reaches the server over HTTP.
 */
export function createInProcessProvider(deps: { server: InProcessServer; keyName: string; refreshIntervalMs: number }): KmsProvider {
  let inner: { keys: KeyStore; provider: KmsProvider } | undefined;
  // A seal/unseal cycle makes a new key store; follow it.
  const provider = (): KmsProvider => {
    const c = deps.server.current();
    if (!inner || inner.keys !== c.keys) {
      void inner?.provider.close();
      inner = { keys: c.keys, provider: createEmbeddedProvider({ keys: c.keys, storeId: c.storeId, keyName: deps.keyName, refreshIntervalMs: deps.refreshIntervalMs }) };
    }
    return inner.provider;
  };
  const authorize = async () => {
    try {
      await deps.server.authorize();
    } catch (e) {
      throw e instanceof KeyhavenError ? e : new KeyhavenError('unavailable', 'the key server could not check the plugin\'s grants', { cause: e });
    }
  };
  const first = provider();
  return {
    kind: 'server',
    maxPlaintextBytes: first.maxPlaintextBytes,
    async healthCheck() {
      await authorize();
      return provider().healthCheck();
    },
    async encrypt(plaintext) {
      await authorize();
      return provider().encrypt(plaintext);
    },
    async decrypt(ciphertext, keyId, annotations) {
      await authorize();
      return provider().decrypt(ciphertext, keyId, annotations);
    },
    async close() {
      await inner?.provider.close();
    },
  };
}
