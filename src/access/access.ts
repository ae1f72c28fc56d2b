import { randomBytes } from 'node:crypto';
import type { AuditLog } from '../audit/audit-log.js';
import type { Barrier } from '../barrier/barrier.js';
import { KeyhavenError } from '../errors.js';
import type { PrincipalKind } from '../storage/schema.js';
import type { CredentialRow, LoginThrottleRow, PrincipalRow, Store } from '../storage/store.js';
import { ADMIN_ROLES, checkRoleSet, parseOperations, parseRoles, type CryptoOperation, type Role } from './roles.js';
import { dummyPasswordHash, hashesEqual, hashPassword, newToken, parseToken, takeHashSlot, validatePassword, verifyPassword } from './secrets.js';
import { signInSource } from './sign-in-source.js';

const NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;

/** Who is making a request, as authenticated. */
export interface Principal {
  readonly id: string;
  readonly name: string;
  readonly kind: PrincipalKind;
  readonly roles: readonly Role[];
  readonly via: 'session' | 'api_key' | 'cert' | 'system';
  /** A break-glass app: decrypts only inside an open recovery, never encrypts. */
  readonly breakGlass?: true;
}

/** The audit name of a principal: `user:alice`, `app:cluster-a`. */
export function actorName(p: Pick<Principal, 'kind' | 'name'>): string {
  return `${p.kind}:${p.name}`;
}

/** For changes made by keyhaven itself (init, dev bootstrap, scheduler). */
export const SYSTEM: Principal = Object.freeze({ id: 'system', name: 'keyhaven', kind: 'user', roles: [], via: 'system' });

export interface PrincipalInfo {
  readonly name: string;
  readonly kind: PrincipalKind;
  readonly roles: readonly Role[];
  readonly state: 'active' | 'disabled';
  readonly description: string | null;
  readonly certFingerprint: string | null;
  /** Users: the latest sign-in lock of any source address on this name, if one is in force. */
  readonly lockedUntil: string | null;
  readonly createdAt: string;
  /** Apps: present (true) on a break-glass app. */
  readonly breakGlass?: true;
  readonly grants?: readonly GrantInfo[];
  /** Apps: what their KMS plugins last reported, one entry per cluster node. */
  readonly clusters?: readonly AppClusterInfo[];
}

export interface AppClusterInfo {
  readonly cluster: string;
  readonly node: string;
  readonly key: string;
  readonly keyVersion: number;
  readonly keyId: string;
  readonly pluginVersion: string;
  readonly lastSuccess: string | null;
  readonly lastSeen: string;
}

export interface GrantInfo {
  readonly key: string;
  readonly operations: readonly CryptoOperation[];
  readonly createdAt: string;
  readonly createdBy: string;
}

export interface AccessOptions {
  readonly sessionTtlS: number;
  /** Failed sign-ins from one source address against one name before that pair locks. */
  readonly maxFailedLogins: number;
  /**
   * The first lock lasts this long, doubling with each further failure, up to
   * lockMaxS. A (name, source) pair's failures are forgotten lockMaxS after
   * its last failure or the end of its last lock.
   */
  readonly lockBaseS: number;
  readonly lockMaxS: number;
  /** How long an authenticated credential is trusted before it is re-read (role and grant changes take effect within it). */
  readonly cacheTtlMs: number;
}

const DEFAULT_ACCESS_OPTIONS: AccessOptions = Object.freeze({
  sessionTtlS: 8 * 3600,
  maxFailedLogins: 5,
  lockBaseS: 30,
  lockMaxS: 900,
  cacheTtlMs: 2000,
});

interface CachedAuth {
  principal: Principal;
  credential: CredentialRow | undefined;
  until: number;
}

export interface Access {
  /** With a password, or a hash made by hashNewPassword (when the call runs inside a transaction: hashing is slow). */
  createUser(actor: Principal, input: { name: string; roles: readonly string[] } & ({ password: string } | { passwordHash: string })): Promise<PrincipalInfo>;
  /** `expectId`: the change was approved for this principal id; a name deleted and made again is someone else. */
  setRoles(actor: Principal, name: string, roles: readonly string[], expectId?: string): Promise<PrincipalInfo>;
  /** Disables or re-enables a user; either way its sessions end at once. Never yourself, never the last active security-admin. */
  setUserState(actor: Principal, name: string, state: 'active' | 'disabled'): Promise<PrincipalInfo>;
  /** Deletes a user and its credentials; the same guards as disabling. */
  deleteUser(actor: Principal, name: string): Promise<void>;
  /** A user changes their own password; their other sessions end. */
  changePassword(actor: Principal, currentToken: string, currentPassword: string, newPassword: string): Promise<void>;
  /** Sets another user's password from a hash made by hashNewPassword; the user's sessions end. */
  resetPassword(actor: Principal, name: string, passwordHash: string, expectId?: string): Promise<PrincipalInfo>;
  /** Active users holding a role (approver eligibility). */
  activeHolders(role: Role): Promise<{ id: string; name: string }[]>;
  /** `breakGlass`: the app decrypts only inside an open recovery (POST /v1/recoveries) and never encrypts. */
  createApp(actor: Principal, input: { name: string; description?: string | undefined; certFingerprint?: string | undefined; breakGlass?: boolean | undefined }): Promise<{ app: PrincipalInfo; apiKey: string }>;
  rotateAppKey(actor: Principal, name: string): Promise<{ apiKey: string }>;
  setGrant(actor: Principal, app: string, keyName: string, operations: readonly string[]): Promise<GrantInfo>;
  revokeGrant(actor: Principal, app: string, keyName: string): Promise<void>;
  list(kind: PrincipalKind): Promise<PrincipalInfo[]>;
  get(name: string): Promise<PrincipalInfo>;
  /**
   * A session for a user's name and password, tried from `clientAddress`.
   * Throttled per (name, source) (the source: the IPv4 address or IPv6 /64):
   * refused with too_many_attempts while that pair is locked or while
   * password hashing is at capacity.
   */
  login(name: string, password: string, clientAddress: string): Promise<{ token: string; expiresAt: string; principal: Principal }>;
  /** Clears every sign-in failure counter and lock of a user (all sources); returns how many were cleared. */
  unlock(actor: Principal, name: string): Promise<{ name: string; cleared: number }>;
  logout(token: string): Promise<void>;
  /** A session for a principal already authenticated another way (an app's API key, for compatibility APIs); login's TTL. */
  openSession(principal: Principal): Promise<{ token: string; expiresAt: string }>;
  /** A bearer token (session or API key) → its principal; unauthenticated otherwise. */
  authenticate(token: string): Promise<Principal>;
  /** A verified client certificate's SHA-256 fingerprint → the app it is registered to. */
  authenticateCert(fingerprint: string): Promise<Principal>;
  /** The operations a principal may perform with a key (by key id). */
  grantedOperations(principal: Principal, keyId: string): Promise<ReadonlySet<CryptoOperation>>;
  /** A principal's id by name (for executing approved requests). */
  idOf(name: string): Promise<string | undefined>;
  /** Whether any principal holds a role (bootstrap checks). */
  hasAnyUser(): Promise<boolean>;
  /** Drops cached credentials (after a change made elsewhere). */
  invalidate(): void;
  /** Deletes expired sessions and forgotten sign-in failure counters; returns how many rows. */
  sweep(now: Date): Promise<number>;
}

function refuseIfLocked(r: LoginThrottleRow | undefined, now: Date): void {
  if (r?.locked_until && Date.parse(r.locked_until) > now.getTime() && Date.parse(r.expires_at) > now.getTime()) {
    throw new KeyhavenError('too_many_attempts', `too many failed sign-ins for this name from this address; try again after ${r.locked_until}`);
  }
}

/** name -> the latest lock in force on it (any source). */
async function latestLocks(s: Store, name?: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const r of await s.listLoginLocks(new Date().toISOString(), name)) {
    const cur = out.get(r.name);
    if (r.locked_until && (!cur || r.locked_until > cur)) out.set(r.name, r.locked_until);
  }
  return out;
}

function validateName(name: string, what: string): void {
  if (!NAME.test(name)) {
    throw new KeyhavenError('invalid_argument', `${what} name must be 1-64 characters of lower-case letters, digits, ".", "_" or "-", starting with a letter or digit`);
  }
}

function validateFingerprint(fp: string): string {
  const hex = fp.replace(/:/g, '').toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(hex)) throw new KeyhavenError('invalid_argument', 'certFingerprint must be the SHA-256 of the certificate (64 hex digits, colons allowed)');
  return hex;
}

function passwordPath(id: string): string {
  return `principals/${id}/password`;
}

function toPrincipal(row: PrincipalRow, via: Principal['via']): Principal {
  return { id: row.id, name: row.name, kind: row.kind, roles: JSON.parse(row.roles) as Role[], via, ...(row.break_glass === 1 ? { breakGlass: true as const } : {}) };
}

function toInfo(row: PrincipalRow, lockedUntil: string | null = null): PrincipalInfo {
  return {
    name: row.name,
    kind: row.kind,
    roles: JSON.parse(row.roles) as Role[],
    state: row.state,
    description: row.description,
    certFingerprint: row.cert_fingerprint,
    // The old per-account columns (failed_logins, locked_until) are no longer used.
    lockedUntil,
    createdAt: row.created_at,
    ...(row.break_glass === 1 ? { breakGlass: true as const } : {}),
  };
}

/** Validates a new password and hashes it (before any transaction: hashing is slow). */
export async function hashNewPassword(password: string): Promise<string> {
  validatePassword(password);
  return hashPassword(password);
}

/** A failed sign-in that locked its (name, source) pair, for the operational log. */
export interface SignInLock {
  /** The name tried, when it is a well-formed name (a password typed into the name field is never passed on). */
  readonly name?: string;
  readonly source: string;
  readonly failures: number;
  readonly lockedUntil: string;
}

export function createAccess(deps: {
  store: Store;
  barrier: Barrier;
  audit: AuditLog;
  options?: Partial<AccessOptions>;
  /** keyhaven dev only: one person may hold every role. */
  singlePersonDev?: boolean;
  /** Called when a failed sign-in locks its (name, source) pair (no audit record says so). */
  onLock?: (lock: SignInLock) => void;
}): Access {
  const { store, barrier, audit } = deps;
  const dev = deps.singlePersonDev === true;
  // Outside dev a stored role set holding both admin roles (a database made by
  // keyhaven dev, say) counts as neither: fail closed.
  const principalFrom = (row: PrincipalRow, via: Principal['via']): Principal => {
    const p = toPrincipal(row, via);
    if (dev || !(p.roles.includes('security-admin') && p.roles.includes('key-admin'))) return p;
    return { ...p, roles: p.roles.filter((r) => !ADMIN_ROLES.has(r)) };
  };
  const revokeSessions = async (tx: Store, principalId: string, keep?: string) => {
    const now = new Date().toISOString();
    for (const c of await tx.listCredentials(principalId)) {
      if (c.kind === 'session' && c.revoked_at === null && c.id !== keep) await tx.updateCredential(c.id, { revoked_at: now });
    }
  };
  // Disabling or deleting must leave someone able to administer identities.
  const guardLifecycle = async (tx: Store, actor: Principal, row: PrincipalRow, what: string) => {
    if (row.kind !== 'user') throw new KeyhavenError('invalid_argument', `"${row.name}" is an app, not a user`);
    if (row.id === actor.id) throw new KeyhavenError('permission_denied', `nobody can ${what} themselves; ask another security-admin`);
    const roles = JSON.parse(row.roles) as Role[];
    if (row.state === 'active' && roles.includes('security-admin')) {
      const others = (await tx.listPrincipals('user')).filter((u) => u.id !== row.id && u.state === 'active' && (JSON.parse(u.roles) as Role[]).includes('security-admin'));
      if (others.length === 0) throw new KeyhavenError('failed_precondition', `"${row.name}" is the last active security-admin; nobody could administer users without them`);
    }
  };
  const opts: AccessOptions = { ...DEFAULT_ACCESS_OPTIONS, ...deps.options };
  const cache = new Map<string, CachedAuth>(); // credential id or "cert:<fp>" -> auth
  const grantCache = new Map<string, { grants: Map<string, ReadonlySet<CryptoOperation>>; until: number }>(); // principal id -> grants

  const mustFind = async (s: Store, name: string, kind?: PrincipalKind): Promise<PrincipalRow> => {
    const row = NAME.test(name) ? await s.findPrincipalByName(name) : undefined;
    if (!row || (kind && row.kind !== kind)) throw new KeyhavenError('not_found', `${kind ?? 'principal'} "${name}" does not exist`);
    return row;
  };

  /**
   * Counts one sign-in attempt of (name, source) as a failure before its
   * password is checked, in one write transaction (serialised across every
   * server on the database), so N concurrent attempts check at most
   * maxFailedLogins passwords; a success then clears the pair. Refuses while
   * the pair is locked.
   */
  const reserveAttempt = async (name: string, source: string, now: Date): Promise<{ failures: number; lockedUntil: string | null }> => {
    return store.transaction(async (tx) => {
      let r = await tx.getLoginThrottle(name, source);
      if (r && Date.parse(r.expires_at) <= now.getTime()) r = undefined; // forgotten
      refuseIfLocked(r, now);
      const failures = (r?.failures ?? 0) + 1;
      const over = failures - opts.maxFailedLogins;
      // The attempt that reaches the limit locks the pair now, so no concurrent attempt slips past it.
      const lockedUntil = over >= 0 ? new Date(now.getTime() + Math.min(opts.lockMaxS, opts.lockBaseS * 2 ** over) * 1000) : null;
      const expiresAt = new Date((lockedUntil ?? now).getTime() + opts.lockMaxS * 1000);
      await tx.putLoginThrottle({ name, source, failures, locked_until: lockedUntil?.toISOString() ?? null, expires_at: expiresAt.toISOString(), updated_at: now.toISOString() });
      return { failures, lockedUntil: lockedUntil?.toISOString() ?? null };
    });
  };

  const loadGrants = async (principalId: string): Promise<Map<string, ReadonlySet<CryptoOperation>>> => {
    const out = new Map<string, ReadonlySet<CryptoOperation>>();
    for (const g of await store.listGrants({ principalId })) out.set(g.key_id, new Set(JSON.parse(g.operations) as CryptoOperation[]));
    return out;
  };

  // A change and its audit record commit together.
  const change = async <T>(actor: Principal, operation: string, details: Record<string, string | number | boolean>, fn: (tx: Store) => Promise<T>, keyName?: string): Promise<T> => {
    const out = await store.transaction(async (tx) => {
      const r = await fn(tx);
      await audit.recordIn(tx, { actor: actorName(actor), operation, keyName, result: 'ok', details });
      return r;
    });
    cache.clear();
    grantCache.clear();
    return out;
  };

  const newPrincipalRow = (name: string, kind: PrincipalKind, roles: readonly Role[], extra: Partial<PrincipalRow> = {}): PrincipalRow => {
    const now = new Date().toISOString();
    return {
      id: randomBytes(8).toString('hex'),
      name,
      kind,
      roles: JSON.stringify(roles),
      state: 'active',
      failed_logins: 0,
      locked_until: null,
      cert_fingerprint: null,
      description: null,
      break_glass: 0,
      created_by: null,
      key_issued_by: null,
      created_at: now,
      updated_at: now,
      ...extra,
    };
  };

  const ensureNameFree = async (tx: Store, name: string) => {
    if (await tx.findPrincipalByName(name)) throw new KeyhavenError('already_exists', `a user or app named "${name}" already exists`);
  };

  const issueApiKey = async (tx: Store, principalId: string): Promise<string> => {
    const now = new Date().toISOString();
    // The app's sessions go with its old key: they were opened with it (DSM
    // session auth), and a rotation is how a leaked key is cut off.
    for (const c of await tx.listCredentials(principalId)) {
      if ((c.kind === 'api_key' || c.kind === 'session') && c.revoked_at === null) await tx.updateCredential(c.id, { revoked_at: now });
    }
    const t = newToken('api_key');
    await tx.insertCredential({ id: t.id, principal_id: principalId, kind: 'api_key', hash: t.hash, created_at: now, expires_at: null, revoked_at: null });
    return t.token;
  };

  const authFromCredential = async (id: string, secretHash: string): Promise<Principal> => {
    const now = Date.now();
    let c = cache.get(id);
    if (!c || c.until < now) {
      const cred = await store.findCredential(id);
      const row = cred ? await store.findPrincipalById(cred.principal_id) : undefined;
      if (!cred || !row) {
        cache.delete(id);
        throw new KeyhavenError('unauthenticated', 'the token is not valid');
      }
      c = { principal: principalFrom(row, cred.kind), credential: cred, until: now + opts.cacheTtlMs };
      if (row.state !== 'active') c.credential = undefined;
      cache.set(id, c);
    }
    const cred = c.credential;
    if (!cred || !hashesEqual(cred.hash, secretHash)) throw new KeyhavenError('unauthenticated', 'the token is not valid');
    if (cred.revoked_at !== null) throw new KeyhavenError('unauthenticated', 'the token has been revoked');
    if (cred.expires_at !== null && Date.parse(cred.expires_at) <= now) throw new KeyhavenError('unauthenticated', 'the session has expired; log in again');
    return c.principal;
  };

  return {
    async createUser(actor, input) {
      validateName(input.name, 'user');
      if ('password' in input) validatePassword(input.password);
      const roles = parseRoles(input.roles);
      checkRoleSet(roles, dev);
      const hash = 'password' in input ? await hashPassword(input.password) : input.passwordHash;
      const row = newPrincipalRow(input.name, 'user', roles);
      await change(actor, 'user.create', { user: input.name, roles: roles.join(',') }, async (tx) => {
        await ensureNameFree(tx, input.name);
        await tx.insertPrincipal(row);
        await barrier.put(tx, passwordPath(row.id), Buffer.from(hash, 'utf8'));
      });
      return toInfo(row);
    },

    async setRoles(actor, name, rolesIn, expectId) {
      const roles = parseRoles(rolesIn);
      checkRoleSet(roles, dev);
      return change(actor, 'user.roles', { user: name, roles: roles.join(',') || '-' }, async (tx) => {
        const row = await mustFind(tx, name);
        if (expectId !== undefined && row.id !== expectId) throw new KeyhavenError('failed_precondition', `"${name}" is not the user the request was approved for (deleted and made again?)`);
        if (row.kind !== 'user') throw new KeyhavenError('invalid_argument', `"${name}" is an app; apps hold key grants, not roles`);
        if (row.id === actor.id) throw new KeyhavenError('permission_denied', 'nobody changes their own roles; ask another security-admin');
        await tx.updatePrincipal(row.id, { roles: JSON.stringify(roles), updated_at: new Date().toISOString() });
        return toInfo({ ...row, roles: JSON.stringify(roles) }, (await latestLocks(tx, name)).get(name) ?? null);
      });
    },

    async setUserState(actor, name, state) {
      return change(actor, state === 'disabled' ? 'user.disable' : 'user.enable', { user: name }, async (tx) => {
        const row = await mustFind(tx, name);
        await guardLifecycle(tx, actor, row, state === 'disabled' ? 'disable' : 'enable');
        await tx.updatePrincipal(row.id, { state, updated_at: new Date().toISOString() });
        await revokeSessions(tx, row.id);
        return toInfo({ ...row, state });
      });
    },

    async deleteUser(actor, name) {
      await change(actor, 'user.delete', { user: name }, async (tx) => {
        const row = await mustFind(tx, name);
        await guardLifecycle(tx, actor, row, 'delete');
        await barrier.delete(tx, passwordPath(row.id));
        await tx.deletePrincipal(row.id);
      });
    },

    async changePassword(actor, currentToken, currentPassword, newPassword) {
      if (actor.kind !== 'user' || actor.via !== 'session') throw new KeyhavenError('permission_denied', 'only a signed-in user changes their password');
      const parsed = parseToken(currentToken);
      const hash = await hashNewPassword(newPassword);
      const stored = await barrier.get(store, passwordPath(actor.id));
      if (!stored || !(await verifyPassword(currentPassword.slice(0, 1024), stored.toString('utf8')))) {
        throw new KeyhavenError('permission_denied', 'the current password is not right');
      }
      await change(actor, 'user.password', { user: actor.name }, async (tx) => {
        await barrier.put(tx, passwordPath(actor.id), Buffer.from(hash, 'utf8'));
        await tx.updatePrincipal(actor.id, { updated_at: new Date().toISOString() });
        await revokeSessions(tx, actor.id, parsed?.id);
      });
    },

    async resetPassword(actor, name, passwordHash, expectId) {
      return change(actor, 'user.reset-password', { user: name }, async (tx) => {
        const row = await mustFind(tx, name);
        if (row.kind !== 'user') throw new KeyhavenError('invalid_argument', `"${name}" is an app; apps have API keys, not passwords`);
        if (row.id === actor.id) throw new KeyhavenError('permission_denied', 'change your own password with PUT /v1/auth/password');
        if (expectId !== undefined && row.id !== expectId) throw new KeyhavenError('failed_precondition', `"${name}" is not the user the request was approved for (deleted and made again?)`);
        await barrier.put(tx, passwordPath(row.id), Buffer.from(passwordHash, 'utf8'));
        await tx.updatePrincipal(row.id, { updated_at: new Date().toISOString() });
        await revokeSessions(tx, row.id);
        return toInfo(row);
      });
    },

    async activeHolders(role) {
      return (await store.listPrincipals('user')).filter((u) => u.state === 'active' && (JSON.parse(u.roles) as Role[]).includes(role)).map((u) => ({ id: u.id, name: u.name }));
    },

    async createApp(actor, input) {
      validateName(input.name, 'app');
      const fp = input.certFingerprint === undefined ? null : validateFingerprint(input.certFingerprint);
      if (input.description !== undefined && input.description.length > 256) throw new KeyhavenError('invalid_argument', 'description must be at most 256 characters');
      const row = newPrincipalRow(input.name, 'app', [], { cert_fingerprint: fp, description: input.description ?? null, break_glass: input.breakGlass === true ? 1 : 0, created_by: actor.id, key_issued_by: actor.id });
      const apiKey = await change(actor, 'app.create', { app: input.name, ...(input.breakGlass === true ? { breakGlass: true } : {}) }, async (tx) => {
        await ensureNameFree(tx, input.name);
        if (fp && (await tx.findPrincipalByCert(fp))) throw new KeyhavenError('already_exists', 'that certificate is already registered to another app');
        await tx.insertPrincipal(row);
        return issueApiKey(tx, row.id);
      });
      return { app: toInfo(row), apiKey };
    },

    async rotateAppKey(actor, name) {
      const apiKey = await change(actor, 'app.rotate-key', { app: name }, async (tx) => {
        const row = await mustFind(tx, name, 'app');
        // The new key's holder: it may not approve this app's recovery (quorum.ts).
        await tx.updatePrincipal(row.id, { key_issued_by: actor.id, updated_at: new Date().toISOString() });
        return issueApiKey(tx, row.id);
      });
      return { apiKey };
    },

    async setGrant(actor, app, keyName, operationsIn) {
      const operations = parseOperations(operationsIn);
      const createdAt = new Date().toISOString();
      await change(
        actor,
        'app.grant',
        { app, operations: operations.join(',') },
        async (tx) => {
          const row = await tx.findPrincipalByName(app);
          if (row?.kind === 'user') throw new KeyhavenError('invalid_argument', `"${app}" is a user; key grants are for apps (users hold roles, so nobody manages and uses one key)`);
          if (!row) throw new KeyhavenError('not_found', `app "${app}" does not exist`);
          if (row.id === actor.id) throw new KeyhavenError('permission_denied', 'nobody grants access to themselves');
          const key = await tx.findKeyByName(keyName);
          if (!key) throw new KeyhavenError('not_found', `key "${keyName}" does not exist`);
          await tx.putGrant({ principal_id: row.id, key_id: key.id, operations: JSON.stringify(operations), created_at: createdAt, created_by: actorName(actor) });
        },
        keyName,
      );
      return { key: keyName, operations, createdAt, createdBy: actorName(actor) };
    },

    async revokeGrant(actor, app, keyName) {
      await change(
        actor,
        'app.revoke',
        { app },
        async (tx) => {
          const row = await mustFind(tx, app, 'app');
          const key = await tx.findKeyByName(keyName);
          if (!key || !(await tx.deleteGrant(row.id, key.id))) throw new KeyhavenError('not_found', `app "${app}" has no grant on key "${keyName}"`);
        },
        keyName,
      );
    },

    async list(kind) {
      const rows = await store.listPrincipals(kind);
      if (kind === 'user') {
        const locks = await latestLocks(store);
        return rows.map((r) => toInfo(r, locks.get(r.name) ?? null));
      }
      const keys = new Map((await store.listKeys()).map((k) => [k.id, k.name]));
      const clusters = new Map<string, AppClusterInfo[]>();
      for (const c of await store.listPluginReports({})) {
        const list = clusters.get(c.app_id) ?? [];
        list.push({ cluster: c.cluster, node: c.node, key: c.key_name, keyVersion: c.key_version, keyId: c.key_id, pluginVersion: c.plugin_version, lastSuccess: c.last_success, lastSeen: c.last_seen });
        clusters.set(c.app_id, list);
      }
      return Promise.all(
        rows.map(async (r) => ({
          ...toInfo(r),
          grants: (await store.listGrants({ principalId: r.id })).map((g) => ({ key: keys.get(g.key_id) ?? g.key_id, operations: JSON.parse(g.operations) as CryptoOperation[], createdAt: g.created_at, createdBy: g.created_by })),
          clusters: clusters.get(r.id) ?? [],
        })),
      );
    },

    async get(name) {
      const row = await mustFind(store, name);
      const [info] = (await this.list(row.kind)).filter((p) => p.name === name);
      return info ?? toInfo(row);
    },

    async login(name, password, clientAddress) {
      const now = new Date();
      const source = signInSource(clientAddress);
      // Counted under the name as tried; no real name is longer (DSM Basic pairs can be).
      const tried = name.slice(0, 64);
      // Admission to the hashing pool comes first: under a flood most attempts end here, at no
      // storage cost, and a refusal for load is no failed attempt.
      const slot = takeHashSlot();
      let row: PrincipalRow | undefined;
      let stored: Buffer | undefined;
      let attempt: { failures: number; lockedUntil: string | null };
      try {
        // A locked pair is refused on a plain read, without a write transaction.
        refuseIfLocked(await store.getLoginThrottle(tried, source), now);
        attempt = await reserveAttempt(tried, source, now);
        row = NAME.test(name) ? await store.findPrincipalByName(name) : undefined;
        stored = row && row.kind === 'user' ? await barrier.get(store, passwordPath(row.id)) : undefined;
      } catch (e) {
        slot.release();
        throw e;
      }
      // Verify against a dummy hash for unknown users, so timing does not tell which names exist.
      const ok = (await verifyPassword(password.slice(0, 1024), stored ? stored.toString('utf8') : dummyPasswordHash(), slot)) && stored !== undefined;
      if (!row || !ok || row.state !== 'active') {
        // This failure reached the limit: the lock set when the attempt was counted now holds.
        if (attempt.lockedUntil !== null) deps.onLock?.({ ...(NAME.test(tried) ? { name: tried } : {}), source, failures: attempt.failures, lockedUntil: attempt.lockedUntil });
        throw new KeyhavenError('unauthenticated', 'invalid name or password');
      }
      const t = newToken('session');
      const expiresAt = new Date(now.getTime() + opts.sessionTtlS * 1000).toISOString();
      const principalId = row.id;
      await store.transaction(async (tx) => {
        // Success forgets this source's failures (other sources' counters stand).
        await tx.deleteLoginThrottles(tried, source);
        await tx.insertCredential({ id: t.id, principal_id: principalId, kind: 'session', hash: t.hash, created_at: now.toISOString(), expires_at: expiresAt, revoked_at: null });
      });
      return { token: t.token, expiresAt, principal: principalFrom(row, 'session') };
    },

    async unlock(actor, name) {
      return change(actor, 'user.unlock', { user: name }, async (tx) => {
        await mustFind(tx, name, 'user');
        return { name, cleared: await tx.deleteLoginThrottles(name) };
      });
    },

    async logout(token) {
      const parsed = parseToken(token);
      if (!parsed || parsed.kind !== 'session') throw new KeyhavenError('invalid_argument', 'only a session can log out');
      await authFromCredential(parsed.id, parsed.secretHash);
      await store.updateCredential(parsed.id, { revoked_at: new Date().toISOString() });
      cache.delete(parsed.id);
    },

    async openSession(principal) {
      const row = await store.findPrincipalById(principal.id);
      if (!row || row.state !== 'active') throw new KeyhavenError('unauthenticated', 'the credentials are not valid');
      const t = newToken('session');
      const now = new Date();
      const expiresAt = new Date(now.getTime() + opts.sessionTtlS * 1000).toISOString();
      await store.insertCredential({ id: t.id, principal_id: row.id, kind: 'session', hash: t.hash, created_at: now.toISOString(), expires_at: expiresAt, revoked_at: null });
      return { token: t.token, expiresAt };
    },

    async authenticate(token) {
      const parsed = parseToken(token);
      if (!parsed) throw new KeyhavenError('unauthenticated', 'the token is not a keyhaven token');
      const p = await authFromCredential(parsed.id, parsed.secretHash);
      if ((p.via === 'api_key') !== (parsed.kind === 'api_key')) throw new KeyhavenError('unauthenticated', 'the token is not valid');
      return p;
    },

    async authenticateCert(fingerprint) {
      const key = `cert:${fingerprint}`;
      const now = Date.now();
      let c = cache.get(key);
      if (!c || c.until < now) {
        const row = await store.findPrincipalByCert(fingerprint);
        if (!row || row.kind !== 'app' || row.state !== 'active') throw new KeyhavenError('unauthenticated', 'the client certificate is not registered to an app');
        c = { principal: principalFrom(row, 'cert'), credential: undefined, until: now + opts.cacheTtlMs };
        cache.set(key, c);
      }
      return c.principal;
    },

    async grantedOperations(principal, keyId) {
      if (principal.kind !== 'app') return new Set();
      const now = Date.now();
      let g = grantCache.get(principal.id);
      if (!g || g.until < now) {
        g = { grants: await loadGrants(principal.id), until: now + opts.cacheTtlMs };
        grantCache.set(principal.id, g);
      }
      return g.grants.get(keyId) ?? new Set();
    },

    async idOf(name) {
      return (await store.findPrincipalByName(name))?.id;
    },

    async hasAnyUser() {
      return (await store.listPrincipals('user')).length > 0;
    },

    invalidate() {
      cache.clear();
      grantCache.clear();
    },

    async sweep(now) {
      const at = now.toISOString();
      return (await store.deleteExpiredSessions(at)) + (await store.deleteExpiredLoginThrottles(at));
    },
  };
}
