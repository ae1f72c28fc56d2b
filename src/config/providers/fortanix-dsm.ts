import { resolve } from 'node:path';
import { z } from 'zod';
import { checkApiKeySource, checkDeadlines, checkServerList, checkTlsPair, clusterName, deadlineFields, envVarName, originUrl, resolveTlsPaths, tlsSchema } from './common.js';

// plugin.yaml provider `type: fortanix-dsm`: Fortanix DSM (formerly SDKMS,
// Equinix SmartKey) or keyhaven's own DSM-compatible API. Fields are parsed
// here; problems that involve several fields are checked in check(), called
// after parsing.

const endpointUrl = originUrl('for example https://eu.smartkey.io');

export const DSM_UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export const fortanixDsmProviderSchema = z.strictObject({
  type: z.literal('fortanix-dsm'),
  // This cluster's name, bound into every ciphertext (GCM additional data): etcd data copied from
  // another cluster does not decrypt here even when both DSM apps can use the same object.
  cluster: clusterName,
  // Nodes or sites of one DSM cluster (a session opened on one is valid on all), tried in order, healthy ones first.
  endpoints: z.array(endpointUrl).min(1).max(8),
  // The app's API key as DSM shows it (base64 of "app-id:secret"): from a file (mode 0600) or an environment variable, never a flag.
  apiKeyFile: z.string().min(1).optional(),
  apiKeyEnv: envVarName.optional(),
  // The AES-256 security object: by name (follows rekeys) or by kid (pinned to one object).
  keyName: z.string().min(1).max(256).regex(/^[^\x00-\x1f\x7f]+$/, 'must not hold control characters').optional(),
  kid: z
    .string()
    .transform((v) => v.toLowerCase())
    .refine((v) => DSM_UUID.test(v), 'must be a security object UUID such as 4b3d13a8-2c3a-47dc-8779-311dad6843a2')
    .optional(),
  // Objects this cluster used before that DSM does not link to the current one (links.replaced):
  // another object moved to by hand. Decrypt still accepts them; Encrypt never uses them.
  previousKids: z
    .array(
      z
        .string()
        .transform((v) => v.toLowerCase())
        .refine((v) => DSM_UUID.test(v), 'must be security object UUIDs such as 4b3d13a8-2c3a-47dc-8779-311dad6843a2'),
    )
    .max(64)
    .default([]),
  // Only GCM: authenticated, and what DSM recommends. (CBC, which old SmartKey plugins used, is not offered for new writes.)
  mode: z.literal('GCM', { error: 'only GCM is supported (CBC has no integrity check; ciphertexts written by an old SmartKey plugin stay with that plugin during a migration: see docs/migrate-from-smartkey.md)' }).default('GCM'),
  tls: tlsSchema(),
  allowInsecureHttp: z.boolean().default(false),
  // Deadline of one plugin call across every endpoint tried (session included); one endpoint gets at most attemptTimeout of it.
  ...deadlineFields,
});

export type FortanixDsmProviderConfig = z.output<typeof fortanixDsmProviderSchema>;

/** Cross-field checks and path resolution; returns the problems found (empty when none). */
export function checkFortanixDsmProvider(p: FortanixDsmProviderConfig): string[] {
  const problems = checkApiKeySource(p, "the DSM app's API key");
  if ((p.keyName === undefined) === (p.kid === undefined)) problems.push('provider: set exactly one of keyName (follows rekeys) and kid (one fixed security object)');
  if (p.kid !== undefined && p.previousKids.includes(p.kid)) problems.push(`provider.previousKids: lists kid ${p.kid} itself`);
  if (new Set(p.previousKids).size !== p.previousKids.length) problems.push('provider.previousKids: lists a kid twice');
  problems.push(...checkTlsPair(p.tls), ...checkDeadlines(p), ...checkServerList('endpoints', p.endpoints, 'an endpoint', p.allowInsecureHttp, 'the API key and session token'));
  if (problems.length === 0) {
    if (p.apiKeyFile) p.apiKeyFile = resolve(p.apiKeyFile);
    resolveTlsPaths(p.tls);
  }
  return problems;
}
