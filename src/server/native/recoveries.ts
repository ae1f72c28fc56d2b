import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { KeyhavenError } from '../../errors.js';
import type { RouteDeps } from '../route-deps.js';
import { principalOf } from '../pipeline/context.js';
import { guarded } from '../guard.js';
import { approvalInfo, errorResponse } from '../schemas.js';
import { clusterName } from './clusters.js';

// Break-glass recovery: an app reading a cluster's etcd backup opens a
// recovery (audited, with its reason; under a quorum policy covering
// recovery.start, only once approved) and names it in x-keyhaven-recovery on
// each decrypt. A break-glass app decrypts only that way (pipeline/context.ts).

const idParam = z.strictObject({ id: z.string().regex(/^[0-9a-f]{16}$/, 'must be a recovery id (16 hex digits)') });

const recoveryInfo = z.object({
  id: z.string(),
  app: z.string(),
  reason: z.string(),
  cluster: z.string().nullable(),
  state: z.enum(['pending', 'open', 'expired', 'closed']),
  approval: z.string().nullable().describe('the approval request it waits for (under a quorum policy)'),
  createdAt: z.string(),
  openedAt: z.string().nullable(),
  expiresAt: z.string().nullable().describe('decryption in this recovery stops then (one hour after it opens)'),
  closedAt: z.string().nullable(),
  closedBy: z.string().nullable(),
  objects: z.number().nullable(),
  failed: z.number().nullable(),
});

const count = z.number().int('must be a whole number').min(0, 'must not be negative').max(Number.MAX_SAFE_INTEGER);

export function registerRecoveryRoutes(app: FastifyInstance, { core }: RouteDeps): void {
  const r = app.withTypeProvider<ZodTypeProvider>();
  const tags = ['recoveries'];
  const readers = ['security-admin', 'key-admin', 'auditor'] as const;

  r.post('/v1/recoveries', {
    config: { op: 'recovery.start', access: { apps: 'granted' } },
    schema: {
      tags,
      summary: 'Open a recovery for the calling app (reading a backup), with its reason; under a quorum policy covering recovery.start it opens once approved. The app must hold a decrypt grant, and at most 3 of its recoveries may be pending or open',
      body: z.strictObject({
        reason: z.string().min(1, 'must not be empty').max(500, 'must have at most 500 characters').describe('why the backup is read; kept in the audit log'),
        cluster: clusterName.optional().describe('the cluster whose backup is read'),
      }),
      response: { 201: recoveryInfo, 202: z.object({ approval: approvalInfo, recovery: recoveryInfo }), 403: errorResponse, 409: errorResponse },
    },
  }, async (req, reply) => {
    const s = core.services();
    const p = principalOf(req);
    const { reason, cluster } = req.body;
    Object.assign(req.auditNote.details, { reason, ...(cluster !== undefined ? { cluster } : {}) });
    const pending = (await s.quorum.requirement('recovery.start', false)) > 0;
    const rec = await s.recoveries.create(p, { reason, cluster }, pending);
    req.auditNote.details.recovery = rec.id;
    const out = await guarded<unknown>(s, req, reply, 'recovery.start', { app: p.name, recovery: rec.id, reason, ...(cluster !== undefined ? { cluster } : {}) }, { now: async () => rec });
    if (reply.statusCode === 202) {
      const { approval } = out as { approval: { id: string } };
      await s.recoveries.attachApproval(rec.id, approval.id);
      return { ...(out as object), recovery: { ...rec, approval: approval.id } } as never;
    }
    void reply.code(201);
    return rec as never;
  });

  r.get('/v1/recoveries', {
    config: { op: 'recovery.list', access: { roles: [...readers] } },
    schema: { tags, summary: 'List recoveries, newest first', response: { 200: z.object({ recoveries: z.array(recoveryInfo) }) } },
  }, async () => ({ recoveries: await core.services().recoveries.list() }) as never);

  r.get('/v1/recoveries/:id', {
    config: { op: 'recovery.read', access: { roles: [...readers], apps: 'granted' } },
    schema: { tags, summary: 'Read one recovery (an app: its own only), e.g. to learn whether it is open yet', params: idParam, response: { 200: recoveryInfo, 404: errorResponse } },
  }, async (req) => {
    const p = principalOf(req);
    req.auditNote.details.recovery = req.params.id;
    const rec = await core.services().recoveries.get(req.params.id).catch((e: unknown) => {
      throw p.kind === 'app' ? new KeyhavenError('not_found', `recovery "${req.params.id}" does not exist`) : e;
    });
    // An app learns nothing of other apps' recoveries: the same answer as a missing one.
    if (p.kind === 'app' && rec.app !== p.name) throw new KeyhavenError('not_found', `recovery "${req.params.id}" does not exist`);
    return rec as never;
  });

  r.post('/v1/recoveries/:id/close', {
    config: { op: 'recovery.close', access: { roles: ['security-admin', 'key-admin'], apps: 'granted' } },
    schema: {
      tags,
      summary: 'Close a recovery (its app when done, or an admin cutting it short); decryption in it stops',
      params: idParam,
      body: z.strictObject({ objects: count.optional().describe('objects recovered'), failed: count.optional().describe('objects that could not be decrypted') }).optional(),
      response: { 200: recoveryInfo, 403: errorResponse, 404: errorResponse, 409: errorResponse },
    },
  }, async (req) => {
    req.auditNote.details.recovery = req.params.id;
    const body = req.body ?? {};
    const rec = await core.services().recoveries.close(principalOf(req), req.params.id, body);
    if (body.objects !== undefined) req.auditNote.details.objects = body.objects;
    if (body.failed !== undefined) req.auditNote.details.failed = body.failed;
    return rec as never;
  });
}
