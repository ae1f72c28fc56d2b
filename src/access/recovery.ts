import { randomBytes } from 'node:crypto';
import type { AuditLog } from '../audit/audit-log.js';
import { KeyhavenError } from '../errors.js';
import type { RecoveryRow, Store } from '../storage/store.js';
import { actorName, type Principal } from './access.js';

// Break-glass recovery windows. An app reading a cluster's etcd backup
// (keyhaven k8s recover) opens one, with a reason, before it decrypts; a
// break-glass app decrypts only inside one. Opening may wait for a quorum
// (the route files the approval; the approved request calls open()).

/** How long an open recovery lets its app decrypt. */
const RECOVERY_TTL_S = 3600;

const ID = /^[0-9a-f]{16}$/;

/** Recoveries one app may hold pending or open at once: each is a row kept for ever and, under a quorum, a request in every approver's queue. */
const MAX_LIVE_PER_APP = 3;

export interface RecoveryInfo {
  readonly id: string;
  readonly app: string;
  readonly reason: string;
  readonly cluster: string | null;
  /** 'expired': open, but past expiresAt. */
  readonly state: 'pending' | 'open' | 'expired' | 'closed';
  readonly approval: string | null;
  readonly createdAt: string;
  readonly openedAt: string | null;
  readonly expiresAt: string | null;
  readonly closedAt: string | null;
  readonly closedBy: string | null;
  readonly objects: number | null;
  readonly failed: number | null;
}

export interface Recoveries {
  /**
   * Records a new recovery of `app`: open at once, or pending until `open` (under a quorum).
   * permission_denied when the app holds no decrypt grant; failed_precondition when it already
   * holds MAX_LIVE_PER_APP recoveries pending or open. Audit records are the caller's (the route's).
   */
  create(app: Principal, input: { reason: string; cluster?: string | undefined }, pending: boolean): Promise<RecoveryInfo>;
  /** Notes the approval request a pending recovery waits for. */
  attachApproval(id: string, approvalId: string): Promise<void>;
  /** Opens a pending recovery of `app` (its approval was granted); the hour starts now. */
  open(app: Principal, id: string): Promise<RecoveryInfo>;
  /** Closes a recovery (its app, or an admin). */
  close(actor: Principal, id: string, outcome: { objects?: number | undefined; failed?: number | undefined }): Promise<RecoveryInfo>;
  get(id: string): Promise<RecoveryInfo>;
  list(filter?: { appId?: string }): Promise<RecoveryInfo[]>;
  /**
   * The recovery a request names (x-keyhaven-recovery), if it lets `app`
   * decrypt now: the app's own, open and unexpired. permission_denied,
   * saying which of these fails, otherwise.
   */
  check(app: Principal, id: string): Promise<RecoveryInfo>;
}

function toInfo(r: RecoveryRow, now = Date.now()): RecoveryInfo {
  const expired = r.state === 'open' && r.expires_at !== null && Date.parse(r.expires_at) <= now;
  return {
    id: r.id,
    app: r.app_name,
    reason: r.reason,
    cluster: r.cluster,
    state: expired ? 'expired' : r.state,
    approval: r.approval_id,
    createdAt: r.created_at,
    openedAt: r.opened_at,
    expiresAt: r.expires_at,
    closedAt: r.closed_at,
    closedBy: r.closed_by,
    objects: r.objects,
    failed: r.failed,
  };
}

export function createRecoveries(deps: { store: Store; audit: AuditLog; ttlS?: number }): Recoveries {
  const { store, audit } = deps;
  const ttlMs = (deps.ttlS ?? RECOVERY_TTL_S) * 1000;

  const load = async (s: Store, id: string): Promise<RecoveryRow> => {
    const row = ID.test(id) ? await s.findRecovery(id) : undefined;
    if (!row) throw new KeyhavenError('not_found', `recovery "${id.slice(0, 40)}" does not exist`);
    return row;
  };

  // Pending or open now: an open one until it expires; a pending one while its
  // approval request can still be approved (a denied or expired request leaves it pending for ever).
  const isLive = async (s: Store, r: RecoveryRow, now: number): Promise<boolean> => {
    if (r.state === 'open') return r.expires_at === null || Date.parse(r.expires_at) > now;
    if (r.state !== 'pending') return false;
    if (r.approval_id === null) return true;
    const a = await s.findApproval(r.approval_id);
    return a !== undefined && (a.state === 'approved' || (a.state === 'pending' && Date.parse(a.expires_at) > now));
  };

  return {
    async create(app, input, pending) {
      if (app.kind !== 'app') throw new KeyhavenError('permission_denied', 'recoveries are opened by the app that reads the backup');
      return store.transaction(async (tx) => {
        // A recovery only widens what an app may decrypt: one that may decrypt nothing has no use for it.
        const grants = await tx.listGrants({ principalId: app.id });
        if (!grants.some((g) => (JSON.parse(g.operations) as string[]).includes('decrypt'))) {
          throw new KeyhavenError('permission_denied', `app "${app.name}" holds no decrypt grant on any key: a recovery would let it read nothing (a key-admin grants decrypt first)`);
        }
        const now = new Date();
        const live: string[] = [];
        const candidates = [...(await tx.listRecoveries({ appId: app.id, state: 'pending' })), ...(await tx.listRecoveries({ appId: app.id, state: 'open' }))];
        for (const r of candidates) {
          if (await isLive(tx, r, now.getTime())) live.push(r.id);
        }
        if (live.length >= MAX_LIVE_PER_APP) {
          throw new KeyhavenError('failed_precondition', `app "${app.name}" already has ${live.length} recoveries pending or open (${live.join(', ')}), the most one app may hold: close one (POST /v1/recoveries/{id}/close) or let it expire`);
        }
        const row: RecoveryRow = {
          id: randomBytes(8).toString('hex'),
          app_id: app.id,
          app_name: app.name,
          reason: input.reason,
          cluster: input.cluster ?? null,
          state: pending ? 'pending' : 'open',
          approval_id: null,
          created_at: now.toISOString(),
          opened_at: pending ? null : now.toISOString(),
          expires_at: pending ? null : new Date(now.getTime() + ttlMs).toISOString(),
          closed_at: null,
          closed_by: null,
          objects: null,
          failed: null,
        };
        await tx.insertRecovery(row);
        return toInfo(row);
      });
    },

    async attachApproval(id, approvalId) {
      await store.updateRecovery(id, { approval_id: approvalId });
    },

    async open(app, id) {
      return store.transaction(async (tx) => {
        const row = await load(tx, id);
        if (row.app_id !== app.id) throw new KeyhavenError('permission_denied', `recovery ${id} belongs to another app`);
        if (row.state !== 'pending') throw new KeyhavenError('failed_precondition', `recovery ${id} is ${row.state}, not pending`);
        const now = new Date();
        const patch = { state: 'open' as const, opened_at: now.toISOString(), expires_at: new Date(now.getTime() + ttlMs).toISOString() };
        await tx.updateRecovery(id, patch);
        await audit.recordIn(tx, { actor: actorName(app), operation: 'recovery.open', result: 'ok', details: { recovery: id, ...(row.approval_id ? { approval: row.approval_id } : {}), ...(row.cluster ? { cluster: row.cluster } : {}) } });
        return toInfo({ ...row, ...patch });
      });
    },

    async close(actor, id, outcome) {
      return store.transaction(async (tx) => {
        const row = await load(tx, id);
        if (actor.kind === 'app' && row.app_id !== actor.id) throw new KeyhavenError('permission_denied', `recovery ${id} belongs to another app`);
        if (row.state === 'closed') throw new KeyhavenError('failed_precondition', `recovery ${id} is already closed`);
        const patch = { state: 'closed' as const, closed_at: new Date().toISOString(), closed_by: actorName(actor), objects: outcome.objects ?? null, failed: outcome.failed ?? null };
        await tx.updateRecovery(id, patch);
        return toInfo({ ...row, ...patch });
      });
    },

    async get(id) {
      return toInfo(await load(store, id));
    },

    async list(filter = {}) {
      return (await store.listRecoveries(filter.appId === undefined ? {} : { appId: filter.appId })).map((r) => toInfo(r));
    },

    async check(app, id) {
      const row = ID.test(id) ? await store.findRecovery(id) : undefined;
      // One message for "no such recovery" and "another app's": an app learns nothing of others' recoveries.
      if (!row || row.app_id !== app.id) throw new KeyhavenError('permission_denied', `x-keyhaven-recovery names no recovery of app "${app.name}"`);
      const info = toInfo(row);
      if (info.state === 'pending') throw new KeyhavenError('permission_denied', `recovery ${id} is not open yet: it opens when approval request ${row.approval_id ?? '(being filed)'} is approved`);
      if (info.state === 'expired') throw new KeyhavenError('permission_denied', `recovery ${id} expired at ${row.expires_at}; open a new one`);
      if (info.state === 'closed') throw new KeyhavenError('permission_denied', `recovery ${id} is closed; open a new one`);
      return info;
    },
  };
}
