import { randomBytes } from 'node:crypto';
import type { AuditLog } from '../audit/audit-log.js';
import type { Barrier } from '../barrier/barrier.js';
import { KeyhavenError } from '../errors.js';
import type { ApprovalRow, Store } from '../storage/store.js';
import { actorName, type Principal } from './access.js';
import type { Role } from './roles.js';

// Operations a quorum policy can put behind M-of-N approval, and the role an
// approver must hold for each by default.
export const GUARDED_OPERATIONS = {
  'key.destroy': 'key-admin',
  'key.disable': 'key-admin',
  'key.policy': 'key-admin',
  // Who may use a key is the key-admin's call.
  'app.grant': 'key-admin',
  // A new API key gives crypto use of everything the app is granted: the
  // security-admin asks, a key-admin consents.
  'app.rotate-key': 'key-admin',
  'admin.add': 'security-admin',
  'admin.remove': 'security-admin',
  'quorum.set': 'security-admin',
  // A break-glass app asks to read a backup; an admin of either kind consents (DEFAULT_APPROVERS).
  'recovery.start': 'security-admin',
} as const satisfies Record<string, Role>;
export type GuardedOperation = keyof typeof GUARDED_OPERATIONS;

/** Undoing a guarded operation needs what the operation needs (the policy lists only the operation). */
export const UNDO_OPERATIONS = {
  'key.enable': 'key.disable',
  'key.destroy.cancel': 'key.destroy',
} as const satisfies Record<string, GuardedOperation>;

/** Every operation an approval request can carry: guarded ones, their undos, and the separation-of-duties floor's own. */
export type ApprovableOperation = GuardedOperation | keyof typeof UNDO_OPERATIONS | 'user.reset-password';

/** The role the requester must hold (at filing and again at execution); 'app': the requester is an app. */
export const PERFORMER: Record<ApprovableOperation, Role | 'app'> = {
  'key.destroy': 'key-admin',
  'key.disable': 'key-admin',
  'key.policy': 'key-admin',
  'key.enable': 'key-admin',
  'key.destroy.cancel': 'key-admin',
  'app.grant': 'key-admin',
  'app.rotate-key': 'security-admin',
  'admin.add': 'security-admin',
  'admin.remove': 'security-admin',
  'quorum.set': 'security-admin',
  'user.reset-password': 'security-admin',
  'recovery.start': 'app',
};

const DEFAULT_APPROVERS: Record<ApprovableOperation, readonly Role[]> = {
  ...(Object.fromEntries(Object.entries(GUARDED_OPERATIONS).map(([k, v]) => [k, [v]])) as Record<GuardedOperation, Role[]>),
  'key.enable': ['key-admin'],
  'key.destroy.cancel': ['key-admin'],
  'user.reset-password': ['security-admin', 'key-admin'],
  'recovery.start': ['security-admin', 'key-admin'],
};

/** Who may approve a request, decided when it is filed and stored with it. */
export interface ApproverRule {
  readonly roles: readonly Role[];
  /** Principal ids that may not approve (the target of the change). */
  readonly exclude: readonly string[];
  /** Principal id the change is about, re-checked at execution (a deleted and re-created name is another person). */
  readonly targetId?: string | undefined;
}

// The approver rule travels inside the stored params under this key, so the
// approvals table needs no new column.
const RULE_KEY = '@approvers';

export interface QuorumPolicy {
  /** Approvals needed from admins other than the requester; 0 turns approvals off. */
  readonly required: number;
  readonly operations: readonly GuardedOperation[];
  /** How long a request stays open, in seconds. */
  readonly ttlS: number;
}

const DEFAULT_QUORUM: QuorumPolicy = Object.freeze({ required: 0, operations: Object.keys(GUARDED_OPERATIONS) as GuardedOperation[], ttlS: 86400 });
const META = 'quorum_policy';

export interface ApprovalInfo {
  readonly id: string;
  readonly operation: string;
  readonly params: Record<string, unknown>;
  readonly requester: string;
  /** Internal: the requester's principal id (not part of the API view). */
  readonly requesterId: string;
  readonly required: number;
  /** Roles any of which an approver must hold. */
  readonly approverRoles: readonly Role[];
  /** Internal: the stored approver rule. */
  readonly rule: ApproverRule;
  readonly approvals: readonly { name: string; at: string }[];
  readonly state: ApprovalRow['state'];
  readonly createdAt: string;
  readonly expiresAt: string;
  readonly decidedAt: string | null;
  readonly result: unknown;
}

export interface Quorum {
  policy(): Promise<QuorumPolicy>;
  /** Validates a policy; storing it goes through the guarded operation 'quorum.set'. */
  checkPolicy(p: unknown): QuorumPolicy;
  setPolicy(actor: Principal, p: QuorumPolicy): Promise<QuorumPolicy>;
  /** Whether this operation needs approval now under the policy alone. */
  needsApproval(operation: GuardedOperation): Promise<boolean>;
  /**
   * Approvals this operation needs now: the policy's (an undo counts as the
   * operation it undoes), raised to 1 when the separation-of-duties floor
   * applies (outside keyhaven dev).
   */
  requirement(operation: ApprovableOperation, floor: boolean): Promise<number>;
  request(actor: Principal, operation: ApprovableOperation, params: Record<string, unknown>, opts?: { required?: number; rule?: Partial<ApproverRule> }): Promise<ApprovalInfo>;
  /** Keeps a request's secret input (a password hash) sealed until execution. */
  stashInput(id: string, value: string): Promise<void>;
  /** Reads and deletes a request's secret input. */
  takeInput(id: string): Promise<string | undefined>;
  /** Adds an approval; when it is the last one needed, the request becomes 'approved' and is returned for execution. */
  approve(actor: Principal, id: string): Promise<{ info: ApprovalInfo; ready: boolean }>;
  deny(actor: Principal, id: string): Promise<ApprovalInfo>;
  /**
   * Keeps a secret an approved request produced (a new API key) for its
   * requester, sealed by the barrier, until collected once.
   */
  stashSecret(id: string, secret: string): Promise<void>;
  /** Hands the requester the stashed secret and deletes it. */
  collectSecret(actor: Principal, id: string): Promise<string>;
  /** Records the outcome of executing an approved request. */
  finish(id: string, outcome: { ok: true; result: unknown } | { ok: false; code: string }): Promise<ApprovalInfo>;
  list(state?: ApprovalRow['state']): Promise<ApprovalInfo[]>;
  get(id: string): Promise<ApprovalInfo>;
  /** Marks pending requests past their expiry as expired; returns how many. */
  expire(now: Date): Promise<number>;
}

function ruleOf(operation: string, stored: unknown): ApproverRule {
  const o = (stored ?? {}) as Partial<ApproverRule>;
  return { roles: o.roles ?? DEFAULT_APPROVERS[operation as ApprovableOperation] ?? [], exclude: o.exclude ?? [], targetId: o.targetId };
}

function toInfo(r: ApprovalRow): ApprovalInfo {
  const { [RULE_KEY]: stored, ...params } = JSON.parse(r.params) as Record<string, unknown>;
  const rule = ruleOf(r.operation, stored);
  return {
    id: r.id,
    operation: r.operation,
    params,
    requester: r.requester_name,
    requesterId: r.requester_id,
    required: r.required,
    approverRoles: rule.roles,
    rule,
    approvals: (JSON.parse(r.approvals) as { id: string; name: string; at: string }[]).map(({ name, at }) => ({ name, at })),
    state: r.state,
    createdAt: r.created_at,
    expiresAt: r.expires_at,
    decidedAt: r.decided_at,
    result: r.result === null ? null : (JSON.parse(r.result) as unknown),
  };
}

export function createQuorum(deps: { store: Store; audit: AuditLog; barrier: Barrier; singlePersonDev?: boolean }): Quorum {
  const { store, audit, barrier } = deps;
  const secretPath = (id: string) => `approvals/${id}/secret`;
  const inputPath = (id: string) => `approvals/${id}/input`;

  const checkPolicy = (p: unknown): QuorumPolicy => {
    const o = p as Partial<QuorumPolicy> | null;
    if (!o || typeof o !== 'object') throw new KeyhavenError('invalid_argument', 'a quorum policy is an object {required, operations, ttlS}');
    const required = o.required;
    if (!Number.isInteger(required) || required! < 0 || required! > 16) throw new KeyhavenError('invalid_argument', 'required must be an integer from 0 to 16');
    const operations = o.operations ?? DEFAULT_QUORUM.operations;
    if (!Array.isArray(operations)) throw new KeyhavenError('invalid_argument', 'operations must be a list');
    for (const op of operations) {
      if (!(op in GUARDED_OPERATIONS)) throw new KeyhavenError('invalid_argument', `unknown operation ${JSON.stringify(op)} (known: ${Object.keys(GUARDED_OPERATIONS).join(', ')})`);
    }
    const ttlS = o.ttlS ?? DEFAULT_QUORUM.ttlS;
    if (!Number.isInteger(ttlS) || ttlS < 60 || ttlS > 30 * 86400) throw new KeyhavenError('invalid_argument', 'ttlS must be between 60 seconds and 30 days');
    return { required: required!, operations: [...new Set(operations)], ttlS };
  };

  const policy = async (): Promise<QuorumPolicy> => {
    const raw = await store.getMeta(META);
    return raw === undefined ? DEFAULT_QUORUM : checkPolicy(JSON.parse(raw));
  };

  const eligible = (actor: Principal, row: ApprovalRow): boolean => {
    const { rule } = toInfo(row);
    return actor.kind === 'user' && rule.roles.some((r) => actor.roles.includes(r)) && !rule.exclude.includes(actor.id);
  };
  const needs = (row: ApprovalRow): string => {
    const { rule } = toInfo(row);
    return `${rule.roles.join(' or ')} role${rule.exclude.length ? ', and not being the person it is about' : ''}`;
  };

  // A request an app files (recovery.start) is the app's: whoever made the app
  // or issued its current API key can act as it, so their approval would be
  // the requester approving itself. Read at approval time, not at filing: a
  // rotation in between moves the key to another person.
  const refuseCredentialHolder = async (s: Store, actor: Principal, row: ApprovalRow): Promise<void> => {
    if (PERFORMER[row.operation as ApprovableOperation] !== 'app') return;
    const app = await s.findPrincipalById(row.requester_id);
    if (app === undefined) return; // executeApproved refuses a requester that is gone
    if (app.created_by === actor.id) {
      throw new KeyhavenError('permission_denied', `you created app "${app.name}" and so received its credentials: another admin must approve its ${row.operation}`);
    }
    if (app.key_issued_by === actor.id) {
      throw new KeyhavenError('permission_denied', `you issued app "${app.name}"'s current API key and so hold it: another admin must approve its ${row.operation}`);
    }
  };

  const load = async (s: Store, id: string): Promise<ApprovalRow> => {
    const row = /^[0-9a-f]{16}$/.test(id) ? await s.findApproval(id) : undefined;
    if (!row) throw new KeyhavenError('not_found', `approval request "${id}" does not exist`);
    return row;
  };

  const expireRow = async (s: Store, row: ApprovalRow, now: Date): Promise<boolean> => {
    if (row.state !== 'pending' || Date.parse(row.expires_at) > now.getTime()) return false;
    await s.updateApproval(row.id, { state: 'expired', decided_at: now.toISOString() });
    await barrier.delete(s, inputPath(row.id));
    await audit.recordIn(s, { actor: 'system:quorum', operation: 'approval.expire', result: 'ok', details: { approval: row.id, operation: row.operation } });
    return true;
  };

  return {
    policy,
    checkPolicy,

    async setPolicy(actor, p) {
      const checked = checkPolicy(p);
      await store.transaction(async (tx) => {
        await tx.setMeta(META, JSON.stringify(checked));
        await audit.recordIn(tx, { actor: actorName(actor), operation: 'quorum.set', result: 'ok', details: { required: checked.required, operations: checked.operations.join(','), ttlS: checked.ttlS } });
      });
      return checked;
    },

    async needsApproval(operation) {
      const p = await policy();
      return p.required > 0 && p.operations.includes(operation);
    },

    async requirement(operation, floor) {
      const p = await policy();
      const listed = (UNDO_OPERATIONS as Record<string, GuardedOperation>)[operation] ?? operation;
      const base = p.operations.includes(listed as GuardedOperation) ? p.required : 0;
      return floor && !deps.singlePersonDev ? Math.max(base, 1) : base;
    },

    async request(actor, operation, params, opts = {}) {
      const p = await policy();
      const rule = { ...ruleOf(operation, undefined), ...opts.rule };
      const now = new Date();
      const row: ApprovalRow = {
        id: randomBytes(8).toString('hex'),
        operation,
        params: JSON.stringify({ ...params, [RULE_KEY]: rule }),
        requester_id: actor.id,
        requester_name: actorName(actor),
        required: opts.required ?? p.required,
        approvals: '[]',
        state: 'pending',
        created_at: now.toISOString(),
        expires_at: new Date(now.getTime() + p.ttlS * 1000).toISOString(),
        decided_at: null,
        result: null,
      };
      await store.transaction(async (tx) => {
        await tx.insertApproval(row);
        await audit.recordIn(tx, { actor: actorName(actor), operation: 'approval.request', keyName: typeof params.key === 'string' ? params.key : undefined, result: 'ok', details: { approval: row.id, operation } });
      });
      return toInfo(row);
    },

    async approve(actor, id) {
      const now = new Date();
      let expired = false;
      const out = await store.transaction(async (tx) => {
        const row = await load(tx, id);
        if (await expireRow(tx, row, now)) {
          expired = true;
          return undefined;
        }
        if (row.state !== 'pending') throw new KeyhavenError('failed_precondition', `approval request ${id} is ${row.state}, not pending`);
        if (row.requester_id === actor.id) throw new KeyhavenError('permission_denied', 'nobody approves their own request');
        if (!eligible(actor, row)) throw new KeyhavenError('permission_denied', `approving ${row.operation} needs the ${needs(row)}`);
        await refuseCredentialHolder(tx, actor, row);
        const approvals = JSON.parse(row.approvals) as { id: string; name: string; at: string }[];
        if (approvals.some((a) => a.id === actor.id)) throw new KeyhavenError('already_exists', 'you have already approved this request');
        approvals.push({ id: actor.id, name: actorName(actor), at: now.toISOString() });
        const ready = approvals.length >= row.required;
        const patch: Partial<ApprovalRow> = { approvals: JSON.stringify(approvals), ...(ready ? { state: 'approved' as const, decided_at: now.toISOString() } : {}) };
        await tx.updateApproval(id, patch);
        await audit.recordIn(tx, { actor: actorName(actor), operation: 'approval.approve', result: 'ok', details: { approval: id, operation: row.operation, approvals: approvals.length, required: row.required } });
        return { info: toInfo({ ...row, ...patch }), ready };
      });
      if (expired || !out) throw new KeyhavenError('failed_precondition', `approval request ${id} has expired`);
      return out;
    },

    async deny(actor, id) {
      return store.transaction(async (tx) => {
        const row = await load(tx, id);
        if (row.state !== 'pending') throw new KeyhavenError('failed_precondition', `approval request ${id} is ${row.state}, not pending`);
        if (row.requester_id !== actor.id && !eligible(actor, row)) throw new KeyhavenError('permission_denied', `denying ${row.operation} needs the ${needs(row)}`);
        const patch = { state: 'denied' as const, decided_at: new Date().toISOString() };
        await tx.updateApproval(id, patch);
        await barrier.delete(tx, inputPath(id));
        await audit.recordIn(tx, { actor: actorName(actor), operation: 'approval.deny', result: 'ok', details: { approval: id, operation: row.operation } });
        return toInfo({ ...row, ...patch });
      });
    },

    async stashSecret(id, secret) {
      await barrier.put(store, secretPath(id), Buffer.from(secret, 'utf8'));
    },

    async stashInput(id, value) {
      await barrier.put(store, inputPath(id), Buffer.from(value, 'utf8'));
    },

    async takeInput(id) {
      const v = await barrier.get(store, inputPath(id));
      if (v) await barrier.delete(store, inputPath(id));
      return v?.toString('utf8');
    },

    async collectSecret(actor, id) {
      return store.transaction(async (tx) => {
        const row = await load(tx, id);
        if (row.requester_id !== actor.id) throw new KeyhavenError('permission_denied', 'only the requester collects the result of a request');
        const secret = await barrier.get(tx, secretPath(id));
        if (!secret) throw new KeyhavenError('not_found', `request ${id} has nothing to collect (not executed yet, or collected already)`);
        await barrier.delete(tx, secretPath(id));
        await audit.recordIn(tx, { actor: actorName(actor), operation: 'approval.collect', result: 'ok', details: { approval: id, operation: row.operation } });
        return secret.toString('utf8');
      });
    },

    async finish(id, outcome) {
      const patch: Partial<ApprovalRow> = outcome.ok ? { state: 'executed', result: JSON.stringify(outcome.result ?? null) } : { state: 'failed', result: JSON.stringify({ error: outcome.code }) };
      await store.updateApproval(id, patch);
      return toInfo({ ...(await load(store, id)), ...patch });
    },

    async list(state) {
      await this.expire(new Date());
      return (await store.listApprovals(state)).map(toInfo);
    },

    async get(id) {
      return toInfo(await load(store, id));
    },

    async expire(now) {
      let n = 0;
      for (const row of await store.listApprovals('pending')) {
        if (Date.parse(row.expires_at) > now.getTime()) continue;
        if (await store.transaction(async (tx) => expireRow(tx, (await tx.findApproval(row.id))!, now))) n += 1;
      }
      return n;
    },
  };
}
