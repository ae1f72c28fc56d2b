import type { FastifyReply, FastifyRequest } from 'fastify';
import { actorName, type Principal } from '../access/access.js';
import { PERFORMER, type ApprovableOperation, type ApprovalInfo, type ApproverRule, type QuorumPolicy } from '../access/quorum.js';
import { KeyhavenError } from '../errors.js';
import type { Services } from './core.js';
import { principalOf } from './pipeline/context.js';
import { keyView } from './views.js';

// What each approvable operation does once approved. Parameters are stored in
// the approval request, so they hold names and settings only, never secrets
// (a reset password's hash waits sealed beside the request, see stashInput).
type Executor = (s: Services, requester: Principal, params: Record<string, unknown>, info?: ApprovalInfo) => Promise<unknown>;

const str = (v: unknown): string => String(v);

const EXECUTORS: Record<ApprovableOperation, Executor> = {
  'key.destroy': async (s, p, x) => keyView(await s.keys.scheduleDestroy(str(x.key), Number(x.pendingS), actorName(p))),
  'key.disable': async (s, p, x) => keyView(await s.keys.setEnabled(str(x.key), false, actorName(p))),
  'key.enable': async (s, p, x) => keyView(await s.keys.setEnabled(str(x.key), true, actorName(p))),
  'key.destroy.cancel': async (s, p, x) => keyView(await s.keys.cancelDestroy(str(x.key), actorName(p))),
  'key.policy': async (s, p, x) =>
    keyView(await s.keys.setPolicy(str(x.key), { rotationPeriodS: x.rotationPeriodS as number | null | undefined, minDecryptionVersion: x.minDecryptionVersion as number | undefined }, actorName(p))),
  'app.grant': async (s, p, x) => s.access.setGrant(p, str(x.app), str(x.key), x.operations as string[]),
  'app.rotate-key': async (s, p, x) => s.access.rotateAppKey(p, str(x.app)),
  'admin.add': async (s, p, x, i) => s.access.setRoles(p, str(x.user), x.roles as string[], i?.rule.targetId),
  'admin.remove': async (s, p, x, i) => s.access.setRoles(p, str(x.user), x.roles as string[], i?.rule.targetId),
  'quorum.set': async (s, p, x) => s.quorum.setPolicy(p, x.policy as QuorumPolicy),
  'recovery.start': async (s, p, x) => s.recoveries.open(p, str(x.recovery)),
  'user.reset-password': async (s, p, x, i) => {
    const hash = i ? await s.quorum.takeInput(i.id) : undefined;
    if (!hash) throw new KeyhavenError('failed_precondition', 'the new password of this request is gone');
    return s.access.resetPassword(p, str(x.user), hash, i?.rule.targetId);
  },
};

export interface GuardOptions {
  /** The separation-of-duties floor applies: at least one approval even when the policy asks none (outside keyhaven dev). */
  readonly floor?: boolean;
  /** Who may approve, when not the operation's default. */
  readonly rule?: Partial<ApproverRule>;
  /** A secret input (a password hash) the executor needs; kept sealed, never in the params. */
  readonly input?: string;
  /** Runs the operation when no approval is needed (default: the executor). */
  readonly now?: () => Promise<unknown>;
}

/**
 * Runs an approvable operation now, or, when the quorum policy or the
 * separation-of-duties floor asks for approval, files a request and answers
 * 202 with it.
 */
export async function guarded<T>(
  services: Services,
  req: FastifyRequest,
  reply: FastifyReply,
  op: ApprovableOperation,
  params: Record<string, unknown>,
  opts: GuardOptions = {},
): Promise<T | { approval: ApprovalInfo }> {
  const p = principalOf(req);
  const required = await services.quorum.requirement(op, opts.floor === true);
  if (required > 0) {
    const approval = await services.quorum.request(p, op, params, { required, ...(opts.rule ? { rule: opts.rule } : {}) });
    if (opts.input !== undefined) await services.quorum.stashInput(approval.id, opts.input);
    req.auditNote.details.approval = approval.id;
    req.auditNote.result = 'approval_requested';
    void reply.code(202);
    return { approval };
  }
  if (opts.now) return (await opts.now()) as T;
  return (await EXECUTORS[op](services, p, params)) as T;
}

/**
 * Executes an approved request as its requester, after checking again what
 * could have changed since it was filed: the requester is the same person,
 * still active, still holding the role (rule checks such as "no user holds
 * both admin roles" run again inside the operation).
 */
export async function executeApproved(services: Services, info: ApprovalInfo): Promise<ApprovalInfo> {
  const op = info.operation as ApprovableOperation;
  const name = info.requester.replace(/^(user|app):/, '');
  try {
    const exec = EXECUTORS[op];
    if (!exec) throw new KeyhavenError('failed_precondition', `unknown operation ${op}`);
    const row = await services.access.get(name);
    const id = await services.access.idOf(name);
    if (id !== info.requesterId) throw new KeyhavenError('permission_denied', 'the requester no longer exists');
    if (row.state !== 'active') throw new KeyhavenError('permission_denied', 'the requester is disabled');
    const role = PERFORMER[op];
    if (role === 'app' ? row.kind !== 'app' : !row.roles.includes(role)) throw new KeyhavenError('permission_denied', role === 'app' ? 'the requester is no longer an app' : `the requester no longer holds the ${role} role`);
    const requester: Principal = { id, name, kind: row.kind, roles: row.roles, via: 'system' };
    let result = await exec(services, requester, info.params, info);
    if (op === 'app.rotate-key') {
      // The new key goes to the requester alone, once; the request keeps no copy.
      await services.quorum.stashSecret(info.id, (result as { apiKey: string }).apiKey);
      result = { collect: `POST /v1/approvals/${info.id}/collect` };
    }
    return await services.quorum.finish(info.id, { ok: true, result });
  } catch (e) {
    const code = e instanceof KeyhavenError ? e.code : 'internal';
    if (op === 'user.reset-password') await services.quorum.takeInput(info.id).catch(() => undefined);
    return services.quorum.finish(info.id, { ok: false, code });
  }
}

/**
 * Who may approve adding admin roles to a user: an active user other than
 * the requester and the target holding the role being added; when nobody
 * else holds it, any other admin.
 */
export async function adminApprovers(services: Services, requester: Principal, targetId: string | undefined, roles: readonly ('security-admin' | 'key-admin')[]): Promise<Partial<ApproverRule>> {
  const exclude = [requester.id, ...(targetId ? [targetId] : [])];
  const want: ('security-admin' | 'key-admin')[] = [];
  for (const role of roles) {
    if ((await services.access.activeHolders(role)).some((h) => !exclude.includes(h.id))) want.push(role);
  }
  return { roles: want.length > 0 ? want : ['security-admin', 'key-admin'], exclude: targetId ? [targetId] : [], targetId };
}
