import { KeyhavenError } from '../../errors.js';
import type { VaultProviderConfig } from '../../config/providers/vault.js';
import type { KmsProvider } from '../provider.js';
import type { ProviderBuildContext } from './context.js';

export async function buildVaultProvider(_p: VaultProviderConfig, _ctx: ProviderBuildContext): Promise<KmsProvider> {
  throw new KeyhavenError('config_invalid', 'provider type vault is not available yet');
}
