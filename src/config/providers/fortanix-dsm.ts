import { z } from 'zod';

// plugin.yaml provider `type: fortanix-dsm`. Fields are parsed here; problems that
// involve several fields are checked in check(), called after parsing.
export const fortanixDsmProviderSchema = z.strictObject({
  type: z.literal('fortanix-dsm'),
});

export type FortanixDsmProviderConfig = z.output<typeof fortanixDsmProviderSchema>;

/** Cross-field checks and path resolution; returns the problems found (empty when none). */
export function checkFortanixDsmProvider(_p: FortanixDsmProviderConfig): string[] {
  return [];
}
