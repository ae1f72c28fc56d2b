import type { PluginConfig } from '../../config/plugin-config.js';
import type { Logger } from '../../log/logger.js';
import type { PluginMetrics } from '../metrics.js';

/** What a provider builder may use: the whole config (status.gracePeriod etc.), the logger and the metrics. */
export interface ProviderBuildContext {
  readonly cfg: PluginConfig;
  readonly logger: Logger;
  readonly metrics: PluginMetrics;
}
