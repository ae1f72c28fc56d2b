import { z } from 'zod';

// plugin.yaml provider `type: pkcs11`. Fields are parsed here; problems that
// involve several fields are checked in check(), called after parsing.
export const pkcs11ProviderSchema = z.strictObject({
  type: z.literal('pkcs11'),
});

export type Pkcs11ProviderConfig = z.output<typeof pkcs11ProviderSchema>;

/** Cross-field checks and path resolution; returns the problems found (empty when none). */
export function checkPkcs11Provider(_p: Pkcs11ProviderConfig): string[] {
  return [];
}
