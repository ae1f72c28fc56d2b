import { resolve } from 'node:path';
import { z } from 'zod';
import { durationMs } from '../duration.js';

// Schema pieces and cross-field checks shared by the plugin's HTTP-based
// providers (keyhaven, vault, fortanix-dsm, aws-kms). Lives here rather than
// in plugin-config.ts, which imports the provider modules.

/** An http(s)://host[:port] origin; `hint` ends the error message in parentheses. */
export function originUrl(hint?: string) {
  return z
    .string()
    .max(2048)
    .refine((v) => {
      try {
        const u = new URL(v);
        return (u.protocol === 'https:' || u.protocol === 'http:') && !u.username && !u.password && (u.pathname === '/' || u.pathname === '') && !u.search && !u.hash;
      } catch {
        return false;
      }
    }, `must be an http(s)://host[:port] URL without a path, query or credentials${hint ? ` (${hint})` : ''}`)
    .transform((v) => new URL(v).origin);
}

/** SHA-256 certificate fingerprint, as openssl prints it (AB:CD:...) or plain hex. */
const fingerprint = z
  .string()
  .transform((v) => v.replace(/:/g, '').toLowerCase())
  .refine((v) => /^[0-9a-f]{64}$/.test(v), 'must be a SHA-256 fingerprint: 64 hex digits, optionally colon-separated');

export const envVarName = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,127}$/, 'must be an environment variable name');

export const clusterName = z.string().regex(/^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$/, 'must be 1-63 lower-case letters, digits, "." or "-" (for example prod-eu-1)');

/** `tls:` block: CA bundle, pinned certificates, client certificate (mTLS), server name. */
export function tlsSchema(file: z.ZodType<string> = z.string().min(1)) {
  return z
    .strictObject({
      ca: file.optional(),
      pinSha256: z.array(fingerprint).min(1).max(8).optional(),
      clientCert: file.optional(),
      clientKey: file.optional(),
      serverName: z.string().min(1).max(253).optional(),
    })
    .prefault({});
}

/** Deadline fields: `timeout` across every server tried (well inside the apiserver's 3 s), `attemptTimeout` per server, failover `backoff`. */
export const deadlineFields = {
  timeout: durationMs.prefault('2s'),
  attemptTimeout: durationMs.prefault('1s'),
  backoff: z.strictObject({ min: durationMs.prefault('250ms'), max: durationMs.prefault('10s') }).prefault({}),
};

/** `localKek:` block: a local KEK, wrapped by the backend, seals seeds so most calls stay local. */
export const localKekSchema = z
  .strictObject({
    enabled: z.boolean().default(true),
    // Seeds sealed by one local KEK before a new one is made (at the next health check / Status).
    maxUses: z.number().int().min(1).max(2 ** 32).default(1_000_000),
    maxAge: durationMs.prefault('24h'),
    // Unwrapped KEKs kept for Decrypt (least recently used go first).
    cacheSize: z.number().int().min(1).max(1_000_000).default(1024),
  })
  .prefault({});

export interface TlsFiles {
  ca?: string | undefined;
  clientCert?: string | undefined;
  clientKey?: string | undefined;
}

function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '[::1]' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

/** "set exactly one of apiKeyFile and apiKeyEnv", or nothing. */
export function checkApiKeySource(p: { apiKeyFile?: string | undefined; apiKeyEnv?: string | undefined }, what: string): string[] {
  return (p.apiKeyFile === undefined) === (p.apiKeyEnv === undefined) ? [`provider: set exactly one of apiKeyFile and apiKeyEnv (${what})`] : [];
}

export function checkTlsPair(tls: TlsFiles): string[] {
  return (tls.clientCert === undefined) !== (tls.clientKey === undefined) ? ['provider.tls: clientCert and clientKey go together'] : [];
}

/** attemptTimeout ≤ timeout < 3 s, backoff.min ≤ backoff.max. */
export function checkDeadlines(p: { timeout: number; attemptTimeout: number; backoff?: { min: number; max: number } }): string[] {
  const problems: string[] = [];
  if (p.attemptTimeout > p.timeout) problems.push(`provider.attemptTimeout (${p.attemptTimeout} ms) must not exceed provider.timeout (${p.timeout} ms)`);
  if (p.timeout >= 3000) problems.push(`provider.timeout (${p.timeout} ms) must stay below the apiserver's 3 s deadline`);
  if (p.backoff && p.backoff.min > p.backoff.max) problems.push('provider.backoff: min must not exceed max');
  return problems;
}

/** Plain HTTP is refused unless to loopback or allowed: `exposed` names what would cross the network in clear. */
export function plainHttpProblem(field: string, url: string, allowInsecureHttp: boolean, exposed: string): string | undefined {
  const u = new URL(url);
  if (u.protocol !== 'http:' || allowInsecureHttp || isLoopbackHost(u.hostname)) return undefined;
  return `provider.${field}: ${url} is plain HTTP to a host that is not loopback; use https (${exposed} would cross the network in clear) or set allowInsecureHttp: true`;
}

/** A list of server URLs: no duplicates (`twice` ends "lists ... twice"), no plain HTTP off loopback. */
export function checkServerList(field: string, urls: readonly string[], twice: string, allowInsecureHttp: boolean, exposed: string): string[] {
  const problems: string[] = [];
  if (new Set(urls).size !== urls.length) problems.push(`provider.${field}: lists ${twice} twice`);
  for (const s of urls) {
    const p = plainHttpProblem(field, s, allowInsecureHttp, exposed);
    if (p) problems.push(p);
  }
  return problems;
}

/** Relative TLS file paths are resolved once, against the directory the plugin started in. */
export function resolveTlsPaths(tls: TlsFiles): void {
  for (const f of ['ca', 'clientCert', 'clientKey'] as const) if (tls[f]) tls[f] = resolve(tls[f]);
}
