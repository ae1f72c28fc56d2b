import { z } from 'zod';

// plugin.yaml provider `type: aws-kms`. Fields are parsed here; problems that
// involve several fields are checked in check(), called after parsing.
export const awsKmsProviderSchema = z.strictObject({
  type: z.literal('aws-kms'),
});

export type AwsKmsProviderConfig = z.output<typeof awsKmsProviderSchema>;

/** Cross-field checks and path resolution; returns the problems found (empty when none). */
export function checkAwsKmsProvider(_p: AwsKmsProviderConfig): string[] {
  return [];
}
