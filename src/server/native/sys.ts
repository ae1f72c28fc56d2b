import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { GUARDED_OPERATIONS, type GuardedOperation } from '../../access/quorum.js';
import { PACKAGE_VERSION } from '../../paths.js';
import type { RouteDeps } from '../route-deps.js';
import { approvalAccepted, emptyBody, errorResponse, sealStatus } from '../schemas.js';
import { guarded } from '../guard.js';
import { principalOf } from '../pipeline/context.js';
import { KeyhavenError } from '../../errors.js';

const USER_NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const userName = z.string().regex(USER_NAME, 'must be a user name');
const credentials = z.object({ name: z.string(), password: z.string() });

const quorumPolicy = z.strictObject({
  required: z.number().int().min(0).max(16),
  operations: z.array(z.enum(Object.keys(GUARDED_OPERATIONS) as [GuardedOperation, ...GuardedOperation[]])),
  ttlS: z.number().int().min(60).max(30 * 86400),
});

export function registerSysRoutes(app: FastifyInstance, { core }: RouteDeps): void {
  const r = app.withTypeProvider<ZodTypeProvider>();
  const sys = { tags: ['sys'] };

  r.get('/v1/sys/health', {
    config: { op: 'sys.health', access: { public: true, sealedOk: true } },
    schema: { ...sys, summary: 'Liveness and seal state; 200 only when unsealed', response: { 200: z.object({ initialized: z.boolean(), sealed: z.boolean(), version: z.string() }), 503: z.object({ initialized: z.boolean(), sealed: z.boolean(), version: z.string() }) } },
  }, async (_req, reply) => {
    // A server that has not yet noticed another server's init learns of it now, not at its next tick.
    await core.catchUp();
    const s = core.status();
    if (s.sealed) void reply.code(503);
    return { initialized: s.initialized, sealed: s.sealed, version: PACKAGE_VERSION };
  });

  r.get('/v1/sys/seal-status', {
    config: { op: 'sys.seal-status', access: { public: true, sealedOk: true } },
    schema: { ...sys, summary: 'Seal kind and unseal progress', response: { 200: sealStatus } },
  }, async () => {
    await core.catchUp();
    return core.status();
  });

  r.post('/v1/sys/init', {
    config: { op: 'sys.init', access: { public: true, sealedOk: true } },
    schema: {
      ...sys,
      summary: 'Initialise a new server: makes the root key (and its shares), the first security-admin and the first key-admin in one transaction; may be run again until one of them has logged in',
      body: z.strictObject({
        shares: z.number().int().min(1).max(16).optional(),
        threshold: z.number().int().min(1).max(16).optional(),
        adminName: userName.optional(),
        keyAdminName: userName.optional(),
      }).optional(),
      response: { 200: z.object({ shares: z.array(z.string()).optional(), admin: credentials, keyAdmin: credentials }), 409: errorResponse },
    },
  }, async (req) => {
    const body = req.body ?? {};
    const out = await core.init(body);
    return { ...(out.shares ? { shares: [...out.shares] } : {}), admin: out.admin, keyAdmin: out.keyAdmin };
  });

  r.post('/v1/sys/unseal', {
    config: { op: 'sys.unseal', access: { public: true, sealedOk: true } },
    schema: {
      ...sys,
      summary: 'Enter one unseal share (shamir), or lift the seal of a keyfile/pkcs11 server as a security-admin (name and password, or a session token)',
      body: z.strictObject({
        share: z.string().max(512).optional(),
        name: z.string().min(1).max(64).optional(),
        password: z.string().min(1).max(1024).optional(),
      }).refine((b) => (b.name === undefined) === (b.password === undefined), 'send name and password together').optional(),
      response: { 200: sealStatus, 400: errorResponse, 401: errorResponse, 403: errorResponse },
    },
  }, async (req) => {
    const b = req.body ?? {};
    // Who tried is recorded (a well-formed name, or the token's principal), the password never.
    if (b.name !== undefined && USER_NAME.test(b.name)) req.auditNote.details.user = b.name;
    const h = req.headers.authorization;
    let token: string | undefined;
    if (h !== undefined) {
      const m = /^Bearer +([\x21-\x7e]{1,512})$/i.exec(h);
      if (!m) throw new KeyhavenError('unauthenticated', 'the Authorization header must be "Bearer <token>"');
      token = m[1]!;
    }
    return core.unseal({ share: b.share, name: b.name, password: b.password, token, source: req.ip }, (p) => {
      req.principal = p;
    });
  });

  r.post('/v1/sys/seal', {
    config: { op: 'sys.seal', access: { roles: ['security-admin'] } },
    schema: { ...sys, summary: 'Operator seal: drop the root key from memory, on every server sharing the database and across restarts, until a security-admin unseals', body: emptyBody, response: { 200: sealStatus } },
  }, async (req) => {
    await core.seal(principalOf(req));
    return core.status();
  });

  r.get('/v1/sys/quorum', {
    config: { op: 'quorum.read', access: { roles: ['security-admin', 'key-admin', 'auditor'] } },
    schema: { ...sys, summary: 'The quorum (M-of-N approval) policy', response: { 200: quorumPolicy } },
  }, async () => {
    const p = await core.services().quorum.policy();
    return { ...p, operations: [...p.operations] };
  });

  r.put('/v1/sys/quorum', {
    config: { op: 'quorum.set', access: { roles: ['security-admin'] } },
    schema: { ...sys, summary: 'Change the quorum policy (itself guarded once a quorum applies)', body: quorumPolicy, response: { 200: quorumPolicy, 202: approvalAccepted } },
  }, async (req, reply) => {
    const s = core.services();
    const policy = s.quorum.checkPolicy(req.body);
    return guarded(s, req, reply, 'quorum.set', { policy }) as never;
  });
}
