import { randomBytes } from 'node:crypto';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { CryptoOperation } from '../../access/roles.js';
import { KeyhavenError, type ErrorCode } from '../../errors.js';
import type { RouteDeps } from '../route-deps.js';
import { requireGrant } from '../pipeline/context.js';
import type { Services } from '../core.js';
import { base64, ciphertextString, errorResponse, keyNameParam } from '../schemas.js';

const MAX_PLAINTEXT = 64 * 1024;
const MAX_CONTEXT = 4 * 1024;
const MAX_BATCH = 1000;

const context = base64(MAX_CONTEXT).optional().describe('caller context, bound as associated data: the same bytes are needed to decrypt');
const encryptItem = z.strictObject({ plaintext: base64(MAX_PLAINTEXT), context });
const cipherItem = z.strictObject({ ciphertext: ciphertextString, context });
const itemError = z.object({ error: z.object({ code: z.string(), message: z.string() }) });
const cipherOut = z.object({ ciphertext: z.string(), version: z.number() });
const plainOut = z.object({ plaintext: z.string(), version: z.number() });

/**
 * The hot routes' answers, as plain JSON.stringify: the handlers build
 * exactly the response schema's shape, keys in its order, so the bytes are
 * those the schema's serializer gives (app.test.ts), without re-checking
 * every answer against the schema.
 */
const plainJson = () => (data: unknown): string => JSON.stringify(data);

function batchOf<T extends z.ZodType>(item: T) {
  return z.strictObject({ batch: z.array(item).min(1).max(MAX_BATCH) });
}

/** kh:v<version>:<base64> → the blob, checking that the label matches the authenticated header. */
function parseCiphertext(s: Services, text: string, keyId: string): Buffer {
  const at = text.indexOf(':', 3);
  const labelled = Number(text.slice(4, at));
  const blob = Buffer.from(text.slice(at + 1), 'base64');
  const ref = s.keys.describe(blob);
  if (ref.keyId !== keyId) throw new KeyhavenError('invalid_argument', 'the ciphertext was made with a different key');
  if (ref.version !== labelled) throw new KeyhavenError('integrity', 'the ciphertext\'s version label does not match its header (tampered)');
  return blob;
}

function formatCiphertext(version: number, blob: Buffer): string {
  return `kh:v${version}:${blob.toString('base64')}`;
}

const ctx = (c: string | undefined): Buffer | undefined => (c === undefined ? undefined : Buffer.from(c, 'base64'));

export function registerCryptoRoutes(app: FastifyInstance, { core, metrics }: RouteDeps): void {
  const r = app.withTypeProvider<ZodTypeProvider>();
  const tags = ['crypto'];
  const access = { apps: 'granted' } as const;

  // Runs a single item or a batch; batch items fail one by one.
  async function run<I, O>(req: FastifyRequest, name: string, op: CryptoOperation, body: I | { batch: I[] }, fn: (s: Services, keyId: string, item: I) => O & { version: number }, granted?: { s: Services; keyId: string }) {
    const s = granted?.s ?? core.services();
    const keyId = granted?.keyId ?? (await requireGrant(s, req, name, op));
    const count = (result: string) => metrics.cryptoOps.inc({ key: name, operation: op, result });
    if (typeof body === 'object' && body !== null && 'batch' in body) {
      let failed = 0;
      const batch = body.batch.map((item) => {
        try {
          const out = fn(s, keyId, item);
          count('ok');
          return out;
        } catch (e) {
          failed += 1;
          const err = e instanceof KeyhavenError ? e : new KeyhavenError('internal', 'internal error');
          count(err.code);
          return { error: { code: err.code as ErrorCode, message: err.message } };
        }
      });
      req.auditNote.details.batch = body.batch.length;
      if (failed) req.auditNote.details.failed = failed;
      return { batch };
    }
    try {
      const out = fn(s, keyId, body as I);
      req.auditNote.keyVersion = out.version;
      count('ok');
      return out;
    } catch (e) {
      count(e instanceof KeyhavenError ? e.code : 'internal');
      throw e;
    }
  }

  r.post('/v1/keys/:name/encrypt', {
    config: { op: 'crypto.encrypt', access },
    serializerCompiler: plainJson,
    schema: {
      tags,
      summary: 'Encrypt with the key\'s current version',
      params: keyNameParam,
      body: z.union([encryptItem, batchOf(encryptItem)]),
      response: { 200: z.union([cipherOut, z.object({ batch: z.array(z.union([cipherOut, itemError])) })]), 403: errorResponse, 409: errorResponse },
    },
  }, async (req) =>
    run(req, req.params.name, 'encrypt', req.body, (s, _id, item) => {
      const out = s.keys.encrypt(req.params.name, Buffer.from(item.plaintext, 'base64'), undefined, ctx(item.context));
      return { ciphertext: formatCiphertext(out.version, out.ciphertext), version: out.version };
    }));

  const decryptOne = async (req: FastifyRequest, name: string, body: { ciphertext: string; context?: string | undefined } | { batch: { ciphertext: string; context?: string | undefined }[] }, op: 'decrypt' | 'rewrap') => {
    const s = core.services();
    const keyId = await requireGrant(s, req, name, op);
    // Opened first: decrypt loads a version it has not cached (rotated by another server) from storage.
    const items = 'batch' in body ? body.batch : [body];
    const opened = await Promise.all(
      items.map(async (item) => {
        try {
          const blob = parseCiphertext(s, item.ciphertext, keyId);
          return await s.keys.decrypt(blob, { context: ctx(item.context), allowedKeys: new Set([name]) });
        } catch (e) {
          return e as Error;
        }
      }),
    );
    let i = 0;
    return run(req, name, op, body as never, (s2, _id, _item: unknown) => {
      const d = opened[i++]!;
      if (d instanceof Error) throw d;
      if (op === 'decrypt') return { plaintext: d.plaintext.toString('base64'), version: d.version };
      const out = s2.keys.encrypt(name, d.plaintext, undefined, ctx(items[i - 1]!.context));
      d.plaintext.fill(0);
      return { ciphertext: formatCiphertext(out.version, out.ciphertext), version: out.version };
    }, { s, keyId });
  };

  r.post('/v1/keys/:name/decrypt', {
    config: { op: 'crypto.decrypt', access },
    serializerCompiler: plainJson,
    schema: {
      tags,
      summary: 'Decrypt a ciphertext made with this key (any version not retired or destroyed)',
      params: keyNameParam,
      body: z.union([cipherItem, batchOf(cipherItem)]),
      response: { 200: z.union([plainOut, z.object({ batch: z.array(z.union([plainOut, itemError])) })]), 400: errorResponse, 403: errorResponse },
    },
  }, async (req) => decryptOne(req, req.params.name, req.body, 'decrypt') as never);

  r.post('/v1/keys/:name/rewrap', {
    config: { op: 'crypto.rewrap', access },
    serializerCompiler: plainJson,
    schema: {
      tags,
      summary: 'Re-encrypt under the current version without returning the plaintext',
      params: keyNameParam,
      body: z.union([cipherItem, batchOf(cipherItem)]),
      response: { 200: z.union([cipherOut, z.object({ batch: z.array(z.union([cipherOut, itemError])) })]), 400: errorResponse, 403: errorResponse },
    },
  }, async (req) => decryptOne(req, req.params.name, req.body, 'rewrap') as never);

  const datakeyItem = z.strictObject({ bytes: z.number().int().min(16).max(64).optional(), context, includePlaintext: z.boolean().optional() });
  const datakeyOut = z.object({ ciphertext: z.string(), plaintext: z.string().optional(), version: z.number() });
  r.post('/v1/keys/:name/datakey', {
    config: { op: 'crypto.datakey', access },
    schema: {
      tags,
      summary: 'Generate a random data key, returned encrypted under this key (and in plaintext unless includePlaintext is false)',
      params: keyNameParam,
      body: z.union([datakeyItem, batchOf(datakeyItem)]),
      response: { 200: z.union([datakeyOut, z.object({ batch: z.array(z.union([datakeyOut, itemError])) })]), 403: errorResponse },
    },
  }, async (req) =>
    run(req, req.params.name, 'datakey', req.body, (s, _id, item) => {
      const key = randomBytes(item.bytes ?? 32);
      const out = s.keys.encrypt(req.params.name, key, undefined, ctx(item.context));
      const res = { ciphertext: formatCiphertext(out.version, out.ciphertext), version: out.version, ...(item.includePlaintext === false ? {} : { plaintext: key.toString('base64') }) };
      key.fill(0);
      return res;
    }));
}
