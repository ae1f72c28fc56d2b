import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { hashNewPassword } from '../../access/access.js';
import { ADMIN_ROLES, checkRoleSet, parseRoles } from '../../access/roles.js';
import { KeyhavenError } from '../../errors.js';
import type { RouteDeps } from '../route-deps.js';
import { principalOf } from '../pipeline/context.js';
import { adminApprovers, guarded } from '../guard.js';
import { approvalAccepted, emptyBody, errorResponse, keyNameParam, operationEnum, principalInfo, principalNameParam, roleEnum } from '../schemas.js';

const principalName = principalNameParam.shape.name;

export function registerPrincipalRoutes(app: FastifyInstance, { core }: RouteDeps): void {
  const r = app.withTypeProvider<ZodTypeProvider>();
  const secAdmin = { roles: ['security-admin'] } as const;
  // Identities and their credentials are the security-admin's; who may use a key is the key-admin's.
  const keyAdmin = { roles: ['key-admin'] } as const;

  r.get('/v1/users', {
    config: { op: 'user.list', access: secAdmin },
    schema: { tags: ['users'], summary: 'List users and their roles', response: { 200: z.object({ users: z.array(principalInfo) }) } },
  }, async () => ({ users: await core.services().access.list('user') }) as never);

  // POST /v1/users with roles is creating the user without roles, then this.
  const changeRoles = async (req: FastifyRequest, reply: FastifyReply, name: string, rolesIn: readonly string[]): Promise<unknown> => {
    const s = core.services();
    const p = principalOf(req);
    const target = await s.access.get(name);
    if (target.kind !== 'user') throw new KeyhavenError('invalid_argument', `"${name}" is an app; apps hold key grants, not roles`);
    if (target.name === p.name) throw new KeyhavenError('permission_denied', 'nobody changes their own roles; ask another security-admin');
    const roles = parseRoles(rolesIn);
    checkRoleSet(roles, s.singlePersonDev);
    const adds = roles.filter((x) => !target.roles.includes(x));
    const removes = target.roles.filter((x) => !roles.includes(x));
    if (adds.length === 0 && removes.length === 0) return target;
    const op = adds.length > 0 ? 'admin.add' : 'admin.remove';
    // Adding an admin role always needs another admin's yes (the floor).
    const adminAdds = adds.filter((x): x is 'security-admin' | 'key-admin' => ADMIN_ROLES.has(x));
    const targetId = await s.access.idOf(name);
    const rule = adminAdds.length > 0 ? await adminApprovers(s, p, targetId, adminAdds) : { targetId };
    return guarded(s, req, reply, op, { user: name, roles }, { floor: adminAdds.length > 0, rule });
  };

  r.post('/v1/users', {
    config: { op: 'user.create', access: secAdmin },
    schema: {
      tags: ['users'],
      summary: 'Create a user; its roles follow the role-change rules (quorum policy, and another admin\'s approval for admin roles)',
      body: z.strictObject({ name: principalName, password: z.string().min(12, 'must have at least 12 characters').max(1024), roles: z.array(roleEnum).max(3).default([]) }),
      response: { 200: principalInfo, 202: approvalAccepted.extend({ user: principalInfo }), 409: errorResponse },
    },
  }, async (req, reply) => {
    const s = core.services();
    const p = principalOf(req);
    const roles = parseRoles(req.body.roles);
    // Refused before the account is made: a request that can never execute helps nobody.
    checkRoleSet(roles, s.singlePersonDev);
    const user = await s.access.createUser(p, { name: req.body.name, password: req.body.password, roles: [] });
    if (roles.length === 0) return user as never;
    const out = await changeRoles(req, reply, req.body.name, roles);
    if (reply.statusCode === 202) return { ...(out as { approval: unknown }), user } as never;
    return out as never;
  });

  r.put('/v1/users/:name/roles', {
    config: { op: 'user.roles', access: secAdmin },
    schema: {
      tags: ['users'],
      summary: 'Replace a user\'s roles (never your own); changes follow the quorum policy, and adding an admin role needs another admin\'s approval',
      params: principalNameParam,
      body: z.strictObject({ roles: z.array(roleEnum).max(3) }),
      response: { 200: principalInfo, 202: approvalAccepted, 403: errorResponse, 404: errorResponse, 409: errorResponse },
    },
  }, async (req, reply) => (await changeRoles(req, reply, req.params.name, req.body.roles)) as never);

  const lifecycle = (state: 'disabled' | 'active') =>
    r.post(`/v1/users/:name/${state === 'disabled' ? 'disable' : 'enable'}`, {
      config: { op: state === 'disabled' ? 'user.disable' : 'user.enable', access: secAdmin },
      schema: {
        tags: ['users'],
        summary: state === 'disabled'
          ? 'Disable a user (never yourself, never the last active security-admin); their sessions end at once'
          : 'Enable a disabled user; they sign in again',
        params: principalNameParam,
        body: emptyBody,
        response: { 200: principalInfo, 403: errorResponse, 404: errorResponse, 409: errorResponse },
      },
    }, async (req) => {
      req.auditNote.details.user = req.params.name;
      return (await core.services().access.setUserState(principalOf(req), req.params.name, state)) as never;
    });
  lifecycle('disabled');
  lifecycle('active');

  r.delete('/v1/users/:name', {
    config: { op: 'user.delete', access: secAdmin },
    schema: {
      tags: ['users'],
      summary: 'Delete a user and their credentials (never yourself, never the last active security-admin)',
      params: principalNameParam,
      response: { 200: z.object({ ok: z.literal(true) }), 403: errorResponse, 404: errorResponse, 409: errorResponse },
    },
  }, async (req) => {
    req.auditNote.details.user = req.params.name;
    await core.services().access.deleteUser(principalOf(req), req.params.name);
    return { ok: true as const };
  });

  r.put('/v1/users/:name/password', {
    config: { op: 'user.reset-password', access: secAdmin },
    schema: {
      tags: ['users'],
      summary: 'Reset another user\'s password; their sessions end. For a user holding an admin role it needs another admin\'s approval',
      params: principalNameParam,
      body: z.strictObject({ password: z.string().min(12, 'must have at least 12 characters').max(1024) }),
      response: { 200: principalInfo, 202: approvalAccepted, 403: errorResponse, 404: errorResponse },
    },
  }, async (req, reply) => {
    const s = core.services();
    const p = principalOf(req);
    req.auditNote.details.user = req.params.name;
    const target = await s.access.get(req.params.name);
    if (target.kind !== 'user') throw new KeyhavenError('invalid_argument', `"${req.params.name}" is an app; apps have API keys, not passwords`);
    if (target.name === p.name) throw new KeyhavenError('permission_denied', 'change your own password with PUT /v1/auth/password');
    const hash = await hashNewPassword(req.body.password);
    const targetId = await s.access.idOf(req.params.name);
    // A user about to receive an admin role counts as an admin here: resetting
    // their password while the request waits would hand the role to the requester.
    const pendingAdmin = (await s.quorum.list('pending')).some((a) => a.operation === 'admin.add' && a.rule.targetId === targetId);
    const floor = target.roles.some((x) => ADMIN_ROLES.has(x)) || pendingAdmin;
    const rule = { roles: ['security-admin', 'key-admin'] as const, exclude: targetId ? [targetId] : [], targetId };
    return guarded(s, req, reply, 'user.reset-password', { user: req.params.name }, {
      floor,
      rule: { ...rule, roles: [...rule.roles] },
      input: hash,
      now: () => s.access.resetPassword(p, req.params.name, hash, targetId),
    }) as never;
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
    // Key-admins read apps too: they decide the grants.
    config: { op: 'app.list', access: { roles: ['security-admin', 'key-admin'] } },
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
        breakGlass: z.boolean().optional().describe('a break-glass app: it decrypts only inside an open recovery (POST /v1/recoveries), never encrypts, and only through the native API'),
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
    // A new key for an app holding grants is a credential that can use keys: a key-admin consents.
    const floor = (target.grants?.length ?? 0) > 0;
    return guarded(s, req, reply, 'app.rotate-key', { app: req.params.name }, { floor, rule: { targetId: await s.access.idOf(req.params.name) } }) as never;
  });

  const grantParams = z.strictObject({ name: principalName, key: keyNameParam.shape.name });
  const grant = z.object({ key: z.string(), operations: z.array(operationEnum), createdAt: z.string(), createdBy: z.string() });
  r.put('/v1/apps/:name/grants/:key', {
    config: { op: 'app.grant', access: keyAdmin },
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
    config: { op: 'app.revoke', access: keyAdmin },
    schema: { tags: ['apps'], summary: 'Revoke an app\'s grant on a key', params: grantParams, response: { 200: z.object({ ok: z.literal(true) }), 404: errorResponse } },
  }, async (req) => {
    req.auditNote.keyName = req.params.key;
    req.auditNote.details.app = req.params.name;
    await core.services().access.revokeGrant(principalOf(req), req.params.name, req.params.key);
    return { ok: true as const };
  });
}
