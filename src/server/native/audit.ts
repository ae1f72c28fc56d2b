import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { RouteDeps } from '../route-deps.js';

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

  const hex64 = z.string().regex(/^[0-9a-f]{64}$/, 'must be 64 lower-case hex digits');
  const checkpoint = z.strictObject({
    v: z.literal(1),
    store: z.string().regex(/^[0-9a-f]{1,64}$/, 'must be a store id'),
    seq: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER),
    hash: hex64,
    time: z.string().max(40).refine((t) => !Number.isNaN(Date.parse(t)), 'must be an ISO 8601 time'),
    prev: hex64,
    mac: hex64,
  });
  const failure = z.object({ at: z.string(), seq: z.number(), problem: z.string(), reason: z.string() });

  r.post('/v1/audit/verify', {
    config: { op: 'audit.verify', access: auditor },
    schema: {
      tags,
      summary: 'Verify the chain against checkpoints from a witness (a checkpoint file or audit sink): it must reach and match every one',
      body: z.strictObject({
        checkpoints: z.array(checkpoint).min(1).max(MAX_CHECKPOINTS),
        // Where each checkpoint was read (e.g. file:line), echoed in failures.
        at: z.array(z.string().min(1).max(1024)).max(MAX_CHECKPOINTS).optional(),
      }).refine((b) => b.at === undefined || b.at.length === b.checkpoints.length, 'at must have one entry per checkpoint'),
      response: {
        200: z.object({
          ok: z.boolean(),
          records: z.number(),
          firstBroken: z.object({ seq: z.number(), reason: z.string() }).optional(),
          witness: z.object({
            checkpoints: z.number(),
            records: z.number(),
            newest: z.object({ seq: z.number(), time: z.string(), at: z.string() }).optional(),
            failures: z.array(failure),
            failureCount: z.number(),
          }),
        }),
      },
    },
  }, async (req) => {
    core.services();
    await core.audit.flush();
    const { checkpoints, at } = req.body;
    const res = await core.audit.verifyWitness({ checkpoints: checkpoints.map((value, i) => ({ at: at?.[i] ?? `#${i + 1}`, value })) });
    req.auditNote.details.ok = res.ok;
    req.auditNote.details.checkpoints = checkpoints.length;
    return res as never;
  });
}

/** Per request; a longer witness is sent in several requests (the CLI does). */
const MAX_CHECKPOINTS = 1000;
