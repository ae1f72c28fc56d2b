import type { AuditLog } from '../../audit/audit-log.js';
import type { PluginConfig } from '../../config/plugin-config.js';
import type { Logger } from '../../log/logger.js';
import type { PluginMetrics } from '../metrics.js';
import type { KmsProvider } from '../provider.js';

/** What a provider builder may use: the whole config (status.gracePeriod etc.), the logger and the metrics. */
export interface ProviderBuildContext {
  readonly cfg: PluginConfig;
  readonly logger: Logger;
  readonly metrics: PluginMetrics;
  /** An open recovery the key server's calls are made in (offline recovery through a break-glass app). */
  readonly recoveryId?: string | undefined;
}

/** What a provider builder returns: the provider, and the audit log of an in-process key store (embedded). */
export interface BuiltProvider {
  readonly provider: KmsProvider;
  readonly audit?: AuditLog;
}
