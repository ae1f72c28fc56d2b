import type { FastifyReply, FastifyRequest } from 'fastify';
import { actorName, type Principal } from '../access/access.js';
import { GUARDED_OPERATIONS, type ApprovalInfo, type GuardedOperation, type QuorumPolicy } from '../access/quorum.js';
import { KeyhavenError } from '../errors.js';
import type { Services } from './core.js';
import { principalOf } from './context.js';
import { keyView } from './views.js';

// What each guarded operation does once approved. Parameters are stored in
// the approval request, so they hold names and settings only, never secrets.
type Executor = (s: Services, requester: Principal, params: Record<string, unknown>) => Promise<unknown>;

const str = (v: unknown): string => String(v);

const EXECUTORS: Record<GuardedOperation, Executor> = {
  'key.destroy': async (s, p, x) => keyView(await s.keys.scheduleDestroy(str(x.key), Number(x.pendingS), actorName(p))),
  'key.disable': async (s, p, x) => keyView(await s.keys.setEnabled(str(x.key), false, actorName(p))),
  'key.policy': async (s, p, x) =>
    keyView(await s.keys.setPolicy(str(x.key), { rotationPeriodS: x.rotationPeriodS as number | null | undefined, minDecryptionVersion: x.minDecryptionVersion as number | undefined }, actorName(p))),
  'app.grant': async (s, p, x) => s.access.setGrant(p, str(x.app), str(x.key), x.operations as string[]),
  'app.rotate-key': async (s, p, x) => s.access.rotateAppKey(p, str(x.app)),
  'admin.add': async (s, p, x) => s.access.setRoles(p, str(x.user), x.roles as string[]),
  'admin.remove': async (s, p, x) => s.access.setRoles(p, str(x.user), x.roles as string[]),
  'quorum.set': async (s, p, x) => s.quorum.setPolicy(p, x.policy as QuorumPolicy),
};

/**
 * Runs a guarded operation now, or, when the quorum policy covers it, files
 * an approval request and answers 202 with it.
 */
export async function guarded<T>(
  services: Services,
  req: FastifyRequest,
  reply: FastifyReply,
  op: GuardedOperation,
  params: Record<string, unknown>,
): Promise<T | { approval: ApprovalInfo }> {
  const p = principalOf(req);
  if (await services.quorum.needsApproval(op)) {
    const approval = await services.quorum.request(p, op, params);
    req.auditNote.details.approval = approval.id;
    req.auditNote.result = 'approval_requested';
    void reply.code(202);
    return { approval };
  }
  return (await EXECUTORS[op](services, p, params)) as T;
}

/** Executes an approved request as its requester, who must still hold the role. */
export async function executeApproved(services: Services, info: ApprovalInfo): Promise<ApprovalInfo> {
  const op = info.operation as GuardedOperation;
  const name = info.requester.replace(/^user:/, '');
  try {
    const row = await services.access.get(name);
    const role = GUARDED_OPERATIONS[op];
    if (!row.roles.includes(role)) throw new KeyhavenError('permission_denied', `the requester no longer holds the ${role} role`);
    const requester: Principal = { id: (await services.access.idOf(name))!, name, kind: 'user', roles: row.roles, via: 'system' };
    let result = await EXECUTORS[op](services, requester, info.params);
    if (op === 'app.rotate-key') {
      // The new key goes to the requester alone, once; the request keeps no copy.
      await services.quorum.stashSecret(info.id, (result as { apiKey: string }).apiKey);
      result = { collect: `POST /v1/approvals/${info.id}/collect` };
    }
    return await services.quorum.finish(info.id, { ok: true, result });
  } catch (e) {
    const code = e instanceof KeyhavenError ? e.code : 'internal';
    return services.quorum.finish(info.id, { ok: false, code });
  }
}
