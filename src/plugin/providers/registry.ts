import type { PluginConfig } from '../../config/plugin-config.js';
import { buildAwsKmsProvider } from './aws-kms/aws-kms.js';
import type { BuiltProvider, ProviderBuildContext } from './context.js';
import { buildEmbeddedProvider } from './embedded/build.js';
import { buildFortanixDsmProvider } from './fortanix-dsm/fortanix-dsm.js';
import { buildKeyhavenProvider } from './keyhaven/build.js';
import { buildPkcs11Provider } from './pkcs11/pkcs11.js';
import { buildVaultProvider } from './vault/vault.js';

type ProviderType = PluginConfig['provider']['type'];
type ProviderConfigOf<T extends ProviderType> = Extract<PluginConfig['provider'], { type: T }>;
type Builder<T extends ProviderType> = (p: ProviderConfigOf<T>, ctx: ProviderBuildContext) => Promise<BuiltProvider>;

/**
 * Every provider type the config accepts, and what builds it. A new KMS adds
 * its schema to config/providers/ and one line here; the mapped type makes a
 * type without a builder a compile error.
 */
const PROVIDER_BUILDERS: { readonly [T in ProviderType]: Builder<T> } = {
  keyhaven: buildKeyhavenProvider,
  embedded: buildEmbeddedProvider,
  vault: async (p, ctx) => ({ provider: await buildVaultProvider(p, ctx) }),
  'fortanix-dsm': async (p, ctx) => ({ provider: await buildFortanixDsmProvider(p, ctx) }),
  'aws-kms': async (p, ctx) => ({ provider: await buildAwsKmsProvider(p, ctx) }),
  pkcs11: async (p, ctx) => ({ provider: await buildPkcs11Provider(p, ctx) }),
};

/** Builds the provider the config names. */
export function buildProvider(ctx: ProviderBuildContext): Promise<BuiltProvider> {
  const p = ctx.cfg.provider;
  // TypeScript cannot tie p.type to p across the union; the map's type does that.
  return (PROVIDER_BUILDERS[p.type] as Builder<typeof p.type>)(p as never, ctx);
}
