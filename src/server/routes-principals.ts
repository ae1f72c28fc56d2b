import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { ADMIN_ROLES, parseRoles } from '../access/roles.js';
import { KeyhavenError } from '../errors.js';
import type { RouteDeps } from './app.js';
import { principalOf } from './context.js';
import { guarded } from './guard.js';
import { approvalAccepted, errorResponse, keyNameParam, operationEnum, principalInfo, principalNameParam, roleEnum } from './schemas.js';

const principalName = principalNameParam.shape.name;

export function registerPrincipalRoutes(app: FastifyInstance, { core }: RouteDeps): void {
  const r = app.withTypeProvider<ZodTypeProvider>();
  const secAdmin = { roles: ['security-admin'] } as const;

  r.get('/v1/users', {
    config: { op: 'user.list', access: secAdmin },
    schema: { tags: ['users'], summary: 'List users and their roles', response: { 200: z.object({ users: z.array(principalInfo) }) } },
  }, async () => ({ users: await core.services().access.list('user') }) as never);

  r.post('/v1/users', {
    config: { op: 'user.create', access: secAdmin },
    schema: {
      tags: ['users'],
      summary: 'Create a user; admin roles go through the quorum policy when one applies',
      body: z.strictObject({ name: principalName, password: z.string().min(12, 'must have at least 12 characters').max(1024), roles: z.array(roleEnum).max(3).default([]) }),
      response: { 200: principalInfo, 202: approvalAccepted.extend({ user: principalInfo }), 409: errorResponse },
    },
  }, async (req, reply) => {
    const s = core.services();
    const p = principalOf(req);
    const roles = parseRoles(req.body.roles);
    const admin = roles.filter((x) => ADMIN_ROLES.has(x));
    if (admin.length > 0 && (await s.quorum.needsApproval('admin.add'))) {
      // The account is made now without admin roles; the roles wait for approval.
      const user = await s.access.createUser(p, { name: req.body.name, password: req.body.password, roles: roles.filter((x) => !ADMIN_ROLES.has(x)) });
      const out = (await guarded(s, req, reply, 'admin.add', { user: req.body.name, roles })) as { approval: unknown };
      return { ...out, user } as never;
    }
    return (await s.access.createUser(p, { name: req.body.name, password: req.body.password, roles })) as never;
  });

  r.put('/v1/users/:name/roles', {
    config: { op: 'user.roles', access: secAdmin },
    schema: {
      tags: ['users'],
      summary: 'Replace a user\'s roles (never your own); adding or removing an admin role may need approval',
      params: principalNameParam,
      body: z.strictObject({ roles: z.array(roleEnum).max(3) }),
      response: { 200: principalInfo, 202: approvalAccepted, 403: errorResponse, 404: errorResponse },
    },
  }, async (req, reply) => {
    const s = core.services();
    const p = principalOf(req);
    const target = await s.access.get(req.params.name);
    if (target.kind !== 'user') throw new KeyhavenError('invalid_argument', `"${req.params.name}" is an app; apps hold key grants, not roles`);
    if (target.name === p.name) throw new KeyhavenError('permission_denied', 'nobody changes their own roles; ask another security-admin');
    const roles = parseRoles(req.body.roles);
    const before = new Set(target.roles.filter((x) => ADMIN_ROLES.has(x)));
    const after = new Set(roles.filter((x) => ADMIN_ROLES.has(x)));
    const adds = [...after].some((x) => !before.has(x));
    const removes = [...before].some((x) => !after.has(x));
    const op = adds ? 'admin.add' : removes ? 'admin.remove' : undefined;
    if (op) return guarded(s, req, reply, op, { user: req.params.name, roles }) as never;
    return (await s.access.setRoles(p, req.params.name, roles)) as never;
  });

  // Sign-in throttling: clears every failure counter and lock on a user's name, from every source.
  r.post('/v1/users/:name/unlock', {
    config: { op: 'user.unlock', access: secAdmin },
    schema: {
      tags: ['users'],
      summary: 'Clear a user\'s sign-in failure counters and locks, from every source address',
      params: principalNameParam,
      body: z.strictObject({}).optional(),
      response: { 200: z.object({ name: z.string(), cleared: z.number().int() }), 404: errorResponse },
    },
  }, async (req) => {
    req.auditNote.details.user = req.params.name;
    const out = await core.services().access.unlock(principalOf(req), req.params.name);
    req.auditNote.details.cleared = out.cleared;
    return out;
  });

  r.get('/v1/apps', {
    config: { op: 'app.list', access: secAdmin },
    schema: { tags: ['apps'], summary: 'List apps and their key grants', response: { 200: z.object({ apps: z.array(principalInfo) }) } },
  }, async () => ({ apps: await core.services().access.list('app') }) as never);

  r.post('/v1/apps', {
    config: { op: 'app.create', access: secAdmin },
    schema: {
      tags: ['apps'],
      summary: 'Create an app (a workload such as a cluster\'s plugin); its API key is shown once',
      body: z.strictObject({
        name: principalName,
        description: z.string().max(256).optional(),
        certFingerprint: z.string().max(100).optional().describe('SHA-256 of a client certificate (hex) for mTLS'),
      }),
      response: { 200: z.object({ app: principalInfo, apiKey: z.string() }), 409: errorResponse },
    },
  }, async (req) => (await core.services().access.createApp(principalOf(req), req.body)) as never);

  r.post('/v1/apps/:name/rotate-key', {
    config: { op: 'app.rotate-key', access: secAdmin },
    schema: {
      tags: ['apps'],
      summary: 'Issue a new API key (shown once); the previous one stops working. Under a quorum policy the requester collects the key once approved',
      params: principalNameParam,
      body: z.strictObject({}).optional(),
      response: { 200: z.object({ apiKey: z.string() }), 202: approvalAccepted, 404: errorResponse },
    },
  }, async (req, reply) => {
    const s = core.services();
    req.auditNote.details.app = req.params.name;
    const target = await s.access.get(req.params.name);
    if (target.kind !== 'app') throw new KeyhavenError('invalid_argument', `"${req.params.name}" is a user, not an app`);
    return guarded(s, req, reply, 'app.rotate-key', { app: req.params.name }) as never;
  });

  const grantParams = z.strictObject({ name: principalName, key: keyNameParam.shape.name });
  const grant = z.object({ key: z.string(), operations: z.array(operationEnum), createdAt: z.string(), createdBy: z.string() });
  r.put('/v1/apps/:name/grants/:key', {
    config: { op: 'app.grant', access: secAdmin },
    schema: {
      tags: ['apps'],
      summary: 'Grant an app crypto operations on a key (may need approval)',
      params: grantParams,
      body: z.strictObject({ operations: z.array(operationEnum).min(1).max(4) }),
      response: { 200: grant, 202: approvalAccepted, 404: errorResponse },
    },
  }, async (req, reply) => {
    const s = core.services();
    req.auditNote.keyName = req.params.key;
    req.auditNote.details.app = req.params.name;
    await s.keys.get(req.params.key);
    const target = await s.access.get(req.params.name);
    if (target.kind !== 'app') throw new KeyhavenError('invalid_argument', `"${req.params.name}" is a user; key grants are for apps (users hold roles, so nobody manages and uses one key)`);
    return guarded(s, req, reply, 'app.grant', { app: req.params.name, key: req.params.key, operations: req.body.operations }) as never;
  });

  r.delete('/v1/apps/:name/grants/:key', {
    config: { op: 'app.revoke', access: secAdmin },
    schema: { tags: ['apps'], summary: 'Revoke an app\'s grant on a key', params: grantParams, response: { 200: z.object({ ok: z.literal(true) }), 404: errorResponse } },
  }, async (req) => {
    req.auditNote.keyName = req.params.key;
    req.auditNote.details.app = req.params.name;
    await core.services().access.revokeGrant(principalOf(req), req.params.name, req.params.key);
    return { ok: true as const };
  });
}
