import { randomBytes, timingSafeEqual } from 'node:crypto';
import { KEY_ARN, parseKmsArn } from '../../../config/providers/aws-kms.js';
import { KeyhavenError, type ErrorCode } from '../../../errors.js';
import { MAX_CIPHERTEXT_BYTES } from '../../limits.js';
import type { KmsProvider } from '../../provider.js';
import type { Clock } from '../../runtime/deadline.js';
import { ACCESS_REVOKED } from '../../runtime/error-class.js';
import type { CachedKek } from '../../runtime/kek-cache.js';
import { createProviderRuntime, type KeyBackend } from '../../runtime/key-backend.js';
import { LocalKekLifecycle, type LocalKekEvents } from '../../runtime/local-kek.js';
import { keyStateError, keyUsageError } from './aws-kms-errors.js';
import { AWS_KEK_ANNOTATION, direct, FORM_AWS_DIRECT, openWithAwsKek, parseAwsEnvelope, sealWithAwsKek } from './aws-kms-envelope.js';

/** The three KMS operations the provider uses; errors are already KeyhavenErrors. `deadlineAt` bounds the call, retries included. */
export interface KmsApi {
  describeKey(keyId: string, deadlineAt: number): Promise<{ arn: string; state: string | undefined; keySpec: string | undefined; keyUsage: string | undefined }>;
  encrypt(keyId: string, plaintext: Buffer, context: Readonly<Record<string, string>>, deadlineAt: number): Promise<{ blob: Buffer; keyArn: string }>;
  /** keyId undefined: KMS finds the key in the blob (v1beta1 with several possible keys). */
  decrypt(blob: Buffer, context: Readonly<Record<string, string>>, keyId: string | undefined, deadlineAt: number): Promise<{ plaintext: Buffer; keyArn: string }>;
  close(): void;
}

export interface AwsKmsProviderOptions extends LocalKekEvents {
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
  /** The clock of the grace period and of deadlines; the KmsApi's must be the same. */
  readonly now?: Clock;
}

const KEY_ID_PREFIX = 'aws-kms:';
// The largest seed that fits 1024 bytes in every form, with room for AWS's blob (about 150 bytes plus the plaintext).
const MAX_PLAINTEXT = 512;
// Refusals that mean this plugin may no longer use the key: cached KEKs go too,
// so disabling the key in AWS also stops Decrypts from the cache at the next check.
const REVOKED: ReadonlySet<ErrorCode> = new Set<ErrorCode>([...ACCESS_REVOKED, 'key_disabled']);

type Purpose = 'kms-seed' | 'local-kek' | 'health-check';

interface AwsCachedKek extends CachedKek {
  /** The key ARN KMS reported for the unwrap. */
  readonly arn: string;
}


/** The key_id of a key ARN. AWS exposes no key versions: automatic rotation keeps the ARN, so the key_id too. */
function keyIdOfArn(arn: string): string {
  return `${KEY_ID_PREFIX}${arn}`;
}

/**
 * The key provider backed by an AWS KMS symmetric key. With the local KEK on,
 * KMS wraps a random KEK once and the plugin seals the apiserver's seeds with
 * it; Decrypt asks KMS only for KEKs it has not seen (AWS charges per request
 * and throttles per account and region).
 */
export function createAwsKmsProvider(opts: AwsKmsProviderOptions): KmsProvider {
  const keks = new LocalKekLifecycle<AwsCachedKek, { arn: string }>(opts.localKek, opts, opts.now);
  return createProviderRuntime(createAwsKmsBackend(opts, keks), {
    graceMs: opts.staleAfterMs,
    timeoutMs: opts.timeoutMs,
    ...(opts.now ? { clock: opts.now } : {}),
    onRefused: (e) => REVOKED.has(e.code) && keks.forget(),
  });
}

/** AWS KMS as a KeyBackend, with the local KEK (when on) from the runtime's lifecycle; its state is the key ARN a probe resolved. */
function createAwsKmsBackend(opts: AwsKmsProviderOptions, keks: LocalKekLifecycle<AwsCachedKek, { arn: string }>): KeyBackend<string> {
  const { api } = opts;
  const configured = parseKmsArn(opts.keyArn);
  if (!configured) throw new KeyhavenError('config_invalid', 'provider.keyArn is not a KMS key or alias ARN');
  const previous = new Set(opts.previousKeyArns);
  // Keys this process has seen as the current one (an alias moved meanwhile).
  const seen = new Set<string>();
  let currentArn: string | undefined = configured.alias ? undefined : opts.keyArn;

  const context = (purpose: Purpose): Record<string, string> => ({ ...opts.encryptionContext, 'keyhaven:cluster': opts.cluster, 'keyhaven:purpose': purpose });

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
  const kmsDecrypt = async (blob: Buffer, purpose: Purpose, keyArn: string | undefined, fromKeyId: boolean, deadlineAt: number) => {
    try {
      return await api.decrypt(blob, context(purpose), keyArn, deadlineAt);
    } catch (e) {
      if (!fromKeyId && e instanceof KeyhavenError && e.code === 'integrity' && /IncorrectKeyException/.test(e.message)) {
        throw new KeyhavenError('unknown_key_id', `ciphertext was made with another AWS KMS key than ${keyArn} (list that key in provider.previousKeyArns if this cluster used it before)`);
      }
      throw e;
    }
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

  /** KMS wraps a new local KEK (a round trip, so a KEK that KMS cannot unwrap is never used). */
  const wrapKek = (arn: string, deadlineAt: number) => async (kek: Buffer) => {
    const wrapped = await roundTrip(arn, kek, 'local-kek', deadlineAt);
    // The embedded form must still fit 1024 bytes with the largest seed.
    if (3 + wrapped.length + 12 + MAX_PLAINTEXT + 16 > MAX_CIPHERTEXT_BYTES) {
      throw new KeyhavenError('internal', `AWS KMS returned a ${wrapped.length}-byte ciphertext for a 32-byte KEK; too large to embed`);
    }
    return { wrapped, keyId: keyIdOfArn(arn), cacheKey: wrapped.toString('base64'), entry: { version: 0, arn }, extra: { arn } };
  };

  /** KMS unwraps a KEK this plugin has not seen (or no longer holds). */
  const unwrapKek = (wrapped: Buffer, keyArn: string | undefined, fromKeyId: boolean, deadlineAt: number) => async (): Promise<AwsCachedKek> => {
    const res = await kmsDecrypt(wrapped, 'local-kek', keyArn, fromKeyId, deadlineAt);
    if (res.plaintext.length !== 32) {
      res.plaintext.fill(0);
      throw new KeyhavenError('integrity', 'AWS KMS returned something that is not a local KEK');
    }
    if (!acceptable(res.keyArn)) {
      res.plaintext.fill(0);
      throw new KeyhavenError('unknown_key_id', `the local KEK was wrapped by AWS KMS key ${res.keyArn}, which this plugin does not use`);
    }
    return { kek: res.plaintext, version: 0, arn: res.keyArn };
  };

  return {
    kind: 'aws-kms',
    service: 'AWS KMS',
    maxPlaintextBytes: MAX_PLAINTEXT,
    async probe(deadlineAt) {
      const meta = await api.describeKey(opts.keyArn, deadlineAt);
      const arn = meta.arn;
      const stateError = keyStateError(meta.state, arn);
      if (stateError) throw stateError;
      const usageError = keyUsageError(meta.keySpec, meta.keyUsage, arn);
      if (usageError) throw usageError;
      if (!configured.alias && arn !== opts.keyArn) throw new KeyhavenError('integrity', `AWS KMS described ${arn} when asked for ${opts.keyArn}`);
      const due = opts.localKek.enabled ? keks.due((c) => (c.arn !== arn ? 'the key alias points at another key' : undefined)) : undefined;
      if (due) {
        await keks.rotate(due, wrapKek(arn, deadlineAt));
      } else {
        const probe = randomBytes(32);
        await roundTrip(arn, probe, 'health-check', deadlineAt);
      }
      currentArn = arn;
      seen.add(arn);
      return { keyId: opts.localKek.enabled ? keks.current!.keyId : keyIdOfArn(arn), state: arn };
    },
    // arn: the key the last good probe resolved (not the alias): the reply's key_id must be the one Status reported.
    async wrap(plaintext, arn, ctx) {
      if (opts.localKek.enabled) {
        const k = keks.use(() => new KeyhavenError('unavailable', 'no local KEK yet: AWS KMS has not answered a health check'));
        const ciphertext = sealWithAwsKek(k.kek, k.wrapped, plaintext, !ctx.annotations);
        if (ciphertext.length > MAX_CIPHERTEXT_BYTES) throw new KeyhavenError('internal', 'sealed seed exceeds 1024 bytes');
        return { ciphertext, keyId: k.keyId, keyName: k.arn, keyVersion: 0, ...(ctx.annotations ? { annotations: { [AWS_KEK_ANNOTATION]: k.wrapped } } : {}) };
      }
      const res = await api.encrypt(arn, plaintext, context('kms-seed'), ctx.deadlineAt);
      if (res.keyArn !== arn) throw new KeyhavenError('integrity', `AWS KMS encrypted under ${res.keyArn} when asked for ${arn}`);
      const ciphertext = direct(res.blob);
      if (ciphertext.length > MAX_CIPHERTEXT_BYTES) throw new KeyhavenError('internal', `AWS KMS returned a ${res.blob.length}-byte ciphertext; the apiserver accepts at most ${MAX_CIPHERTEXT_BYTES}`);
      return { ciphertext, keyId: keyIdOfArn(arn), keyName: arn, keyVersion: 0 };
    },
    async unwrap(ciphertext, keyId, annotations, ctx) {
      const env = parseAwsEnvelope(ciphertext, annotations);
      const expected = keyId !== undefined ? arnOfKeyId(keyId) : soleKey();
      if (env.form === FORM_AWS_DIRECT) {
        const res = await kmsDecrypt(env.blob, 'kms-seed', expected, keyId !== undefined, ctx.deadlineAt);
        if (!acceptable(res.keyArn) || (expected !== undefined && res.keyArn !== expected)) {
          res.plaintext.fill(0);
          throw new KeyhavenError('unknown_key_id', `ciphertext was made with AWS KMS key ${res.keyArn}, which this plugin does not use${expected ? ` (key_id names ${expected})` : ''}`);
        }
        return { plaintext: res.plaintext, keyId: keyIdOfArn(res.keyArn), keyName: res.keyArn, keyVersion: 0 };
      }
      const text = env.wrapped.toString('base64');
      // Joined only with unwraps that expect the same key: KMS checks the key named.
      const entry = await keks.lookup(text, `${expected ?? ''} ${text}`, unwrapKek(env.wrapped, expected, keyId !== undefined, ctx.deadlineAt));
      if (expected !== undefined && entry.arn !== expected) throw new KeyhavenError('invalid_argument', `ciphertext does not belong to key_id ${keyIdOfArn(expected)}`);
      if (!acceptable(entry.arn)) throw new KeyhavenError('unknown_key_id', `ciphertext was made with AWS KMS key ${entry.arn}, which this plugin does not use`);
      return { plaintext: openWithAwsKek(entry.kek, env), keyId: keyIdOfArn(entry.arn), keyName: entry.arn, keyVersion: 0 };
    },
    async close() {
      keks.forget();
      api.close();
    },
  };
}
