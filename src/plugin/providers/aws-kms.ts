import { KeyhavenError } from '../../errors.js';
import type { AwsKmsProviderConfig } from '../../config/providers/aws-kms.js';
import type { KmsProvider } from '../provider.js';
import type { ProviderBuildContext } from './context.js';

export async function buildAwsKmsProvider(_p: AwsKmsProviderConfig, _ctx: ProviderBuildContext): Promise<KmsProvider> {
  throw new KeyhavenError('config_invalid', 'provider type aws-kms is not available yet');
}
