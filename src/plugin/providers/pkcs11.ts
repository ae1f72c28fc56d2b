import { KeyhavenError } from '../../errors.js';
import type { Pkcs11ProviderConfig } from '../../config/providers/pkcs11.js';
import type { KmsProvider } from '../provider.js';
import type { ProviderBuildContext } from './context.js';

export async function buildPkcs11Provider(_p: Pkcs11ProviderConfig, _ctx: ProviderBuildContext): Promise<KmsProvider> {
  throw new KeyhavenError('config_invalid', 'provider type pkcs11 is not available yet');
}
