import type { FastifyRequest } from 'fastify';
import type { Access, Principal } from '../../access/access.js';
import type { ErrorCode } from '../../errors.js';

/** An answer as bytes on the wire: what each dialect's error shape produces. */
export interface Answer {
  readonly status: number;
  readonly type: string;
  readonly body: string;
}

/**
 * What the shared pipeline needs from an API dialect (native /v1, Vault
 * Transit, Fortanix DSM). Each dialect registers its routes in its own
 * encapsulated fastify context (pipeline.ts `registerDialect`); the pipeline
 * finds the dialect of a request in its route's config, never in its URL.
 */
export interface Dialect {
  readonly name: 'native' | 'vault' | 'dsm';
  /**
   * The path prefixes the dialect's not-found handler covers. Also the only
   * way to pick a dialect for the few answers given before routing (a URL
   * the router refuses, malformed HTTP): see `dialectOfPath`.
   */
  readonly prefixes: readonly string[];
  /** An error in this dialect's shape. */
  error(code: ErrorCode, message: string, requestId: string): Answer;
  /** The answer to a path this dialect has no route for, and the audit result. */
  notFound(method: string, path: string, requestId: string): Answer & { readonly result: string };
  /**
   * Credentials this dialect reads before the common "Authorization: Bearer"
   * (Vault: X-Vault-Token; DSM: an app's API key as HTTP Basic). Returns
   * undefined when the request carries none of its own.
   */
  credentials?(req: FastifyRequest, access: Access): Promise<Principal> | undefined;
}

/**
 * The dialect of a path, by prefix, for answers given before there is a
 * route (fastify's frameworkErrors, the HTTP parser's clientError): the
 * longest matching prefix wins; `fallback` otherwise.
 */
export function dialectOfPath(dialects: readonly Dialect[], fallback: Dialect, path: string): Dialect {
  let best = fallback;
  let bestLength = -1;
  for (const d of dialects) {
    for (const p of d.prefixes) {
      if (p.length > bestLength && path.startsWith(p) && (path.length === p.length || path[p.length] === '/' || path[p.length] === '?')) {
        best = d;
        bestLength = p.length;
      }
    }
  }
  return best;
}
