import type { KMSClientConfig } from '@aws-sdk/client-kms';
import type { AwsKmsProviderConfig } from '../../../config/providers/aws-kms.js';
import { KEY_ARN } from '../../../config/providers/aws-kms.js';
import { KeyhavenError } from '../../../errors.js';
import { importOptional } from '../../../optional-package.js';
import type { KmsProvider } from '../../provider.js';
import type { Clock } from '../../runtime/deadline.js';
import { classifyAwsError, classifyCredentialError } from './aws-kms-errors.js';
import { createAwsKmsProvider, type KmsApi } from './aws-kms-provider.js';
import type { ProviderBuildContext } from '../context.js';

export interface SdkKmsApiOptions {
  readonly region: string;
  readonly endpoint?: string;
  readonly profile?: string;
  readonly maxAttempts: number;
  readonly attemptTimeoutMs: number;
  /** Tests only: credentials instead of the SDK's default chain. */
  readonly credentials?: KMSClientConfig['credentials'];
  /** Called once per KMS call with its operation and result ("ok" or an error code). */
  readonly onCall?: (operation: string, result: string) => void;
  /** The clock deadlines are measured on: the provider's (runtime/deadline.ts). */
  readonly now?: Clock;
}

// AWS KMS limits (and so the largest reply this code accepts).
const MAX_BLOB = 6144;

const asBuffer = (u: Uint8Array): Buffer => Buffer.from(u.buffer, u.byteOffset, u.byteLength);

/**
 * KMS through the official AWS SDK. Credentials come from the SDK's default
 * chain; the SDK's own logger stays off (it could print requests).
 */
export async function createSdkKmsApi(o: SdkKmsApiOptions): Promise<KmsApi> {
  // Loaded on demand: the SDK costs ~150 ms at start, only this provider uses it, and it is an
  // optional dependency an install may leave out.
  const sdk = await importOptional('@aws-sdk/client-kms', 'the aws-kms provider', () => import('@aws-sdk/client-kms'));
  const now = o.now ?? Date.now;
  const client = new sdk.KMSClient({
    region: o.region,
    ...(o.endpoint ? { endpoint: o.endpoint } : {}),
    ...(o.profile ? { profile: o.profile } : {}),
    ...(o.credentials ? { credentials: o.credentials } : {}),
    // Retries are ours (below): the SDK's backoff for throttling can outlast the deadline, and then
    // the caller would see "deadline" instead of what AWS answered.
    maxAttempts: 1,
    // throwOnRequestTimeout: without it the SDK only prints a warning and keeps waiting.
    requestHandler: { requestTimeout: o.attemptTimeoutMs, connectionTimeout: o.attemptTimeoutMs, throwOnRequestTimeout: true },
  });

  // The SDK's memoized credential provider (the default chain's, or the one given): cached
  // credentials come back at once, expiring ones are refreshed, concurrent loads are shared.
  const loadCredentials = async (): Promise<void> => {
    await client.config.credentials();
  };

  /**
   * One attempt: credentials first, then the request, both raced against the
   * deadline. The SDK's abortSignal only reaches the HTTP request; a credential
   * provider that never answers (IRSA with STS unreachable, a stuck IMDS) would
   * otherwise keep the call, and every Status sharing it, pending forever.
   */
  function attempt<T>(operation: string, deadlineAt: number, run: (abortSignal: AbortSignal) => Promise<T>): Promise<T> {
    const ac = new AbortController();
    let loading = true;
    const work = (async () => {
      try {
        await loadCredentials();
      } catch (e) {
        throw classifyCredentialError(e, operation);
      }
      loading = false;
      // Credentials came after the deadline: the caller has its answer; send nothing.
      if (ac.signal.aborted) throw new KeyhavenError('unavailable', `AWS KMS ${operation}: AWS credentials could not be loaded in time`);
      try {
        return await run(ac.signal);
      } catch (e) {
        throw classifyAwsError(e, operation);
      }
    })();
    let late = false;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        late = true;
        ac.abort();
        reject(
          loading
            ? new KeyhavenError('unavailable', `AWS KMS ${operation}: AWS credentials could not be loaded in time (the SDK's credential chain did not answer)`)
            : new KeyhavenError('unavailable', `AWS KMS ${operation}: AWS KMS did not answer in time`),
        );
      }, Math.max(1, deadlineAt - now()));
      // Whatever settles after the deadline is dropped (the first settlement wins); a late plaintext is zeroed.
      work.then(
        (v) => {
          const pt = (v as { plaintext?: unknown } | undefined)?.plaintext;
          if (late && Buffer.isBuffer(pt)) pt.fill(0);
          resolve(v);
        },
        reject,
      ).finally(() => clearTimeout(timer));
    });
  }

  /** One KMS call: up to maxAttempts attempts within the deadline; the error is the last answer's. */
  async function send<T>(operation: string, deadlineAt: number, run: (abortSignal: AbortSignal) => Promise<T>): Promise<T> {
    for (let n = 1; ; n++) {
      let err: KeyhavenError;
      try {
        const res = await attempt(operation, deadlineAt, run);
        o.onCall?.(operation, 'ok');
        return res;
      } catch (e) {
        err = e instanceof KeyhavenError ? e : classifyAwsError(e, operation);
        o.onCall?.(operation, err.code);
      }
      if (n >= o.maxAttempts || now() >= deadlineAt || (err.code !== 'unavailable' && err.code !== 'too_many_attempts')) throw err;
      // Exponential backoff with jitter, longer when throttled; never past the deadline.
      const ceiling = (err.code === 'too_many_attempts' ? 100 : 50) * 2 ** (n - 1);
      const delay = Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
      if (now() + delay >= deadlineAt) throw err;
      await new Promise((r) => setTimeout(r, delay));
    }
  }

  const badReply = (operation: string) => new KeyhavenError('unavailable', `AWS KMS ${operation}: the reply lacks the expected fields`);
  const arnOf = (v: unknown, operation: string): string => {
    if (typeof v !== 'string' || !KEY_ARN.test(v)) throw badReply(operation);
    return v;
  };

  return {
    describeKey: (keyId, deadlineAt) =>
      send('describe', deadlineAt, async (abortSignal) => {
        const r = await client.send(new sdk.DescribeKeyCommand({ KeyId: keyId }), { abortSignal });
        const m = r.KeyMetadata;
        if (!m) throw badReply('describe');
        // CustomerMasterKeySpec: the field's deprecated name, all some AWS-compatible services send. An empty value is a missing one.
        return { arn: arnOf(m.Arn, 'describe'), state: m.KeyState, keySpec: m.KeySpec || m.CustomerMasterKeySpec || undefined, keyUsage: m.KeyUsage || undefined };
      }),
    encrypt: (keyId, plaintext, context, deadlineAt) =>
      send('encrypt', deadlineAt, async (abortSignal) => {
        const r = await client.send(new sdk.EncryptCommand({ KeyId: keyId, Plaintext: plaintext, EncryptionContext: { ...context } }), { abortSignal });
        if (!(r.CiphertextBlob instanceof Uint8Array) || r.CiphertextBlob.length === 0 || r.CiphertextBlob.length > MAX_BLOB) throw badReply('encrypt');
        return { blob: Buffer.from(r.CiphertextBlob), keyArn: arnOf(r.KeyId, 'encrypt') };
      }),
    decrypt: (blob, context, keyId, deadlineAt) =>
      send('decrypt', deadlineAt, async (abortSignal) => {
        if (blob.length > MAX_BLOB) throw new KeyhavenError('invalid_argument', `AWS KMS ciphertext is ${blob.length} bytes; KMS accepts at most ${MAX_BLOB}`);
        const r = await client.send(new sdk.DecryptCommand({ CiphertextBlob: blob, EncryptionContext: { ...context }, ...(keyId ? { KeyId: keyId } : {}) }), { abortSignal });
        if (!(r.Plaintext instanceof Uint8Array)) throw badReply('decrypt');
        return { plaintext: asBuffer(r.Plaintext), keyArn: arnOf(r.KeyId, 'decrypt') };
      }),
    close: () => client.destroy(),
  };
}

export async function buildAwsKmsProvider(p: AwsKmsProviderConfig, ctx: ProviderBuildContext): Promise<KmsProvider> {
  const { cfg, logger, metrics } = ctx;
  // check() filled the region in from the ARN.
  const region = p.region!;
  // A bounded label: one endpoint per plugin.
  const server = p.endpoint ?? `aws-kms:${region}`;
  const api = await createSdkKmsApi({
    region,
    ...(p.endpoint ? { endpoint: p.endpoint } : {}),
    ...(p.profile ? { profile: p.profile } : {}),
    maxAttempts: p.maxAttempts,
    attemptTimeoutMs: p.attemptTimeout,
    onCall: (operation, result) => metrics.serverCalls.inc({ server, operation, result }),
  });
  logger.info(
    { keyArn: p.keyArn, region, endpoint: p.endpoint ?? 'default', profile: p.profile ?? 'default chain', cluster: p.cluster, localKek: p.localKek.enabled },
    'AWS KMS provider: credentials from the AWS SDK default chain',
  );
  return createAwsKmsProvider({
    api,
    keyArn: p.keyArn,
    previousKeyArns: p.previousKeyArns,
    cluster: p.cluster,
    encryptionContext: p.encryptionContext,
    localKek: { enabled: p.localKek.enabled, maxUses: p.localKek.maxUses, maxAgeMs: p.localKek.maxAge, cacheSize: p.localKek.cacheSize },
    timeoutMs: p.timeout,
    staleAfterMs: cfg.status.gracePeriod,
    onKekLookup: (result) => metrics.kekLookups.inc({ result }),
    onKekCacheSize: (n) => metrics.kekCacheEntries.set(n),
    onKekRotated: ({ keyId, reason }) => logger.info({ keyId, reason }, 'new local KEK wrapped by AWS KMS'),
  });
}
