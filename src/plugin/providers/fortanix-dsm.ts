import { KeyhavenError } from '../../errors.js';
import type { FortanixDsmProviderConfig } from '../../config/providers/fortanix-dsm.js';
import type { KmsProvider } from '../provider.js';
import type { ProviderBuildContext } from './context.js';

export async function buildFortanixDsmProvider(_p: FortanixDsmProviderConfig, _ctx: ProviderBuildContext): Promise<KmsProvider> {
  throw new KeyhavenError('config_invalid', 'provider type fortanix-dsm is not available yet');
}
