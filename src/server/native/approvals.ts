import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { RouteDeps } from '../route-deps.js';
import { principalOf } from '../pipeline/context.js';
import { executeApproved } from '../guard.js';
import { approvalInfo, errorResponse } from '../schemas.js';

const idParam = z.strictObject({ id: z.string().regex(/^[0-9a-f]{16}$/, 'must be an approval request id (16 hex digits)') });

export function registerApprovalRoutes(app: FastifyInstance, { core }: RouteDeps): void {
  const r = app.withTypeProvider<ZodTypeProvider>();
  const tags = ['approvals'];
  const admins = { roles: ['security-admin', 'key-admin'] } as const;

  r.get('/v1/approvals', {
    config: { op: 'approval.list', access: { roles: ['security-admin', 'key-admin', 'auditor'] } },
    schema: {
      tags,
      summary: 'List approval requests',
      querystring: z.strictObject({ state: z.enum(['pending', 'approved', 'executed', 'failed', 'denied', 'expired']).optional() }),
      response: { 200: z.object({ approvals: z.array(approvalInfo) }) },
    },
  }, async (req) => ({ approvals: await core.services().quorum.list(req.query.state) }) as never);

  r.get('/v1/approvals/:id', {
    config: { op: 'approval.read', access: { roles: ['security-admin', 'key-admin', 'auditor'] } },
    schema: { tags, summary: 'Read one approval request', params: idParam, response: { 200: approvalInfo, 404: errorResponse } },
  }, async (req) => core.services().quorum.get(req.params.id) as never);

  r.post('/v1/approvals/:id/approve', {
    config: { op: 'approval.approve', access: admins },
    schema: {
      tags,
      summary: 'Approve a request (not your own); the last approval needed executes it',
      params: idParam,
      body: z.strictObject({}).optional(),
      response: { 200: approvalInfo, 403: errorResponse, 409: errorResponse },
    },
  }, async (req) => {
    const s = core.services();
    req.auditNote.details.approval = req.params.id;
    const { info, ready } = await s.quorum.approve(principalOf(req), req.params.id);
    if (!ready) return info as never;
    const done = await executeApproved(s, info);
    req.auditNote.details.executed = done.state;
    return done as never;
  });

  r.post('/v1/approvals/:id/collect', {
    config: { op: 'approval.collect', access: admins },
    schema: {
      tags,
      summary: 'The requester collects, once, the secret an executed request produced (a rotated app API key)',
      params: idParam,
      body: z.strictObject({}).optional(),
      response: { 200: z.object({ apiKey: z.string() }), 403: errorResponse, 404: errorResponse },
    },
  }, async (req) => {
    req.auditNote.details.approval = req.params.id;
    return { apiKey: await core.services().quorum.collectSecret(principalOf(req), req.params.id) };
  });

  r.post('/v1/approvals/:id/deny', {
    config: { op: 'approval.deny', access: admins },
    schema: { tags, summary: 'Deny a pending request (the requester may withdraw it the same way)', params: idParam, body: z.strictObject({}).optional(), response: { 200: approvalInfo, 403: errorResponse, 409: errorResponse } },
  }, async (req) => {
    req.auditNote.details.approval = req.params.id;
    return (await core.services().quorum.deny(principalOf(req), req.params.id)) as never;
  });
}
