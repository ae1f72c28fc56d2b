import { randomBytes, timingSafeEqual } from 'node:crypto';
import { KEY_ARN, parseKmsArn } from '../../../config/providers/aws-kms.js';
import { KeyhavenError, type ErrorCode } from '../../../errors.js';
import { KekCache, type CachedKek } from '../../kek-cache.js';
import { MAX_CIPHERTEXT_BYTES } from '../../limits.js';
import type { KmsProvider } from '../../provider.js';
import { assertConfirmed, isTransient } from '../../status-monitor.js';
import { keyStateError } from './aws-kms-errors.js';
import { AWS_KEK_ANNOTATION, direct, FORM_AWS_DIRECT, openWithAwsKek, parseAwsEnvelope, sealWithAwsKek } from './aws-kms-envelope.js';

/** The three KMS operations the provider uses; errors are already KeyhavenErrors. `deadlineAt` bounds the call, retries included. */
export interface KmsApi {
  describeKey(keyId: string, deadlineAt: number): Promise<{ arn: string; state: string | undefined; keySpec: string | undefined; keyUsage: string | undefined }>;
  encrypt(keyId: string, plaintext: Buffer, context: Readonly<Record<string, string>>, deadlineAt: number): Promise<{ blob: Buffer; keyArn: string }>;
  /** keyId undefined: KMS finds the key in the blob (v1beta1 with several possible keys). */
  decrypt(blob: Buffer, context: Readonly<Record<string, string>>, keyId: string | undefined, deadlineAt: number): Promise<{ plaintext: Buffer; keyArn: string }>;
  close(): void;
}

export interface AwsKmsProviderOptions {
  readonly api: KmsApi;
  /** Key ARN or alias ARN from the config. */
  readonly keyArn: string;
  readonly previousKeyArns: readonly string[];
  readonly cluster: string;
  readonly encryptionContext: Readonly<Record<string, string>>;
  readonly localKek: { readonly enabled: boolean; readonly maxUses: number; readonly maxAgeMs: number; readonly cacheSize: number };
  /** Deadline of one call (and of one whole health check). */
  readonly timeoutMs: number;
  /** Encrypt is refused when KMS has not confirmed the key for this long while checks fail (the Status grace period). */
  readonly staleAfterMs: number;
  readonly now?: () => number;
  readonly onKekLookup?: (result: 'hit' | 'miss' | 'joined') => void;
  readonly onKekCacheSize?: (entries: number) => void;
  readonly onKekRotated?: (event: { keyId: string; reason: string }) => void;
}

export const KEY_ID_PREFIX = 'aws-kms:';
// The largest seed that fits 1024 bytes in every form, with room for AWS's blob (about 150 bytes plus the plaintext).
const MAX_PLAINTEXT = 512;
// Refusals that mean this plugin may no longer use the key: cached KEKs go too,
// so disabling the key in AWS also stops Decrypts from the cache at the next check.
const REVOKED: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['permission_denied', 'unauthenticated', 'not_found', 'key_destroyed', 'key_disabled']);

type Purpose = 'kms-seed' | 'local-kek' | 'health-check';

interface AwsCachedKek extends CachedKek {
  /** The key ARN KMS reported for the unwrap. */
  readonly arn: string;
}

interface LocalKek {
  readonly kek: Buffer;
  readonly wrapped: Buffer;
  readonly arn: string;
  readonly keyId: string;
  readonly createdAt: number;
  uses: number;
}

/** The key_id of a key ARN. AWS exposes no key versions: automatic rotation keeps the ARN, so the key_id too. */
export function keyIdOfArn(arn: string): string {
  return `${KEY_ID_PREFIX}${arn}`;
}

/**
 * The key provider backed by an AWS KMS symmetric key. With the local KEK on,
 * KMS wraps a random KEK once and the plugin seals the apiserver's seeds with
 * it; Decrypt asks KMS only for KEKs it has not seen (AWS charges per request
 * and throttles per account and region).
 */
export function createAwsKmsProvider(opts: AwsKmsProviderOptions): KmsProvider {
  const { api } = opts;
  const now = opts.now ?? Date.now;
  const configured = parseKmsArn(opts.keyArn);
  if (!configured) throw new KeyhavenError('config_invalid', 'provider.keyArn is not a KMS key or alias ARN');
  const previous = new Set(opts.previousKeyArns);
  // Keys this process has seen as the current one (an alias moved meanwhile).
  const seen = new Set<string>();
  const cache = new KekCache<AwsCachedKek>(opts.localKek.cacheSize);
  const unwrapping = new Map<string, Promise<AwsCachedKek>>();

  let currentArn: string | undefined = configured.alias ? undefined : opts.keyArn;
  let blocked: KeyhavenError | undefined;
  let lastSuccessAt: number | undefined;
  // True from a failed check until the next good one: only then does the grace period run out for Encrypt.
  let failing = false;
  let current: LocalKek | undefined;
  let statusKeyId: string | undefined;
  // Bumped when cached KEKs are dropped, so an unwrap still in flight does not put one back.
  let generation = 0;

  const context = (purpose: Purpose): Record<string, string> => ({ ...opts.encryptionContext, 'keyhaven:cluster': opts.cluster, 'keyhaven:purpose': purpose });
  const cacheSize = () => opts.onKekCacheSize?.(cache.size);

  /**
   * Whether Decrypt may use this key. A key ARN in the config: that key, the
   * previous ones, and any the config's alias resolved to in this process.
   * An alias: also any key of the alias's account and region, since the alias
   * may have pointed at it before (AWS still decides with the key policy).
   */
  const acceptable = (arn: string): boolean => {
    if (arn === currentArn || previous.has(arn) || seen.has(arn)) return true;
    if (!configured.alias) return false;
    const k = parseKmsArn(arn);
    return !!k && !k.alias && k.partition === configured.partition && k.region === configured.region && k.account === configured.account;
  };

  const arnOfKeyId = (keyId: string): string => {
    const arn = keyId.startsWith(KEY_ID_PREFIX) ? keyId.slice(KEY_ID_PREFIX.length) : '';
    if (!KEY_ARN.test(arn)) throw new KeyhavenError('unknown_key_id', `key_id ${JSON.stringify(keyId.slice(0, 200))} was not issued by the aws-kms provider`);
    if (!acceptable(arn)) throw new KeyhavenError('unknown_key_id', `key_id ${keyId} names an AWS KMS key this plugin does not use (neither provider.keyArn nor provider.previousKeyArns)`);
    return arn;
  };

  // v1beta1 carries no key_id: name the key to KMS when only one can have been used (AWS's advice), else let KMS read it from the blob.
  const soleKey = (): string | undefined => (!configured.alias && previous.size === 0 ? opts.keyArn : undefined);

  /** KMS Decrypt; in v1beta1 (no key_id) a blob of another key than the sole one named is an unknown key, not corruption. */
  const kmsDecrypt = async (blob: Buffer, purpose: Purpose, keyArn: string | undefined, fromKeyId: boolean) => {
    try {
      return await api.decrypt(blob, context(purpose), keyArn, Date.now() + opts.timeoutMs);
    } catch (e) {
      if (!fromKeyId && e instanceof KeyhavenError && e.code === 'integrity' && /IncorrectKeyException/.test(e.message)) {
        throw new KeyhavenError('unknown_key_id', `ciphertext was made with another AWS KMS key than ${keyArn} (list that key in provider.previousKeyArns if this cluster used it before)`);
      }
      throw e;
    }
  };

  const forget = (reason: KeyhavenError) => {
    blocked = reason;
    if (REVOKED.has(reason.code)) {
      generation += 1;
      cache.drop();
      current?.kek.fill(0);
      current = undefined;
      cacheSize();
    }
  };

  const kekDue = (arn: string): string | undefined => {
    if (!current) return 'first';
    if (current.arn !== arn) return 'the key alias points at another key';
    if (current.uses >= opts.localKek.maxUses) return 'maxUses reached';
    if (now() - current.createdAt >= opts.localKek.maxAgeMs) return 'maxAge reached';
    return undefined;
  };

  /** Encrypts `value` under the key, decrypts the result and compares: the round trip a health check needs. */
  async function roundTrip(arn: string, value: Buffer, purpose: Purpose, deadlineAt: number): Promise<Buffer> {
    const enc = await api.encrypt(arn, value, context(purpose), deadlineAt);
    if (enc.keyArn !== arn) throw new KeyhavenError('integrity', `AWS KMS encrypted under ${enc.keyArn} when asked for ${arn}`);
    const dec = await api.decrypt(enc.blob, context(purpose), arn, deadlineAt);
    try {
      if (dec.keyArn !== arn || dec.plaintext.length !== value.length || !timingSafeEqual(dec.plaintext, value)) {
        throw new KeyhavenError('integrity', 'AWS KMS round trip returned something else than was encrypted');
      }
    } finally {
      dec.plaintext.fill(0);
    }
    return enc.blob;
  }

  async function newKek(arn: string, reason: string, deadlineAt: number): Promise<LocalKek> {
    const kek = randomBytes(32);
    try {
      const wrapped = await roundTrip(arn, kek, 'local-kek', deadlineAt);
      // The embedded form must still fit 1024 bytes with the largest seed.
      if (3 + wrapped.length + 12 + MAX_PLAINTEXT + 16 > MAX_CIPHERTEXT_BYTES) {
        throw new KeyhavenError('internal', `AWS KMS returned a ${wrapped.length}-byte ciphertext for a 32-byte KEK; too large to embed`);
      }
      const keyId = keyIdOfArn(arn);
      cache.set(wrapped.toString('base64'), { kek: Buffer.from(kek), version: 0, arn });
      cacheSize();
      opts.onKekRotated?.({ keyId, reason });
      return { kek, wrapped, arn, keyId, createdAt: now(), uses: 0 };
    } catch (e) {
      kek.fill(0);
      throw e;
    }
  }

  async function unwrap(wrapped: Buffer, keyArn: string | undefined, fromKeyId: boolean): Promise<AwsCachedKek> {
    const text = wrapped.toString('base64');
    const k = `${keyArn ?? ''} ${text}`;
    let p = unwrapping.get(k);
    if (!p) {
      const gen = generation;
      p = (async () => {
        const res = await kmsDecrypt(wrapped, 'local-kek', keyArn, fromKeyId);
        if (res.plaintext.length !== 32) {
          res.plaintext.fill(0);
          throw new KeyhavenError('integrity', 'AWS KMS returned something that is not a local KEK');
        }
        if (!acceptable(res.keyArn)) {
          res.plaintext.fill(0);
          throw new KeyhavenError('unknown_key_id', `the local KEK was wrapped by AWS KMS key ${res.keyArn}, which this plugin does not use`);
        }
        const entry = { kek: res.plaintext, version: 0, arn: res.keyArn };
        // Revoked (or closed) meanwhile: answer this call, keep nothing.
        if (gen === generation) {
          cache.set(text, entry);
          cacheSize();
        }
        return entry;
      })().finally(() => unwrapping.delete(k));
      unwrapping.set(k, p);
      return p;
    }
    opts.onKekLookup?.('joined');
    return p;
  }

  return {
    kind: 'aws-kms',
    maxPlaintextBytes: MAX_PLAINTEXT,
    async healthCheck() {
      // Stamped at the start, as the Status monitor does, so both grace clocks agree.
      const started = now();
      // Deadlines are wall-clock (the SDK aborts by them); `now` may be a test clock.
      const deadlineAt = Date.now() + opts.timeoutMs;
      let arn: string;
      try {
        const meta = await api.describeKey(opts.keyArn, deadlineAt);
        arn = meta.arn;
        const stateError = keyStateError(meta.state, arn);
        if (stateError) throw stateError;
        if (meta.keyUsage !== 'ENCRYPT_DECRYPT' || meta.keySpec !== 'SYMMETRIC_DEFAULT') {
          throw new KeyhavenError('failed_precondition', `AWS KMS key ${arn} is ${meta.keySpec ?? '?'} for ${meta.keyUsage ?? '?'}; the plugin needs a symmetric encryption key (SYMMETRIC_DEFAULT, ENCRYPT_DECRYPT)`);
        }
        if (!configured.alias && arn !== opts.keyArn) throw new KeyhavenError('integrity', `AWS KMS described ${arn} when asked for ${opts.keyArn}`);
        if (opts.localKek.enabled && kekDue(arn)) {
          const next = await newKek(arn, kekDue(arn)!, deadlineAt);
          current?.kek.fill(0);
          current = next;
        } else {
          const probe = randomBytes(32);
          await roundTrip(arn, probe, 'health-check', deadlineAt);
        }
      } catch (e) {
        if (e instanceof KeyhavenError && !isTransient(e.code)) forget(e);
        else failing = true;
        throw e;
      }
      blocked = undefined;
      failing = false;
      currentArn = arn;
      seen.add(arn);
      statusKeyId = opts.localKek.enabled ? current!.keyId : keyIdOfArn(arn);
      lastSuccessAt = started;
      return statusKeyId;
    },
    async encrypt(plaintext, ctx) {
      if (blocked) throw blocked;
      assertConfirmed('AWS KMS', { lastSuccessAt: currentArn === undefined ? undefined : lastSuccessAt, failing, now: now(), staleAfterMs: opts.staleAfterMs });
      if (opts.localKek.enabled) {
        const k = current;
        if (!k) throw new KeyhavenError('unavailable', 'no local KEK yet: AWS KMS has not answered a health check');
        k.uses += 1;
        const ciphertext = sealWithAwsKek(k.kek, k.wrapped, plaintext, !ctx.annotations);
        if (ciphertext.length > MAX_CIPHERTEXT_BYTES) throw new KeyhavenError('internal', 'sealed seed exceeds 1024 bytes');
        return { ciphertext, keyId: k.keyId, keyName: k.arn, keyVersion: 0, ...(ctx.annotations ? { annotations: { [AWS_KEK_ANNOTATION]: k.wrapped } } : {}) };
      }
      // The resolved ARN, not the alias: the reply's key_id must be the one Status reported.
      const arn = currentArn!;
      const res = await api.encrypt(arn, plaintext, context('kms-seed'), Date.now() + opts.timeoutMs);
      if (res.keyArn !== arn) throw new KeyhavenError('integrity', `AWS KMS encrypted under ${res.keyArn} when asked for ${arn}`);
      const ciphertext = direct(res.blob);
      if (ciphertext.length > MAX_CIPHERTEXT_BYTES) throw new KeyhavenError('internal', `AWS KMS returned a ${res.blob.length}-byte ciphertext; the apiserver accepts at most ${MAX_CIPHERTEXT_BYTES}`);
      return { ciphertext, keyId: keyIdOfArn(arn), keyName: arn, keyVersion: 0 };
    },
    async decrypt(ciphertext, keyId, annotations) {
      const env = parseAwsEnvelope(ciphertext, annotations);
      const expected = keyId !== undefined ? arnOfKeyId(keyId) : soleKey();
      if (env.form === FORM_AWS_DIRECT) {
        const res = await kmsDecrypt(env.blob, 'kms-seed', expected, keyId !== undefined);
        if (!acceptable(res.keyArn) || (expected !== undefined && res.keyArn !== expected)) {
          res.plaintext.fill(0);
          throw new KeyhavenError('unknown_key_id', `ciphertext was made with AWS KMS key ${res.keyArn}, which this plugin does not use${expected ? ` (key_id names ${expected})` : ''}`);
        }
        return { plaintext: res.plaintext, keyId: keyIdOfArn(res.keyArn), keyName: res.keyArn, keyVersion: 0 };
      }
      let entry = cache.get(env.wrapped.toString('base64'));
      if (entry) opts.onKekLookup?.('hit');
      else {
        const pending = unwrapping.has(`${expected ?? ''} ${env.wrapped.toString('base64')}`);
        if (!pending) opts.onKekLookup?.('miss');
        entry = await unwrap(env.wrapped, expected, keyId !== undefined);
      }
      if (expected !== undefined && entry.arn !== expected) throw new KeyhavenError('invalid_argument', `ciphertext does not belong to key_id ${keyIdOfArn(expected)}`);
      if (!acceptable(entry.arn)) throw new KeyhavenError('unknown_key_id', `ciphertext was made with AWS KMS key ${entry.arn}, which this plugin does not use`);
      return { plaintext: openWithAwsKek(entry.kek, env), keyId: keyIdOfArn(entry.arn), keyName: entry.arn, keyVersion: 0 };
    },
    async close() {
      generation += 1;
      cache.drop();
      current?.kek.fill(0);
      current = undefined;
      cacheSize();
      api.close();
    },
  };
}
