import { z } from 'zod';

// plugin.yaml provider `type: vault`. Fields are parsed here; problems that
// involve several fields are checked in check(), called after parsing.
export const vaultProviderSchema = z.strictObject({
  type: z.literal('vault'),
});

export type VaultProviderConfig = z.output<typeof vaultProviderSchema>;

/** Cross-field checks and path resolution; returns the problems found (empty when none). */
export function checkVaultProvider(_p: VaultProviderConfig): string[] {
  return [];
}
