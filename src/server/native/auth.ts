import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { RouteDeps } from '../route-deps.js';
import { principalOf } from '../pipeline/context.js';
import { emptyBody, errorResponse, roleEnum } from '../schemas.js';

const NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;

export function registerAuthRoutes(app: FastifyInstance, { core, signInRateLimit }: RouteDeps): void {
  const r = app.withTypeProvider<ZodTypeProvider>();
  const tags = ['auth'];
  const whoami = z.object({ name: z.string(), kind: z.enum(['user', 'app']), roles: z.array(roleEnum) });

  r.post('/v1/auth/login', {
    config: { op: 'auth.login', access: { public: true }, rateLimit: signInRateLimit },
    schema: {
      tags,
      summary: 'Exchange a user name and password for a session token',
      security: [],
      body: z.strictObject({ name: z.string().min(1).max(64), password: z.string().min(1).max(1024) }),
      response: { 200: z.object({ token: z.string(), expiresAt: z.string(), principal: whoami }), 401: errorResponse, 429: errorResponse },
    },
  }, async (req) => {
    // The attempted name is recorded (if it is a well-formed name), the password never.
    if (NAME.test(req.body.name)) req.auditNote.details.user = req.body.name;
    const out = await core.services().access.login(req.body.name, req.body.password, req.ip);
    req.principal = out.principal;
    return { token: out.token, expiresAt: out.expiresAt, principal: { name: out.principal.name, kind: out.principal.kind, roles: [...out.principal.roles] } };
  });

  r.post('/v1/auth/logout', {
    config: { op: 'auth.logout', access: { anyPrincipal: true } },
    schema: { tags, summary: 'End the current session', body: emptyBody, response: { 200: z.object({ ok: z.literal(true) }) } },
  }, async (req) => {
    const h = req.headers.authorization ?? '';
    await core.services().access.logout(h.replace(/^Bearer +/i, ''));
    return { ok: true as const };
  });

  r.put('/v1/auth/password', {
    config: { op: 'user.password', access: { anyPrincipal: true } },
    schema: {
      tags,
      summary: 'Change your own password (a signed-in user); your other sessions end',
      body: z.strictObject({ currentPassword: z.string().min(1).max(1024), newPassword: z.string().min(12, 'must have at least 12 characters').max(1024) }),
      response: { 200: z.object({ ok: z.literal(true) }), 403: errorResponse },
    },
  }, async (req) => {
    const h = req.headers.authorization ?? '';
    await core.services().access.changePassword(principalOf(req), h.replace(/^Bearer +/i, ''), req.body.currentPassword, req.body.newPassword);
    return { ok: true as const };
  });

  r.get('/v1/auth/whoami', {
    config: { op: 'auth.whoami', access: { anyPrincipal: true } },
    schema: { tags, summary: 'Who the credentials belong to', response: { 200: whoami } },
  }, async (req) => {
    const p = principalOf(req);
    return { name: p.name, kind: p.kind, roles: [...p.roles] };
  });
}
