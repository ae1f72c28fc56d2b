import { resolve } from 'node:path';
import { z } from 'zod';

// plugin.yaml provider `type: pkcs11`: an AES-256 key on an HSM token, used
// in place (CKM_AES_GCM in the token). Fields are parsed here; problems that
// involve several fields are checked in check(), called after parsing.

// Key labels are shown in logs and errors: printable, no control characters.
const keyLabel = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[\x20-\x7e]+$/, 'must be printable ASCII')
  .refine((v) => v.trim() === v, 'must not start or end with a blank');

export const pkcs11ProviderSchema = z.strictObject({
  type: z.literal('pkcs11'),
  // Path of the PKCS#11 library (for SoftHSM2: /usr/lib/softhsm/libsofthsm2.so).
  module: z.string().min(1),
  // The token, by label (PKCS#11 labels are at most 32 bytes) or by slot number; both: they must agree.
  tokenLabel: z.string().min(1).max(32).optional(),
  slot: z.number().int().nonnegative().optional(),
  // The user PIN, from a file (mode 0600) or an environment variable, never from the config itself.
  pinFile: z.string().min(1).optional(),
  pinEnv: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,127}$/, 'must be an environment variable name').optional(),
  // The AES-256 key that wraps new seeds. It must exist; the plugin never creates or exports keys.
  keyLabel,
  // Keys Decrypt still accepts after keyLabel moved to a new key (rotation); Encrypt never uses them.
  previousKeyLabels: z.array(keyLabel).max(16).default([]),
});

export type Pkcs11ProviderConfig = z.output<typeof pkcs11ProviderSchema>;

/** Cross-field checks and path resolution; returns the problems found (empty when none). */
export function checkPkcs11Provider(p: Pkcs11ProviderConfig): string[] {
  const problems: string[] = [];
  if ((p.pinFile === undefined) === (p.pinEnv === undefined)) problems.push('provider: set exactly one of pinFile and pinEnv (the token\'s user PIN)');
  if (p.tokenLabel === undefined && p.slot === undefined) problems.push('provider: name the token by tokenLabel (or slot)');
  if (p.previousKeyLabels.includes(p.keyLabel)) problems.push(`provider.previousKeyLabels: lists keyLabel "${p.keyLabel}" itself`);
  if (new Set(p.previousKeyLabels).size !== p.previousKeyLabels.length) problems.push('provider.previousKeyLabels: lists a label twice');
  if (problems.length) return problems;
  p.module = resolve(p.module);
  if (p.pinFile) p.pinFile = resolve(p.pinFile);
  return [];
}
