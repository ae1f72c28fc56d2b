import { resolve } from 'node:path';
import { z } from 'zod';
import { checkDeadlines, checkServerList, checkTlsPair, deadlineFields, originUrl, resolveTlsPaths, tlsSchema } from './common.js';

// plugin.yaml provider `type: vault`: HashiCorp Vault or OpenBao, Transit
// secrets engine (keyhaven's own Transit API works too). Fields are parsed
// here; problems that involve several fields are checked in check(), called
// after parsing.

const vaultUrl = originUrl('the /v1/... paths are added by the plugin');

// One or more path segments (Vault mounts and namespaces may nest: "team-a/transit"); no "." or ".." segment.
const SEGMENT = '[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}';
const vaultPath = (what: string, max: number) =>
  z
    .string()
    .transform((v) => v.replace(/^\/+|\/+$/g, ''))
    .refine((v) => v.length > 0 && v.length <= max && new RegExp(`^${SEGMENT}(/${SEGMENT})*$`).test(v) && !v.split('/').some((s) => s === '.' || s === '..'), `must be a Vault ${what}: 1-${max} characters, "/"-separated segments of letters, digits, ".", "_" or "-"`);

const path = z.string().min(1).max(4096);

const approle = z.strictObject({
  // The role ID is an identifier, not the secret half: inline or from a file.
  roleId: z.string().regex(/^[\x21-\x7e]{1,256}$/, 'must be the role ID (printable characters, no spaces)').optional(),
  roleIdFile: path.optional(),
  // The secret ID is the credential: from a file only (mode 0600), never inline.
  secretIdFile: path,
  mount: vaultPath('auth mount', 128).default('approle'),
});

const kubernetes = z.strictObject({
  role: z.string().regex(/^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/, 'must be the Vault role name (letters, digits, ".", "_" or "-")'),
  // The service account token the kubelet projects into the pod.
  jwtFile: path.default('/var/run/secrets/kubernetes.io/serviceaccount/token'),
  mount: vaultPath('auth mount', 128).default('kubernetes'),
});

export const vaultProviderSchema = z.strictObject({
  type: z.literal('vault'),
  // Tried in order, healthy ones first (nodes of one cluster, or replicated clusters holding the same key).
  addresses: z.array(vaultUrl).min(1).max(8),
  mount: vaultPath('mount path', 128).default('transit'),
  key: z.string().regex(/^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/, 'must be the Transit key name: 1-128 letters, digits, ".", "_" or "-"').default('kubernetes-secrets'),
  // Vault Enterprise / OpenBao namespace, sent as X-Vault-Namespace.
  namespace: vaultPath('namespace', 256).optional(),
  auth: z.strictObject({
    // A token someone else keeps fresh (Vault Agent, an operator); mode 0600, read again when Vault refuses it.
    tokenFile: path.optional(),
    approle: approle.optional(),
    kubernetes: kubernetes.optional(),
  }),
  tls: tlsSchema(path),
  allowInsecureHttp: z.boolean().default(false),
  // Deadline of one plugin call across every address tried; one address gets at most attemptTimeout of it.
  ...deadlineFields,
});

export type VaultProviderConfig = z.output<typeof vaultProviderSchema>;

/** Cross-field checks and path resolution; returns the problems found (empty when none). */
export function checkVaultProvider(p: VaultProviderConfig): string[] {
  const problems: string[] = [];
  const methods = (['tokenFile', 'approle', 'kubernetes'] as const).filter((m) => p.auth[m] !== undefined);
  if (methods.length !== 1) {
    problems.push(`provider.auth: set exactly one of tokenFile, approle and kubernetes${methods.length ? ` (found ${methods.join(' and ')})` : ''}`);
  }
  if (p.auth.approle && (p.auth.approle.roleId === undefined) === (p.auth.approle.roleIdFile === undefined)) {
    problems.push('provider.auth.approle: set exactly one of roleId and roleIdFile');
  }
  problems.push(...checkTlsPair(p.tls), ...checkDeadlines(p), ...checkServerList('addresses', p.addresses, 'an address', p.allowInsecureHttp, 'the Vault token'));
  if (problems.length) return problems;
  // Relative paths are resolved once, against the directory the plugin started in.
  if (p.auth.tokenFile) p.auth.tokenFile = resolve(p.auth.tokenFile);
  if (p.auth.approle) {
    p.auth.approle.secretIdFile = resolve(p.auth.approle.secretIdFile);
    if (p.auth.approle.roleIdFile) p.auth.approle.roleIdFile = resolve(p.auth.approle.roleIdFile);
  }
  if (p.auth.kubernetes) p.auth.kubernetes.jwtFile = resolve(p.auth.kubernetes.jwtFile);
  resolveTlsPaths(p.tls);
  return [];
}
