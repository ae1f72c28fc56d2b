import type { FastifyReply, FastifyRequest } from 'fastify';
import { KeyhavenError, type ErrorCode } from '../../errors.js';

// Vault's HTTP shapes: every answer is the response envelope, every error
// {"errors": [...]}, with Vault's status codes. The Transit and token routes
// use these; the Vault dialect (dialect.ts) uses vaultErrorPayload for errors
// raised before or outside a handler (authentication, bad JSON, no route).

/** The paths served in Vault's shapes. Native /v1/auth/* (login, whoami) keep the native shape. */
export const VAULT_PREFIXES: readonly string[] = ['/v1/transit', '/v1/auth/token'];

/** A path under VAULT_PREFIXES, for the raw LIST requests that never reach the router (list.ts). */
export function isVaultPath(url: string): boolean {
  return VAULT_PREFIXES.some((p) => url.startsWith(p) && (url.length === p.length || url[p.length] === '/' || url[p.length] === '?'));
}

// Every route of the Vault API, without its method: a path that matches one
// but reached no handler was sent with a method the path does not take.
const VAULT_ROUTES = [
  /^\/v1\/transit\/keys\/?$/,
  /^\/v1\/transit\/keys\/[^/]+$/,
  /^\/v1\/transit\/keys\/[^/]+\/(?:config|rotate|trim)$/,
  /^\/v1\/transit\/(?:encrypt|decrypt|rewrap)\/[^/]+$/,
  /^\/v1\/transit\/datakey\/[^/]+\/[^/]+$/,
  /^\/v1\/auth\/token\/(?:lookup-self|renew-self)$/,
];

/** A Vault path that has a route for another method (405), or none at all (404). */
export function vaultNoRoute(url: string): { status: 404 | 405; message: string } {
  const path = url.split('?')[0]!;
  return VAULT_ROUTES.some((r) => r.test(path)) ? { status: 405, message: 'unsupported operation' } : { status: 404, message: 'unsupported path' };
}

/** Vault's status for each keyhaven error code. */
function vaultStatus(code: ErrorCode): number {
  switch (code) {
    case 'not_found':
      return 404;
    case 'unauthenticated':
    case 'permission_denied':
      return 403;
    case 'sealed':
    case 'unavailable':
    case 'audit_failed':
      return 503;
    case 'too_large':
      return 413;
    case 'too_many_attempts':
      return 429;
    case 'internal':
    case 'config_invalid':
      return 500;
    default:
      // invalid_argument, integrity, failed_precondition, key_disabled,
      // key_destroyed, unknown_key_id, already_exists: the caller's to fix.
      return 400;
  }
}

/**
 * The body of a Vault error. The first entry is what Vault itself says where
 * clients match on it ("permission denied", "Vault is sealed"); keyhaven's own
 * message follows as a second entry.
 */
function vaultErrors(code: ErrorCode, message: string): string[] {
  switch (code) {
    case 'unauthenticated':
    case 'permission_denied':
      return ['permission denied', message];
    case 'sealed':
      return ['Vault is sealed', message];
    default:
      return [message];
  }
}

/** Status and body of an error on a Vault path. */
export function vaultErrorPayload(code: ErrorCode, message: string): { status: number; body: string } {
  return { status: vaultStatus(code), body: JSON.stringify({ errors: vaultErrors(code, message) }) };
}

/** Vault's response envelope around `data`. request_id is keyhaven's request id (as in the audit log). */
export function envelope(req: FastifyRequest, data: Record<string, unknown> | null, warnings: readonly string[] = [], auth: Record<string, unknown> | null = null) {
  return {
    request_id: req.id,
    lease_id: '',
    renewable: false,
    lease_duration: 0,
    data,
    wrap_info: null,
    warnings: warnings.length ? [...warnings] : null,
    auth,
    mount_type: req.url.startsWith('/v1/transit') ? 'transit' : 'token',
  };
}

/** Sends an error in Vault's shape from inside a handler (for "not found" reads that Vault answers with an empty list). */
export function sendVaultStatus(req: FastifyRequest, reply: FastifyReply, status: number, errors: string[], result: string): FastifyReply {
  req.auditNote.result = result;
  return reply.code(status).type('application/json').send(JSON.stringify({ errors }));
}

// ---- request bodies ----------------------------------------------------------

/** Field types as Vault's framework reads them (lenient where Vault is: "5" is an int, "true" a bool). */
export type FieldType = 'string' | 'int' | 'bool' | 'duration' | 'array';

export type FieldValue<T extends FieldType> = T extends 'string' ? string : T extends 'int' | 'duration' ? number : T extends 'bool' ? boolean : unknown[];

export type Fields<S extends Record<string, FieldType>> = { [K in keyof S]?: FieldValue<S[K]> };

const bad = (field: string, what: string) => new KeyhavenError('invalid_argument', `error converting input for field "${field}": ${what}`);

function intOf(field: string, v: unknown): number {
  const n = typeof v === 'number' ? v : typeof v === 'string' && /^-?\d{1,15}$/.test(v.trim()) ? Number(v.trim()) : NaN;
  if (!Number.isSafeInteger(n)) throw bad(field, 'expected an integer');
  return n;
}

const DURATION_UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400 };

/** Vault's TypeDurationSecond: seconds as a number or string, or a duration such as "1h30m". */
function durationOf(field: string, v: unknown): number {
  if (typeof v === 'number' || (typeof v === 'string' && /^\s*-?\d+\s*$/.test(v))) return intOf(field, v);
  if (typeof v !== 'string' || !/^(?:\d{1,9}[smhd]){1,4}$/.test(v)) throw bad(field, 'expected seconds or a duration such as "24h"');
  let total = 0;
  for (const m of v.matchAll(/(\d+)([smhd])/g)) total += Number(m[1]) * DURATION_UNITS[m[2]!]!;
  return total;
}

function boolOf(field: string, v: unknown): boolean {
  if (typeof v === 'boolean') return v;
  if (typeof v === 'string') {
    if (['1', 't', 'T', 'true', 'TRUE', 'True'].includes(v)) return true;
    if (['0', 'f', 'F', 'false', 'FALSE', 'False'].includes(v)) return false;
  }
  if (v === 0 || v === 1) return v === 1;
  throw bad(field, 'expected a boolean');
}

function valueOf(field: string, type: FieldType, v: unknown): unknown {
  switch (type) {
    case 'string':
      if (typeof v !== 'string') throw bad(field, 'expected a string');
      return v;
    case 'int':
      return intOf(field, v);
    case 'duration':
      return durationOf(field, v);
    case 'bool':
      return boolOf(field, v);
    case 'array':
      if (!Array.isArray(v)) throw bad(field, 'expected a list');
      return v;
  }
}

/**
 * Reads the fields a route knows from a JSON body. Unknown fields are
 * ignored with a warning, as Vault does; null counts as absent. Path
 * parameters (`name`) are known fields in Vault, so clients that echo them
 * in the body (node-vault does) get no warning.
 */
export function readBody<S extends Record<string, FieldType>>(body: unknown, spec: S, warnings: string[]): Fields<S> {
  if (body === undefined || body === null) return {};
  if (typeof body !== 'object' || Array.isArray(body)) throw new KeyhavenError('invalid_argument', 'the request body must be a JSON object');
  const out: Record<string, unknown> = {};
  const unknown: string[] = [];
  for (const [k, v] of Object.entries(body as Record<string, unknown>)) {
    if (!Object.hasOwn(spec, k)) {
      unknown.push(k);
      continue;
    }
    if (v === null) continue;
    out[k] = valueOf(k, spec[k]!, v);
  }
  if (unknown.length) warnings.push(`Endpoint ignored these unrecognized parameters: [${unknown.slice(0, 20).map((k) => k.slice(0, 64)).join(' ')}]`);
  return out as Fields<S>;
}

const B64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Standard base64 (as Vault requires), at most `maxBytes` decoded. */
export function base64Field(field: string, v: string, maxBytes: number): Buffer {
  if (v.length > Math.ceil(maxBytes / 3) * 4) throw new KeyhavenError('invalid_argument', `${field} must encode at most ${maxBytes} bytes`);
  if (!B64.test(v)) throw new KeyhavenError('invalid_argument', `failed to base64-decode ${field}`);
  return Buffer.from(v, 'base64');
}

// ---- credentials -------------------------------------------------------------

const TOKEN = /^[\x21-\x7e]{1,512}$/;

/** The X-Vault-Token a request carries, if any (Vault reads it before Authorization). */
export function vaultToken(req: FastifyRequest): string | undefined {
  const v = req.headers['x-vault-token'];
  if (typeof v !== 'string' || v === '') return undefined;
  if (!TOKEN.test(v)) throw new KeyhavenError('unauthenticated', 'the X-Vault-Token header must hold a keyhaven token or API key');
  return v;
}
