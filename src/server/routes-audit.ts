import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { RouteDeps } from './app.js';

const iso = z.string().regex(/^\d{4}-\d{2}-\d{2}(T[\d:.]+Z?)?$/, 'must be an ISO 8601 time such as 2026-01-31T12:00:00Z');

export function registerAuditRoutes(app: FastifyInstance, { core }: RouteDeps): void {
  const r = app.withTypeProvider<ZodTypeProvider>();
  const tags = ['audit'];
  const auditor = { roles: ['auditor'] } as const;

  r.get('/v1/audit', {
    config: { op: 'audit.read', access: auditor },
    schema: {
      tags,
      summary: 'Audit records as JSON lines, oldest first; page with `after` (the last seq seen)',
      querystring: z.strictObject({
        after: z.coerce.number().int().min(0).optional(),
        since: iso.optional(),
        until: iso.optional(),
        principal: z.string().max(80).optional().describe('e.g. user:alice or app:cluster-a'),
        key: z.string().max(128).optional(),
        operation: z.string().max(64).optional(),
        limit: z.coerce.number().int().min(1).max(10000).default(1000),
      }),
    },
  }, async (req, reply) => {
    core.services();
    const q = req.query;
    const rows = await core.store.queryAudit({ afterSeq: q.after, since: q.since, until: q.until, actor: q.principal, keyName: q.key, operation: q.operation, limit: q.limit });
    req.auditNote.details.records = rows.length;
    void reply.type('application/x-ndjson');
    return rows.map((row) => JSON.stringify(row)).join('\n') + (rows.length ? '\n' : '');
  });

  r.get('/v1/audit/verify', {
    config: { op: 'audit.verify', access: auditor },
    schema: {
      tags,
      summary: 'Verify the whole hash chain and its signed head',
      response: { 200: z.object({ ok: z.boolean(), records: z.number(), firstBroken: z.object({ seq: z.number(), reason: z.string() }).optional() }) },
    },
  }, async (req) => {
    core.services();
    // Records of requests answered so far are in; this request's own record follows the answer's check.
    await core.audit.flush();
    const res = await core.audit.verify();
    req.auditNote.details.ok = res.ok;
    return res as never;
  });
}
