import { KeyhavenError } from '../errors.js';

export const ROLES = ['security-admin', 'key-admin', 'auditor'] as const;
export type Role = (typeof ROLES)[number];

export const CRYPTO_OPERATIONS = ['encrypt', 'decrypt', 'rewrap', 'datakey'] as const;
export type CryptoOperation = (typeof CRYPTO_OPERATIONS)[number];

/** Roles that administer something; adding or removing one may need a quorum. */
export const ADMIN_ROLES: ReadonlySet<Role> = new Set(['security-admin', 'key-admin']);

/**
 * Separation of duties: who administers identities must not also decide who
 * uses keys, or one person could give themselves decryption. Only keyhaven
 * dev (one person on a laptop) lifts this.
 */
export function checkRoleSet(roles: readonly Role[], singlePersonDev: boolean): void {
  if (!singlePersonDev && roles.includes('security-admin') && roles.includes('key-admin')) {
    throw new KeyhavenError('failed_precondition', 'no user may hold both security-admin and key-admin (separation of duties); give the roles to two people');
  }
}

export function parseRoles(roles: readonly string[]): Role[] {
  const out = new Set<Role>();
  for (const r of roles) {
    if (!(ROLES as readonly string[]).includes(r)) {
      throw new KeyhavenError('invalid_argument', `unknown role ${JSON.stringify(r)} (roles: ${ROLES.join(', ')})`);
    }
    out.add(r as Role);
  }
  return [...out].sort();
}

export function parseOperations(ops: readonly string[]): CryptoOperation[] {
  if (ops.length === 0) throw new KeyhavenError('invalid_argument', 'a grant needs at least one operation');
  const out = new Set<CryptoOperation>();
  for (const o of ops) {
    if (!(CRYPTO_OPERATIONS as readonly string[]).includes(o)) {
      throw new KeyhavenError('invalid_argument', `unknown operation ${JSON.stringify(o)} (operations: ${CRYPTO_OPERATIONS.join(', ')})`);
    }
    out.add(o as CryptoOperation);
  }
  return [...out].sort();
}
