import { hostname } from 'node:os';
import type { KeyhavenProviderConfig } from '../../../config/plugin-config.js';
import { PACKAGE_VERSION } from '../../../paths.js';
import { apiKeySource, createKeyServerClient, KEYHAVEN_HEALTH_PROBE } from '../../key-server-client.js';
import type { BuiltProvider, ProviderBuildContext } from '../context.js';
import { deadlineOptions, observedClientOptions, readConfigFile, readTlsFiles } from '../http-client-wiring.js';
import { createRemoteProvider } from './remote-provider.js';

/** This host's name as the server accepts it (letters, digits, "." and "-"). */
function nodeName(): string {
  const n = hostname().replace(/[^A-Za-z0-9.-]/g, '-').slice(0, 253).replace(/^[^A-Za-z0-9]+|[^A-Za-z0-9]+$/g, '');
  return n || 'unknown';
}

/** The provider that talks to keyhaven key servers over HTTPS. */
export async function buildKeyhavenProvider(p: KeyhavenProviderConfig, ctx: ProviderBuildContext): Promise<BuiltProvider> {
  const { cfg, logger, metrics } = ctx;
  const apiKey = apiKeySource(p.apiKeyFile ? { file: p.apiKeyFile } : { env: p.apiKeyEnv! }, (f) => readConfigFile(f, 'API key file', true));
  apiKey(false);
  const tls = readTlsFiles(p.tls);
  const client = createKeyServerClient({
    servers: p.servers,
    tls,
    apiKey,
    cluster: p.cluster,
    healthProbe: KEYHAVEN_HEALTH_PROBE,
    ...(ctx.recoveryId !== undefined ? { recoveryId: ctx.recoveryId } : {}),
    ...deadlineOptions(p),
    ...observedClientOptions({ logger, metrics }, p.servers, { up: 'key server answers again', down: 'key server failing; trying the others first' }),
  });
  const provider = createRemoteProvider({
    client,
    keyName: p.key,
    cluster: p.cluster,
    node: nodeName(),
    pluginVersion: PACKAGE_VERSION,
    localKek: { enabled: p.localKek.enabled, maxUses: p.localKek.maxUses, maxAgeMs: p.localKek.maxAge, cacheSize: p.localKek.cacheSize },
    reportIntervalMs: p.reportInterval,
    staleAfterMs: cfg.status.gracePeriod,
    timeoutMs: p.timeout,
    onKekLookup: (result) => metrics.kekLookups.inc({ result }),
    onKekCacheSize: (n) => metrics.kekCacheEntries.set(n),
    onKekRotated: ({ keyId, reason }) => logger.info({ keyId, reason }, 'new local KEK wrapped by the key server'),
  });
  return { provider };
}
