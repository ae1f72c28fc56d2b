import type { EmbeddedProviderConfig } from '../../../config/plugin-config.js';
import { KeyhavenError } from '../../../errors.js';
import { openEmbeddedStore } from '../../../keys/embedded-store.js';
import type { BuiltProvider, ProviderBuildContext } from '../context.js';
import { createEmbeddedProvider } from './embedded-provider.js';

/** The provider over a key store in this process (SQLite and a root key file). */
export async function buildEmbeddedProvider(p: EmbeddedProviderConfig, ctx: ProviderBuildContext): Promise<BuiltProvider> {
  const { cfg } = ctx;
  const embedded = await openEmbeddedStore({ dataDir: p.dataDir, rootKeyFile: p.rootKeyFile, create: false, auditFsync: cfg.audit.fsync });
  try {
    await embedded.keys.refresh(p.key);
  } catch (e) {
    await embedded.close();
    if (e instanceof KeyhavenError && e.code === 'not_found') {
      throw new KeyhavenError('config_invalid', `key "${p.key}" does not exist in ${p.dataDir} (create it with "keyhaven key create ${p.key}")`);
    }
    throw e;
  }
  const provider = createEmbeddedProvider({
    keys: embedded.keys,
    storeId: embedded.storeId,
    keyName: p.key,
    previousKeys: p.previousKeys,
    refreshIntervalMs: Math.max(cfg.status.cacheTTL, 100),
    graceMs: cfg.status.gracePeriod,
    close: () => embedded.close(),
  });
  return { provider, audit: embedded.audit };
}
