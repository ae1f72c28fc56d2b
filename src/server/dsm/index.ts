import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { actorName } from '../../access/access.js';
import { KeyhavenError } from '../../errors.js';
import { registerDialect } from '../pipeline/pipeline.js';
import type { RouteSeries } from '../pipeline/metrics.js';
import type { RouteDeps } from '../route-deps.js';
import { dsmDialect } from './dialect.js';
import { canSeeKey, principalOf } from '../pipeline/context.js';
import { apiKeyOf, authenticateAppKey, parseBasic } from './auth.js';
import { decryptBody, dsmDecrypt, dsmEncrypt, encryptBody, keyDescriptor, type DecryptBody, type EncryptBody } from './crypto.js';
import { createKidIndex, parseObjectName, sobjectView, uuidOf, UUID, type KidIndex } from './objects.js';

// Fortanix DSM (SmartKey) compatibility API: the subset that DSM clients
// doing symmetric encryption use (session auth, security-object metadata,
// create, rekey, encrypt, decrypt). Same keys, grants and audit as /v1;
// errors are a status with a plain-text message, as DSM answers them.
// Hidden from /v1/openapi.json; documented in docs/compat-dsm.md.

const USER_NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const readers = ['key-admin', 'security-admin', 'auditor'] as const;
const view = z.object({ view: z.enum(['json'], { error: 'view must be "json": keyhaven keys are not exportable' }).optional() });

/** The DSM dialect: its routes, error shape and not-found answer in one encapsulated context. */
export function registerDsm(app: FastifyInstance, deps: RouteDeps, notFoundSeries: RouteSeries): Promise<void> {
  return registerDialect(app, dsmDialect, { metrics: deps.metrics, notFoundSeries, routes: (scope) => registerDsmRoutes(scope, deps) });
}

function registerDsmRoutes(scope: FastifyInstance, { core, metrics, signInRateLimit }: RouteDeps): void {
  const kids: KidIndex = createKidIndex(core.store);
  const hide = { hide: true } as const;

  /** The object a kid or name names, for reading metadata; apps get one 403 for unknown and ungranted. */
  const lookup = async (req: FastifyRequest, d: { kid?: string | undefined; name?: string | undefined }) => {
    const s = core.services();
    const p = principalOf(req);
    const what = d.kid !== undefined ? `security object ${d.kid.toLowerCase()}` : `security object named ${JSON.stringify(d.name)}`;
    const missing = p.kind === 'app' ? new KeyhavenError('permission_denied', `no grant on ${what}`) : new KeyhavenError('not_found', `no ${what}`);
    let keyName: string;
    let version: number | undefined;
    let keyId: string | undefined;
    if (d.kid !== undefined) {
      const ref = await kids.resolve(s.storeId, d.kid);
      if (!ref) throw missing;
      ({ keyName, version, keyId } = ref);
    } else {
      ({ keyName, version } = parseObjectName(d.name!));
    }
    const k = await s.keys.get(keyName).catch((e: unknown) => {
      throw e instanceof KeyhavenError && (e.code === 'not_found' || e.code === 'invalid_argument') ? missing : e;
    });
    // keyId differs when the kid's key was deleted and its name taken again.
    if ((keyId !== undefined && keyId !== k.id) || !(await canSeeKey(s, p, k.id))) throw missing;
    const v = version ?? k.currentVersion;
    // An old-version name must name a version before the current one.
    const info = k.versions.find((x) => x.version === v);
    if (!info || (d.name !== undefined && version !== undefined && version >= k.currentVersion)) throw missing;
    req.auditNote.keyName = k.name;
    req.auditNote.keyVersion = v;
    kids.learn(s.storeId, k);
    return sobjectView(s.storeId, k, info);
  };

  const count = (key: string, operation: string, result: string) => metrics.cryptoOps.inc({ key, operation, result });

  const crypt = async (req: FastifyRequest, pathKid: string | undefined, body: EncryptBody | DecryptBody, op: 'encrypt' | 'decrypt') => {
    if (pathKid !== undefined && body.key !== undefined) throw new KeyhavenError('invalid_argument', 'name the key in the path or in the body, not both');
    const d = pathKid !== undefined ? { kid: pathKid } : body.key;
    if (!d) throw new KeyhavenError('invalid_argument', 'key is required: {"kid": "<uuid>"} or {"name": "<name>"}');
    req.auditNote.details.by = d.kid !== undefined ? 'kid' : 'name';
    const s = core.services();
    try {
      const out = op === 'encrypt' ? await dsmEncrypt(s, kids, req, d, body as EncryptBody) : await dsmDecrypt(s, kids, req, d, body as DecryptBody);
      const { keyName, keyVersion } = req.auditNote;
      const keyId = keyName === undefined ? undefined : s.keys.idOf(keyName);
      // The answer names the kid: the client may use it next.
      if (keyName !== undefined && keyId !== undefined && keyVersion !== undefined) kids.learn(s.storeId, { id: keyId, name: keyName, currentVersion: keyVersion });
      if (req.auditNote.keyName) count(req.auditNote.keyName, `dsm_${op}`, 'ok');
      return out;
    } catch (e) {
      if (req.auditNote.keyName) count(req.auditNote.keyName, `dsm_${op}`, e instanceof KeyhavenError ? e.code : 'internal');
      throw e;
    }
  };

  {
    // DSM clients send JSON without a content-type (the Go SDK), and empty
    // bodies to session auth and terminate, some labelled JSON: read both as DSM does.
    scope.addHook('onRequest', async (req) => {
      const h = req.headers;
      const hasBody = h['transfer-encoding'] !== undefined || (h['content-length'] !== undefined && h['content-length'] !== '0');
      if (h['content-type'] === undefined && hasBody) h['content-type'] = 'application/json';
      else if (!hasBody && req.url.startsWith('/sys/v1/session/')) delete h['content-type'];
    });

    const r = scope.withTypeProvider<ZodTypeProvider>();

    r.post('/sys/v1/session/auth', { config: { op: 'dsm.session.auth', access: { public: true }, rateLimit: signInRateLimit }, schema: hide }, async (req) => {
      const h = req.headers.authorization;
      if (h === undefined) throw new KeyhavenError('unauthenticated', 'send "Authorization: Basic <base64 of app-id:api-key>" (an app) or Basic <base64 of user:password> (a user)');
      const pair = parseBasic(h);
      const s = core.services();
      const key = apiKeyOf(pair);
      let out: { token: string; expiresAt: string };
      if (key) {
        if (key.appName !== undefined) req.auditNote.details.app = key.appName;
        const p = await authenticateAppKey(s.access, key);
        req.principal = p;
        out = await s.access.openSession(p);
      } else {
        // The attempted name is recorded (if it is a well-formed name), the password never.
        if (USER_NAME.test(pair.user)) req.auditNote.details.user = pair.user;
        const login = await s.access.login(pair.user, pair.pass, req.ip);
        req.principal = login.principal;
        out = login;
      }
      return {
        token_type: 'Bearer',
        expires_in: Math.max(0, Math.round((Date.parse(out.expiresAt) - Date.now()) / 1000)),
        access_token: out.token,
        entity_id: uuidOf('keyhaven dsm entity v1', s.storeId, req.principal.id),
      };
    });

    r.post('/sys/v1/session/terminate', { config: { op: 'dsm.session.terminate', access: { anyPrincipal: true } }, schema: hide }, async (req, reply) => {
      const m = /^Bearer +(\S+)$/i.exec(req.headers.authorization ?? '');
      if (!m || !m[1]!.startsWith('khs_')) throw new KeyhavenError('invalid_argument', 'only a session can be terminated: send the Bearer access_token from POST /sys/v1/session/auth');
      await core.services().access.logout(m[1]!);
      return reply.code(204).send();
    });

    r.get('/crypto/v1/keys', {
      config: { op: 'dsm.key.list', access: { roles: [...readers], apps: 'granted' } },
      schema: {
        ...hide,
        querystring: z.object({
          name: z.string().max(200).optional(),
          limit: z.coerce.number().int().min(1).max(10000).optional(),
          offset: z.coerce.number().int().min(0).optional(),
          with_metadata: z.enum(['true', 'false']).optional(),
        }),
      },
    }, async (req) => {
      const s = core.services();
      const p = principalOf(req);
      const all = [];
      for (const k of await s.keys.list()) {
        if (!(await canSeeKey(s, p, k.id))) continue;
        kids.learn(s.storeId, k);
        for (const v of [...k.versions].reverse()) all.push(sobjectView(s.storeId, k, v));
      }
      const q = req.query;
      const filtered = q.name === undefined ? all : all.filter((o) => o.name === q.name);
      const offset = q.offset ?? 0;
      const items = filtered.slice(offset, offset + (q.limit ?? 1000));
      req.auditNote.details.count = items.length;
      return q.with_metadata === 'true' ? { metadata: { total_count: all.length, filtered_count: filtered.length }, items } : items;
    });

    r.get('/crypto/v1/keys/:kid', {
      config: { op: 'dsm.key.read', access: { roles: [...readers], apps: 'granted' } },
      schema: { ...hide, params: z.strictObject({ kid: z.string().regex(UUID, 'must be a security object kid (a UUID)') }), querystring: view },
    }, async (req) => lookup(req, { kid: req.params.kid }));

    r.post('/crypto/v1/keys/info', {
      config: { op: 'dsm.key.read', access: { roles: [...readers], apps: 'granted' } },
      schema: { ...hide, body: keyDescriptor, querystring: view },
    }, async (req) => lookup(req, req.body));

    // Creating keys is key administration: key-admins only, as on /v1.
    r.post('/crypto/v1/keys', {
      config: { op: 'dsm.key.create', access: { roles: ['key-admin'] } },
      schema: {
        ...hide,
        // Other DSM fields (description, group_id, custom_metadata, key_ops …) are accepted and ignored.
        body: z.object({
          name: z.string().min(1).max(128),
          obj_type: z.enum(['AES'], { error: 'obj_type must be "AES": keyhaven keys are AES-256' }),
          key_size: z.literal(256, { error: 'key_size must be 256' }).optional(),
          enabled: z.literal(true, { error: 'a key is created enabled; disable it afterwards with POST /v1/keys/{name}/disable' }).optional(),
          transient: z.literal(false, { error: 'transient keys are not supported' }).optional(),
          value: z.undefined({ error: 'importing key material is not supported: keyhaven generates every key' }).optional(),
        }),
      },
    }, async (req) => {
      const s = core.services();
      const k = await s.keys.create(req.body.name, actorName(principalOf(req)), {});
      req.auditNote.keyName = k.name;
      req.auditNote.keyVersion = 1;
      kids.learn(s.storeId, k);
      return sobjectView(s.storeId, k, k.versions[0]!);
    });

    // Rekey = rotate: a new object (the new version) takes the name; the old one is linked to it.
    r.post('/crypto/v1/keys/rekey', {
      config: { op: 'dsm.key.rekey', access: { roles: ['key-admin'] } },
      schema: { ...hide, body: z.object({ name: z.string().min(1).max(200) }) },
    }, async (req) => {
      const s = core.services();
      const { keyName, version } = parseObjectName(req.body.name);
      if (version !== undefined) throw new KeyhavenError('failed_precondition', `${JSON.stringify(req.body.name)} was already replaced; rekey the current object "${keyName}"`);
      const k = await s.keys.rotate(keyName, actorName(principalOf(req)));
      req.auditNote.keyName = k.name;
      req.auditNote.keyVersion = k.currentVersion;
      kids.learn(s.storeId, k);
      return sobjectView(s.storeId, k, k.versions.find((v) => v.version === k.currentVersion)!);
    });

    const access = { apps: 'granted' } as const;
    const kidParam = z.strictObject({ kid: z.string().regex(UUID, 'must be a security object kid (a UUID)') });
    r.post('/crypto/v1/encrypt', { config: { op: 'dsm.encrypt', access }, schema: { ...hide, body: encryptBody } }, async (req) => crypt(req, undefined, req.body, 'encrypt'));
    r.post('/crypto/v1/decrypt', { config: { op: 'dsm.decrypt', access }, schema: { ...hide, body: decryptBody } }, async (req) => crypt(req, undefined, req.body, 'decrypt'));
    r.post('/crypto/v1/keys/:kid/encrypt', { config: { op: 'dsm.encrypt', access }, schema: { ...hide, params: kidParam, body: encryptBody } }, async (req) =>
      crypt(req, req.params.kid, req.body, 'encrypt'));
    r.post('/crypto/v1/keys/:kid/decrypt', { config: { op: 'dsm.decrypt', access }, schema: { ...hide, params: kidParam, body: decryptBody } }, async (req) =>
      crypt(req, req.params.kid, req.body, 'decrypt'));
  }
}
