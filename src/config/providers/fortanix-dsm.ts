import { resolve } from 'node:path';
import { z } from 'zod';
import { durationMs } from '../duration.js';

// plugin.yaml provider `type: fortanix-dsm`: Fortanix DSM (formerly SDKMS,
// Equinix SmartKey) or keyhaven's own DSM-compatible API. Fields are parsed
// here; problems that involve several fields are checked in check(), called
// after parsing. (The URL and fingerprint rules repeat plugin-config.ts's:
// importing them from there would be a circular import.)

const endpointUrl = z
  .string()
  .max(2048)
  .refine((v) => {
    try {
      const u = new URL(v);
      return (u.protocol === 'https:' || u.protocol === 'http:') && !u.username && !u.password && (u.pathname === '/' || u.pathname === '') && !u.search && !u.hash;
    } catch {
      return false;
    }
  }, 'must be an http(s)://host[:port] URL without a path, query or credentials (for example https://eu.smartkey.io)')
  .transform((v) => new URL(v).origin);

const fingerprint = z
  .string()
  .transform((v) => v.replace(/:/g, '').toLowerCase())
  .refine((v) => /^[0-9a-f]{64}$/.test(v), 'must be a SHA-256 fingerprint: 64 hex digits, optionally colon-separated');

export const DSM_UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export const fortanixDsmProviderSchema = z.strictObject({
  type: z.literal('fortanix-dsm'),
  // This cluster's name, bound into every ciphertext (GCM additional data): etcd data copied from
  // another cluster does not decrypt here even when both DSM apps can use the same object.
  cluster: z.string().regex(/^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$/, 'must be 1-63 lower-case letters, digits, "." or "-" (for example prod-eu-1)'),
  // Nodes or sites of one DSM cluster (a session opened on one is valid on all), tried in order, healthy ones first.
  endpoints: z.array(endpointUrl).min(1).max(8),
  // The app's API key as DSM shows it (base64 of "app-id:secret"): from a file (mode 0600) or an environment variable, never a flag.
  apiKeyFile: z.string().min(1).optional(),
  apiKeyEnv: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,127}$/, 'must be an environment variable name').optional(),
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
  tls: z
    .strictObject({
      ca: z.string().min(1).optional(),
      pinSha256: z.array(fingerprint).min(1).max(8).optional(),
      clientCert: z.string().min(1).optional(),
      clientKey: z.string().min(1).optional(),
      serverName: z.string().min(1).max(253).optional(),
    })
    .prefault({}),
  allowInsecureHttp: z.boolean().default(false),
  // Deadline of one plugin call across every endpoint tried (session included): well inside the apiserver's 3 s.
  timeout: durationMs.prefault('2s'),
  // One endpoint gets at most this much of the deadline before the next is tried.
  attemptTimeout: durationMs.prefault('1s'),
  backoff: z.strictObject({ min: durationMs.prefault('250ms'), max: durationMs.prefault('10s') }).prefault({}),
});

export type FortanixDsmProviderConfig = z.output<typeof fortanixDsmProviderSchema>;

function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '[::1]' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

/** Cross-field checks and path resolution; returns the problems found (empty when none). */
export function checkFortanixDsmProvider(p: FortanixDsmProviderConfig): string[] {
  const problems: string[] = [];
  if ((p.apiKeyFile === undefined) === (p.apiKeyEnv === undefined)) problems.push('provider: set exactly one of apiKeyFile and apiKeyEnv (the DSM app\'s API key)');
  if ((p.keyName === undefined) === (p.kid === undefined)) problems.push('provider: set exactly one of keyName (follows rekeys) and kid (one fixed security object)');
  if (p.kid !== undefined && p.previousKids.includes(p.kid)) problems.push(`provider.previousKids: lists kid ${p.kid} itself`);
  if (new Set(p.previousKids).size !== p.previousKids.length) problems.push('provider.previousKids: lists a kid twice');
  if ((p.tls.clientCert === undefined) !== (p.tls.clientKey === undefined)) problems.push('provider.tls: clientCert and clientKey go together');
  if (p.attemptTimeout > p.timeout) problems.push(`provider.attemptTimeout (${p.attemptTimeout} ms) must not exceed provider.timeout (${p.timeout} ms)`);
  if (p.timeout >= 3000) problems.push(`provider.timeout (${p.timeout} ms) must stay below the apiserver's 3 s deadline`);
  if (p.backoff.min > p.backoff.max) problems.push('provider.backoff: min must not exceed max');
  if (new Set(p.endpoints).size !== p.endpoints.length) problems.push('provider.endpoints: lists an endpoint twice');
  for (const s of p.endpoints) {
    const u = new URL(s);
    if (u.protocol === 'http:' && !p.allowInsecureHttp && !isLoopbackHost(u.hostname)) {
      problems.push(`provider.endpoints: ${s} is plain HTTP to a host that is not loopback; use https (the API key and session token would cross the network in clear) or set allowInsecureHttp: true`);
    }
  }
  if (problems.length === 0) {
    if (p.apiKeyFile) p.apiKeyFile = resolve(p.apiKeyFile);
    for (const f of ['ca', 'clientCert', 'clientKey'] as const) if (p.tls[f]) p.tls[f] = resolve(p.tls[f]);
  }
  return problems;
}
