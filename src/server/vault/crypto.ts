import { randomBytes } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { CryptoOperation } from '../../access/roles.js';
import { asKeyhavenError, KeyhavenError, type ErrorCode } from '../../errors.js';
import type { KeyInfo } from '../../keys/key-store.js';
import type { RouteDeps } from '../route-deps.js';
import { requireGrant } from '../pipeline/context.js';
import type { Services } from '../core.js';
import { boundData, formatVaultCiphertext, parseVaultCiphertext } from './ciphertext.js';
import { base64Field, envelope, readBody, type FieldType, type Fields } from './envelope.js';
import { keyName } from './shared.js';

// Transit encrypt / decrypt / rewrap / datakey. The grants are the native
// ones (requireGrant, as /v1/keys/{name}/encrypt ...), the crypto is the key
// store's; only the request and response shapes are Vault's.

// The native API's limits (routes-crypto.ts).
const MAX_PLAINTEXT = 64 * 1024;
const MAX_AAD = 4 * 1024;
const MAX_BATCH = 1000;

const ITEM_FIELDS = {
  plaintext: 'string',
  ciphertext: 'string',
  context: 'string',
  key_version: 'int',
  associated_data: 'string',
  reference: 'string',
  nonce: 'string',
} as const satisfies Record<string, FieldType>;
type Item = Fields<typeof ITEM_FIELDS>;

/** Codes that are keyhaven's fault, not the request's: Vault answers a batch holding one with 500. */
const SERVER_SIDE: ReadonlySet<ErrorCode> = new Set(['internal', 'unavailable', 'audit_failed', 'sealed', 'config_invalid']);

const NONCE_REFUSED = 'nonce is only for convergent encryption, which keyhaven does not support';

/** batch_input, or the top-level fields as the one item. */
function itemsOf(body: Fields<Record<string, FieldType>> & { batch_input?: unknown[] }, single: Item, warnings: string[]): { items: Item[]; batch: boolean } {
  if (body.batch_input === undefined) return { items: [single], batch: false };
  const raw = body.batch_input;
  if (raw.length === 0) throw new KeyhavenError('invalid_argument', 'missing batch input to process');
  if (raw.length > MAX_BATCH) throw new KeyhavenError('invalid_argument', `batch_input holds at most ${MAX_BATCH} items`);
  const itemWarnings: string[] = [];
  const items = raw.map((it, i) => {
    if (typeof it !== 'object' || it === null || Array.isArray(it)) throw new KeyhavenError('invalid_argument', `failed to parse batch input: [${i}] expected a map`);
    try {
      return readBody(it, ITEM_FIELDS, itemWarnings);
    } catch (e) {
      throw new KeyhavenError('invalid_argument', `failed to parse batch input: [${i}] ${(e as Error).message}`);
    }
  });
  if (itemWarnings.length) warnings.push(`batch_input: ${itemWarnings[0]}`);
  return { items, batch: true };
}

/** Vault requires context in every item or in none. */
function checkContexts(items: readonly Item[]): void {
  const set = (it: Item) => (it.context ?? '') !== '';
  if (items.some((it) => set(it) !== set(items[0]!))) throw new KeyhavenError('invalid_argument', 'context should be set either in all the request blocks or in none');
}

/** The bytes bound as associated data for an item (see boundData). */
function aadOf(item: Item): Buffer | undefined {
  const context = item.context ? base64Field('context', item.context, MAX_AAD) : undefined;
  const ad = item.associated_data ? base64Field('associated_data', item.associated_data, MAX_AAD) : undefined;
  return boundData(context, ad);
}

/** The version an encryption uses: the latest (undefined), or key_version within Vault's bounds. */
function encryptionVersion(k: KeyInfo | undefined, requested: number | undefined): number | undefined {
  if (!requested) return undefined;
  if (requested < 0) throw new KeyhavenError('invalid_argument', 'requested version for encryption is negative');
  if (!k) throw new KeyhavenError('internal', 'key information missing');
  if (requested > k.currentVersion) throw new KeyhavenError('invalid_argument', 'requested version for encryption is higher than the latest key version');
  if (requested < k.minEncryptionVersion) throw new KeyhavenError('invalid_argument', 'requested version for encryption is less than the minimum encryption key version');
  // Stricter than Vault: such a ciphertext could never be decrypted.
  if (requested < k.minDecryptionVersion) throw new KeyhavenError('invalid_argument', 'requested version for encryption is below the minimum decryption version');
  return requested;
}

type Outcome = Record<string, unknown> | KeyhavenError;

interface Answer {
  readonly op: CryptoOperation;
  readonly name: string;
  readonly batch: boolean;
  readonly items: readonly Item[];
  readonly outcomes: readonly Outcome[];
  readonly warnings: string[];
  /** Fields an item result has even when it failed (Vault's decrypt always has plaintext). */
  readonly emptyResult: Record<string, unknown>;
  /** Vault's rewrap answers 200 whatever its items did. */
  readonly batchAlwaysOk?: boolean;
  readonly partialFailureCode?: number | undefined;
}

export function registerVaultCryptoRoutes(app: FastifyInstance, { core, metrics }: RouteDeps): void {
  const access = { apps: 'granted' } as const;
  const hide = { hide: true };

  /** Runs each item, never letting one item's failure stop the others. */
  const runItems = async (items: readonly Item[], fn: (item: Item) => Promise<Record<string, unknown>> | Record<string, unknown>): Promise<Outcome[]> =>
    Promise.all(
      items.map(async (item) => {
        try {
          return await fn(item);
        } catch (e) {
          // As classify() does for a whole request: the caller sees "internal", the log has the cause.
          if (!(e instanceof KeyhavenError)) app.log.error({ err: e }, 'unexpected error in a Transit batch item');
          return asKeyhavenError(e);
        }
      }),
    );

  /** Counts, audits and answers: one result, or batch_results with Vault's status rules. */
  const answer = (req: FastifyRequest, reply: FastifyReply, a: Answer) => {
    const count = (result: string) => metrics.cryptoOps.inc({ key: a.name, operation: a.op, result });
    for (const o of a.outcomes) count(o instanceof KeyhavenError ? o.code : 'ok');
    if (!a.batch) {
      const o = a.outcomes[0]!;
      if (o instanceof KeyhavenError) throw o;
      if (typeof o.key_version === 'number') req.auditNote.keyVersion = o.key_version;
      return envelope(req, o, a.warnings);
    }
    const failures = a.outcomes.filter((o): o is KeyhavenError => o instanceof KeyhavenError);
    req.auditNote.details.batch = a.outcomes.length;
    if (failures.length) {
      req.auditNote.details.failed = failures.length;
      req.auditNote.result = failures[0]!.code;
    }
    const batch_results = a.outcomes.map((o, i) => {
      const reference = a.items[i]!.reference ?? '';
      return o instanceof KeyhavenError ? { ...a.emptyResult, error: o.message, reference } : { ...o, reference };
    });
    if (failures.length && !a.batchAlwaysOk) {
      const userError = failures.some((f) => !SERVER_SIDE.has(f.code));
      let status = userError ? 400 : 500;
      const successes = failures.length < a.outcomes.length;
      if (a.partialFailureCode !== undefined && successes) {
        if (a.partialFailureCode < 1 || a.partialFailureCode > 599) a.warnings.push(`invalid HTTP response code override from partial_failure_response_code, reverting to ${status}`);
        else status = a.partialFailureCode;
      }
      void reply.code(status);
    }
    return envelope(req, { batch_results }, a.warnings);
  };

  // Key metadata for key_version checks, read only when an item names a version.
  const keyFor = async (s: Services, name: string, items: readonly Item[]): Promise<KeyInfo | undefined> => {
    if (!items.some((it) => it.key_version)) return undefined;
    const k = await s.keys.get(name);
    // A version rotated in by another server is not cached yet.
    if (items.some((it) => it.key_version && it.key_version > 0 && it.key_version <= k.currentVersion && !s.keys.liveVersionTags(name).has(it.key_version))) await s.keys.refresh(name);
    return k;
  };

  const encrypt = (s: Services, name: string, k: KeyInfo | undefined, item: Item, plaintext: Buffer) => {
    const out = s.keys.encrypt(name, plaintext, encryptionVersion(k, item.key_version), aadOf(item));
    return { ciphertext: formatVaultCiphertext(out.version, out.ciphertext), key_version: out.version };
  };

  app.route({
    method: ['POST', 'PUT'],
    url: '/v1/transit/encrypt/:name',
    config: { op: 'transit.encrypt', access },
    schema: hide,
    handler: async (req, reply) => {
      const warnings: string[] = [];
      const name = keyName(req);
      const b = readBody(req.body, {
        name: 'string', plaintext: 'string', context: 'string', key_version: 'int', associated_data: 'string', nonce: 'string',
        batch_input: 'array', partial_failure_response_code: 'int', type: 'string', convergent_encryption: 'bool',
      }, warnings);
      if (b.batch_input === undefined && b.plaintext === undefined) throw new KeyhavenError('invalid_argument', 'missing plaintext to encrypt');
      const { items, batch } = itemsOf(b, { plaintext: b.plaintext, context: b.context, key_version: b.key_version, associated_data: b.associated_data, nonce: b.nonce }, warnings);
      checkContexts(items);
      const s = core.services();
      await requireGrant(s, req, name, 'encrypt');
      const k = await keyFor(s, name, items);
      const outcomes = await runItems(items, (item) => {
        if (item.nonce) throw new KeyhavenError('invalid_argument', NONCE_REFUSED);
        if (item.plaintext === undefined) throw new KeyhavenError('invalid_argument', 'missing plaintext to encrypt');
        const pt = base64Field('plaintext', item.plaintext, MAX_PLAINTEXT);
        try {
          return encrypt(s, name, k, item, pt);
        } finally {
          pt.fill(0);
        }
      });
      return answer(req, reply, { op: 'encrypt', name, batch, items, outcomes, warnings, emptyResult: {}, partialFailureCode: b.partial_failure_response_code });
    },
  });

  // Opens one item's ciphertext: checks its key and label, then decrypts with its bound data.
  const open = async (s: Services, name: string, keyId: string, item: Item) => {
    if (item.nonce) throw new KeyhavenError('invalid_argument', NONCE_REFUSED);
    if (!item.ciphertext) throw new KeyhavenError('invalid_argument', 'missing ciphertext to decrypt');
    const blob = parseVaultCiphertext(s, item.ciphertext, keyId);
    return s.keys.decrypt(blob, { context: aadOf(item), allowedKeys: new Set([name]) });
  };

  app.route({
    method: ['POST', 'PUT'],
    url: '/v1/transit/decrypt/:name',
    config: { op: 'transit.decrypt', access },
    schema: hide,
    handler: async (req, reply) => {
      const warnings: string[] = [];
      const name = keyName(req);
      const b = readBody(req.body, {
        name: 'string', ciphertext: 'string', context: 'string', nonce: 'string', associated_data: 'string', batch_input: 'array', partial_failure_response_code: 'int',
      }, warnings);
      if (b.batch_input === undefined && !b.ciphertext) throw new KeyhavenError('invalid_argument', 'missing ciphertext to decrypt');
      const { items, batch } = itemsOf(b, { ciphertext: b.ciphertext, context: b.context, associated_data: b.associated_data, nonce: b.nonce }, warnings);
      checkContexts(items);
      const s = core.services();
      const keyId = await requireGrant(s, req, name, 'decrypt');
      const outcomes = await runItems(items, async (item) => {
        const d = await open(s, name, keyId, item);
        const plaintext = d.plaintext.toString('base64');
        d.plaintext.fill(0);
        return { plaintext, key_version: d.version };
      });
      // Vault's decrypt answers the plaintext only; the version is for the audit record.
      const single = !batch && !(outcomes[0] instanceof KeyhavenError) ? (outcomes[0] as { key_version: number }).key_version : undefined;
      const shaped = outcomes.map((o) => (o instanceof KeyhavenError ? o : { plaintext: o.plaintext }));
      const out = answer(req, reply, { op: 'decrypt', name, batch, items, outcomes: shaped, warnings, emptyResult: { plaintext: '' }, partialFailureCode: b.partial_failure_response_code });
      if (single !== undefined) req.auditNote.keyVersion = single;
      return out;
    },
  });

  app.route({
    method: ['POST', 'PUT'],
    url: '/v1/transit/rewrap/:name',
    config: { op: 'transit.rewrap', access },
    schema: hide,
    handler: async (req, reply) => {
      const warnings: string[] = [];
      const name = keyName(req);
      // associated_data is keyhaven's addition: without it a ciphertext bound to some could not be rewrapped.
      const b = readBody(req.body, {
        name: 'string', ciphertext: 'string', context: 'string', key_version: 'int', nonce: 'string', associated_data: 'string', batch_input: 'array',
      }, warnings);
      if (b.batch_input === undefined && !b.ciphertext) throw new KeyhavenError('invalid_argument', 'missing ciphertext to decrypt');
      const { items, batch } = itemsOf(b, { ciphertext: b.ciphertext, context: b.context, key_version: b.key_version, associated_data: b.associated_data, nonce: b.nonce }, warnings);
      checkContexts(items);
      const s = core.services();
      const keyId = await requireGrant(s, req, name, 'rewrap');
      const k = await keyFor(s, name, items);
      const outcomes = await runItems(items, async (item) => {
        const d = await open(s, name, keyId, item);
        try {
          return encrypt(s, name, k, item, d.plaintext);
        } finally {
          d.plaintext.fill(0);
        }
      });
      return answer(req, reply, { op: 'rewrap', name, batch, items, outcomes, warnings, emptyResult: {}, batchAlwaysOk: true });
    },
  });

  app.route({
    method: ['POST', 'PUT'],
    url: '/v1/transit/datakey/:kind/:name',
    config: { op: 'transit.datakey', access },
    schema: hide,
    handler: async (req, reply) => {
      const warnings: string[] = [];
      const name = keyName(req);
      const kind = (req.params as { kind: string }).kind;
      if (kind !== 'plaintext' && kind !== 'wrapped') throw new KeyhavenError('invalid_argument', 'Invalid path, must be \'plaintext\' or \'wrapped\'');
      req.auditNote.details.kind = kind;
      const b = readBody(req.body, { name: 'string', plaintext: 'string', context: 'string', nonce: 'string', bits: 'int', key_version: 'int' }, warnings);
      const bits = b.bits ?? 256;
      if (bits !== 128 && bits !== 256 && bits !== 512) throw new KeyhavenError('invalid_argument', 'invalid bit length');
      const item: Item = { context: b.context, key_version: b.key_version, nonce: b.nonce };
      const s = core.services();
      await requireGrant(s, req, name, 'datakey');
      const k = await keyFor(s, name, [item]);
      const outcomes = await runItems([item], () => {
        if (item.nonce) throw new KeyhavenError('invalid_argument', NONCE_REFUSED);
        const key = randomBytes(bits / 8);
        try {
          const out = encrypt(s, name, k, item, key);
          return kind === 'plaintext' ? { ...out, plaintext: key.toString('base64') } : out;
        } finally {
          key.fill(0);
        }
      });
      return answer(req, reply, { op: 'datakey', name, batch: false, items: [item], outcomes, warnings, emptyResult: {} });
    },
  });
}
