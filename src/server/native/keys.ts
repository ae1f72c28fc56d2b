import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { actorName } from '../../access/access.js';
import { KeyhavenError } from '../../errors.js';
import type { RouteDeps } from '../route-deps.js';
import { principalOf, visibleKey } from '../pipeline/context.js';
import { guarded } from '../guard.js';
import { approvalAccepted, emptyBody, errorResponse, keyInfo, keyNameParam, periodString } from '../schemas.js';
import { keyView, parsePeriodS } from '../views.js';

export function registerKeyRoutes(app: FastifyInstance, { core, destroyPendingS }: RouteDeps): void {
  const r = app.withTypeProvider<ZodTypeProvider>();
  const tags = ['keys'];
  const admin = { roles: ['key-admin'] } as const;
  const keyOrApproval = { 200: keyInfo, 202: approvalAccepted, 404: errorResponse, 409: errorResponse };

  r.get('/v1/keys', {
    config: { op: 'key.list', access: { roles: ['key-admin', 'security-admin', 'auditor'] } },
    schema: { tags, summary: 'List keys (metadata only)', response: { 200: z.object({ keys: z.array(keyInfo) }) } },
  }, async () => ({ keys: (await core.services().keys.list()).map(keyView) }));

  r.post('/v1/keys', {
    config: { op: 'key.create', access: admin },
    schema: {
      tags,
      summary: 'Create a key (AES-256-GCM, version 1)',
      body: z.strictObject({ name: keyNameParam.shape.name, rotationPeriod: periodString.nullable().optional() }),
      response: { 200: keyInfo, 409: errorResponse },
    },
  }, async (req) => {
    const period = req.body.rotationPeriod ? parsePeriodS(req.body.rotationPeriod) : null;
    return keyView(await core.services().keys.create(req.body.name, actorName(principalOf(req)), { rotationPeriodS: period }));
  });

  r.get('/v1/keys/:name', {
    config: { op: 'key.read', access: { roles: ['key-admin', 'security-admin', 'auditor'], apps: 'granted' } },
    schema: { tags, summary: 'Read a key\'s metadata (there is no export)', params: keyNameParam, response: { 200: keyInfo, 404: errorResponse } },
  }, async (req) => {
    const name = req.params.name;
    return keyView(await visibleKey(core.services(), principalOf(req), name, () => new KeyhavenError('permission_denied', `no grant on key "${name}"`)));
  });

  r.post('/v1/keys/:name/rotate', {
    config: { op: 'key.rotate', access: admin },
    schema: { tags, summary: 'Add a new version and make it current', params: keyNameParam, body: emptyBody, response: { 200: keyInfo, 404: errorResponse, 409: errorResponse } },
  }, async (req) => {
    const k = await core.services().keys.rotate(req.params.name, actorName(principalOf(req)));
    req.auditNote.keyVersion = k.currentVersion;
    return keyView(k);
  });

  r.put('/v1/keys/:name/policy', {
    config: { op: 'key.policy', access: admin },
    schema: {
      tags,
      summary: 'Set automatic rotation and the minimum decryption version',
      params: keyNameParam,
      body: z.strictObject({ rotationPeriod: periodString.nullable().optional(), minDecryptionVersion: z.number().int().min(1).optional() }),
      response: keyOrApproval,
    },
  }, async (req, reply) => {
    const s = core.services();
    await s.keys.get(req.params.name);
    const params: Record<string, unknown> = { key: req.params.name };
    if (req.body.rotationPeriod !== undefined) params.rotationPeriodS = req.body.rotationPeriod === null ? null : parsePeriodS(req.body.rotationPeriod);
    if (req.body.minDecryptionVersion !== undefined) params.minDecryptionVersion = req.body.minDecryptionVersion;
    return guarded(s, req, reply, 'key.policy', params) as never;
  });

  const toggles = [
    ['disable', 'Stop new encryptions with the key (decryption continues)'],
    ['enable', 'Enable a disabled key (undoing a disable needs the approvals a disable needs)'],
  ] as const;
  for (const [verb, summary] of toggles) {
    const op = `key.${verb}` as const;
    r.post(`/v1/keys/:name/${verb}`, {
      config: { op, access: admin },
      schema: { tags, summary, params: keyNameParam, body: emptyBody, response: keyOrApproval },
    }, async (req, reply) => {
      const s = core.services();
      await s.keys.get(req.params.name);
      return guarded(s, req, reply, op, { key: req.params.name }) as never;
    });
  }

  r.post('/v1/keys/:name/destroy', {
    config: { op: 'key.destroy', access: admin },
    schema: {
      tags,
      summary: 'Schedule destruction of every version after a pending window; the key stops working at once',
      params: keyNameParam,
      body: z.strictObject({ pendingDays: z.number().min(0).max(365).optional() }).optional(),
      response: keyOrApproval,
    },
  }, async (req, reply) => {
    const s = core.services();
    await s.keys.get(req.params.name);
    const pendingS = req.body?.pendingDays !== undefined ? Math.round(req.body.pendingDays * 86400) : destroyPendingS;
    return guarded(s, req, reply, 'key.destroy', { key: req.params.name, pendingS }) as never;
  });

  r.post('/v1/keys/:name/cancel-destroy', {
    config: { op: 'key.destroy.cancel', access: admin },
    schema: { tags, summary: 'Cancel a scheduled destruction; the key comes back disabled (needs the approvals a destroy needs)', params: keyNameParam, body: emptyBody, response: keyOrApproval },
  }, async (req, reply) => {
    const s = core.services();
    await s.keys.get(req.params.name);
    return guarded(s, req, reply, 'key.destroy.cancel', { key: req.params.name }) as never;
  });
}
