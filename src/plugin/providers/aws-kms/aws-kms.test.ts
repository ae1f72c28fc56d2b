import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, beforeEach, describe, it } from 'node:test';
import { KmsStandIn } from '../../../../test/aws-kms-standin.js';
import { parsePluginConfig } from '../../../config/plugin-config.js';
import { KeyhavenError, type ErrorCode } from '../../../errors.js';
import { isFqdn } from '../../annotations.js';
import type { KmsProvider, ProviderEncryptResult } from '../../provider.js';
import { classifyAwsError, classifyCredentialError, keyStateError, keyUsageError } from './aws-kms-errors.js';
import { AWS_KEK_ANNOTATION } from './aws-kms-envelope.js';
import { createAwsKmsProvider, type AwsKmsProviderOptions } from './aws-kms-provider.js';
import { createSdkKmsApi, type SdkKmsApiOptions } from './aws-kms.js';

// The aws-kms provider with the official AWS SDK against a stand-in for AWS
// KMS on 127.0.0.1 (AWS itself cannot be reached from tests). The stand-in
// verifies SigV4 signatures with the secret key and encrypts with real
// AES-GCM keys; counts of calls it served are asserted, never timings.

const ACCESS_KEY_ID = 'AKIAKEYHAVENTEST0001';
const SECRET = 'planted/Secret+Key0123456789abcdefghijklm';
const SESSION_TOKEN = 'planted-session-token-FwoGZXIvYXdzEJr//////////wEaDKh';
const CLUSTER = 'unit-1';

function useCredentials(secret = SECRET, accessKeyId = ACCESS_KEY_ID): void {
  process.env.AWS_ACCESS_KEY_ID = accessKeyId;
  process.env.AWS_SECRET_ACCESS_KEY = secret;
  process.env.AWS_SESSION_TOKEN = SESSION_TOKEN;
}
// Only the variables above: no shared files, profile or instance metadata from this machine.
process.env.AWS_CONFIG_FILE = '/nonexistent/aws-config';
process.env.AWS_SHARED_CREDENTIALS_FILE = '/nonexistent/aws-credentials';
process.env.AWS_EC2_METADATA_DISABLED = 'true';
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';
delete process.env.AWS_PROFILE;
useCredentials();

async function expectCode(p: Promise<unknown>, code: ErrorCode, message?: RegExp): Promise<KeyhavenError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof KeyhavenError, `expected a KeyhavenError, got ${String(e)}`);
    assert.equal(e.code, code, `code of: ${e.message}`);
    if (message) assert.match(e.message, message);
    return e;
  }
  assert.fail(`expected ${code}, but the call succeeded`);
}

describe('aws-kms provider config', () => {
  const base = { type: 'aws-kms', keyArn: 'arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab', cluster: 'prod-eu-1' };
  const parse = (p: Record<string, unknown>) => parsePluginConfig({ provider: { ...base, ...p } }, 'test');

  it('fills the defaults and takes the region from the ARN', () => {
    const p = parse({}).provider;
    assert.equal(p.type, 'aws-kms');
    if (p.type !== 'aws-kms') return;
    assert.equal(p.region, 'eu-west-1');
    assert.equal(p.timeout, 2000);
    assert.equal(p.attemptTimeout, 1000);
    assert.equal(p.maxAttempts, 3);
    assert.equal(p.localKek.enabled, true);
    assert.deepEqual(p.encryptionContext, {});
    assert.deepEqual(p.previousKeyArns, []);
  });

  it('accepts alias ARNs, multi-region keys, other partitions and a loopback http endpoint', () => {
    for (const keyArn of ['arn:aws:kms:us-east-1:111122223333:alias/k8s-secrets', 'arn:aws:kms:eu-west-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab', 'arn:aws-us-gov:kms:us-gov-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab', 'arn:aws-cn:kms:cn-north-1:111122223333:alias/a/b_c-d']) {
      assert.doesNotThrow(() => parse({ keyArn }), keyArn);
    }
    const p = parse({ endpoint: 'http://127.0.0.1:4566/', encryptionContext: { team: 'platform' } }).provider;
    assert.equal(p.type === 'aws-kms' && p.endpoint, 'http://127.0.0.1:4566');
  });

  const bad: Array<[string, Record<string, unknown>, RegExp]> = [
    ['an ARN of another service', { keyArn: 'arn:aws:s3:::bucket' }, /provider\.keyArn: must be a KMS key ARN/],
    ['a bare key id', { keyArn: '1234abcd-12ab-34cd-56ef-1234567890ab' }, /provider\.keyArn: must be a KMS key ARN/],
    ['an account id of 11 digits', { keyArn: 'arn:aws:kms:eu-west-1:11112222333:key/1234abcd-12ab-34cd-56ef-1234567890ab' }, /provider\.keyArn/],
    ['an AWS managed alias', { keyArn: 'arn:aws:kms:eu-west-1:111122223333:alias/aws/ebs' }, /provider\.keyArn/],
    ['a region unlike the ARN\'s', { region: 'us-east-1' }, /provider\.region \(us-east-1\) differs from the region of provider\.keyArn \(eu-west-1\)/],
    ['a timeout at the apiserver deadline', { timeout: '3s' }, /provider\.timeout \(3000 ms\) must stay below the apiserver's 3 s deadline/],
    ['attemptTimeout above timeout', { timeout: '1s', attemptTimeout: '2s' }, /provider\.attemptTimeout \(2000 ms\) must not exceed provider\.timeout/],
    ['plain http to a remote host', { endpoint: 'http://kms.example.com' }, /provider\.endpoint: http:\/\/kms\.example\.com is plain HTTP/],
    ['an endpoint with credentials', { endpoint: 'https://user:pw@kms.example.com' }, /provider\.endpoint: must be an http\(s\):\/\/host/],
    ['a reserved context key', { encryptionContext: { 'keyhaven:cluster': 'x' } }, /provider\.encryptionContext: key "keyhaven:cluster" uses the prefix "keyhaven:"/],
    ['an empty context value', { encryptionContext: { team: '' } }, /provider\.encryptionContext/],
    ['an alias among previous keys', { previousKeyArns: ['arn:aws:kms:eu-west-1:111122223333:alias/old'] }, /provider\.previousKeyArns\.0: must be KMS key ARNs/],
    ['the current key among previous keys', { previousKeyArns: [base.keyArn] }, /provider\.previousKeyArns: lists provider\.keyArn itself/],
    ['maxAttempts 0', { maxAttempts: 0 }, /provider\.maxAttempts/],
    ['no cluster', { cluster: undefined }, /provider\.cluster/],
    ['an unknown field', { accessKey: 'AKIA' }, /provider\b.*"accessKey"/],
  ];
  for (const [what, p, re] of bad) {
    it(`refuses ${what} with a precise message`, () => {
      assert.throws(() => parse(p), (e: unknown) => e instanceof KeyhavenError && e.code === 'config_invalid' && re.test(e.message));
    });
  }
});

describe('AWS error classification', () => {
  const cases: Array<[Record<string, unknown>, ErrorCode]> = [
    [{ name: 'AccessDeniedException', message: 'not authorized' }, 'permission_denied'],
    [{ name: 'UnrecognizedClientException' }, 'unauthenticated'],
    [{ name: 'ExpiredTokenException' }, 'unauthenticated'],
    [{ name: 'ThrottlingException' }, 'too_many_attempts'],
    [{ name: 'LimitExceededException' }, 'too_many_attempts'],
    [{ name: 'KMSInternalException', $metadata: { httpStatusCode: 500 } }, 'unavailable'],
    [{ name: 'InvalidCiphertextException' }, 'integrity'],
    [{ name: 'IncorrectKeyException' }, 'integrity'],
    [{ name: 'DisabledException' }, 'key_disabled'],
    [{ name: 'KMSInvalidStateException', message: 'arn:aws:kms:eu-west-1:1:key/x is pending deletion.' }, 'key_destroyed'],
    [{ name: 'KMSInvalidStateException', message: 'arn:aws:kms:eu-west-1:1:key/x is pending import.' }, 'key_disabled'],
    [{ name: 'KMSInvalidStateException', message: 'arn:aws:kms:eu-west-1:1:key/x is unavailable.' }, 'unavailable'],
    [{ name: 'NotFoundException' }, 'not_found'],
    [{ name: 'ValidationException' }, 'invalid_argument'],
    [{ name: 'InvalidKeyUsageException' }, 'failed_precondition'],
    [{ name: 'Error', code: 'ECONNREFUSED' }, 'unavailable'],
    [{ name: 'TimeoutError' }, 'unavailable'],
    [{ name: 'SomethingNew', $metadata: { httpStatusCode: 418 } }, 'unavailable'],
    // Credentials the SDK could not load: nothing was refused, so the grace period rides it out.
    [{ name: 'CredentialsProviderError', message: 'Could not load credentials from any providers' }, 'unavailable'],
    [{ name: 'ProviderError', message: 'TimeoutError from instance metadata service' }, 'unavailable'],
    [{ name: 'TokenProviderError', message: 'SSO token could not be refreshed' }, 'unavailable'],
  ];
  for (const [err, code] of cases) {
    it(`${String(err.name)}${err.message ? ` (${String(err.message).slice(-16)})` : ''} → ${code}`, () => {
      assert.equal(classifyAwsError(Object.assign(new Error(String(err.message ?? '')), err), 'encrypt').code, code);
    });
  }

  const loading: Array<[string, Record<string, unknown>, ErrorCode, RegExp]> = [
    ['no credentials in the chain', { name: 'CredentialsProviderError', message: 'Could not load credentials from any providers' }, 'unavailable', /could not be loaded \(CredentialsProviderError: Could not load credentials from any providers\)/],
    ['IMDS throttled or timing out', { name: 'ProviderError', message: 'TimeoutError from instance metadata service', statusCode: 429 }, 'unavailable', /could not be loaded \(ProviderError/],
    ['a socket timeout fetching credentials', { name: 'TimeoutError', code: 'ETIMEDOUT' }, 'unavailable', /could not be loaded \(TimeoutError/],
    ['STS unreachable', { name: 'Error', code: 'ECONNREFUSED' }, 'unavailable', /could not be loaded/],
    ['STS throttling', { name: 'Throttling', $metadata: { httpStatusCode: 400 } }, 'too_many_attempts', /Throttling/],
    ['STS refusing an expired web identity token', { name: 'ExpiredTokenException', $metadata: { httpStatusCode: 400 } }, 'unauthenticated', /loading credentials.*ExpiredTokenException/],
    ['STS refusing an invalid web identity token', { name: 'InvalidIdentityTokenException', $metadata: { httpStatusCode: 400 } }, 'unauthenticated', /InvalidIdentityTokenException/],
    ['STS denying the role', { name: 'AccessDenied', message: 'Not authorized to perform sts:AssumeRoleWithWebIdentity', $metadata: { httpStatusCode: 403 } }, 'permission_denied', /sts:AssumeRoleWithWebIdentity/],
    ['STS failing', { name: 'InternalFailure', $metadata: { httpStatusCode: 500 } }, 'unavailable', /could not be loaded/],
  ];
  for (const [what, err, code, re] of loading) {
    it(`loading credentials: ${what} → ${code}`, () => {
      const e = classifyCredentialError(Object.assign(new Error(String(err.message ?? '')), err), 'describe');
      assert.equal(e.code, code, e.message);
      assert.match(e.message, re);
    });
  }

  it('loading credentials: only the first line of the message is passed on (a failing credential_process appends its stderr)', () => {
    const e = classifyCredentialError(Object.assign(new Error(`Error: Command failed: /usr/local/bin/creds\n{"SecretAccessKey":"${SECRET}"}`), { name: 'CredentialsProviderError' }), 'encrypt');
    assert.equal(e.code, 'unavailable');
    assert.match(e.message, /Command failed/);
    assert.ok(!e.message.includes(SECRET), e.message);
  });

  it('key spec and usage: SYMMETRIC_DEFAULT without KeyUsage is an encryption key; a missing KeySpec or another spec is refused naming what is missing', () => {
    const arn = 'arn:aws:kms:eu-west-1:111122223333:key/x';
    assert.equal(keyUsageError('SYMMETRIC_DEFAULT', 'ENCRYPT_DECRYPT', arn), undefined);
    assert.equal(keyUsageError('SYMMETRIC_DEFAULT', undefined, arn), undefined);
    const refused: Array<[string | undefined, string | undefined, RegExp]> = [
      [undefined, undefined, /DescribeKey reported no KeySpec and no KeyUsage/],
      [undefined, 'ENCRYPT_DECRYPT', /DescribeKey reported no KeySpec \(KeyUsage ENCRYPT_DECRYPT\)/],
      ['RSA_2048', undefined, /is RSA_2048 with no KeyUsage reported/],
      ['RSA_2048', 'ENCRYPT_DECRYPT', /is RSA_2048 for ENCRYPT_DECRYPT/],
      ['SYMMETRIC_DEFAULT', 'GENERATE_VERIFY_MAC', /is SYMMETRIC_DEFAULT for GENERATE_VERIFY_MAC/],
      ['HMAC_256', 'x\ny', /is HMAC_256 for unknown;/],
    ];
    for (const [spec, usage, re] of refused) {
      const e = keyUsageError(spec, usage, arn);
      assert.equal(e?.code, 'failed_precondition', `${spec}/${usage}`);
      assert.match(e.message, re);
      assert.match(e.message, /needs a symmetric encryption key \(KeySpec SYMMETRIC_DEFAULT, KeyUsage ENCRYPT_DECRYPT\)/);
      assert.doesNotMatch(e.message, /\?/, 'no "?" for a missing field');
    }
  });

  it('a key pending deletion: the message says a cancelled deletion leaves the key disabled, to be enabled too', () => {
    const arn = 'arn:aws:kms:eu-west-1:111122223333:key/x';
    for (const e of [keyStateError('PendingDeletion', arn), classifyAwsError(Object.assign(new Error(`${arn} is pending deletion.`), { name: 'KMSInvalidStateException' }), 'decrypt')]) {
      assert.equal(e?.code, 'key_destroyed');
      assert.match(e.message, /cancel the deletion \(aws kms cancel-key-deletion\), then enable the key \(aws kms enable-key\): a key whose deletion is cancelled stays disabled/);
    }
    assert.match(keyStateError('Disabled', arn)!.message, /is disabled \(enable it to use it again: aws kms enable-key\)/);
  });

  it('never passes on the message of a signature error (AWS quotes the canonical request with the session token)', () => {
    const e = classifyAwsError(Object.assign(new Error(`signature mismatch; canonical: x-amz-security-token:${SESSION_TOKEN}`), { name: 'InvalidSignatureException' }), 'decrypt');
    assert.equal(e.code, 'unauthenticated');
    assert.ok(!e.message.includes(SESSION_TOKEN));
  });
});

describe('aws-kms provider with the AWS SDK against a KMS stand-in', () => {
  const standIn = new KmsStandIn({ accessKeyId: ACCESS_KEY_ID, secretAccessKey: SECRET, sessionToken: SESSION_TOKEN });
  let keyArn = '';
  const open: KmsProvider[] = [];
  // Real time plus jumps: deadlines still pass in real time, the grace period can be skipped over.
  let offset = 0;
  const clock = () => Date.now() + offset;

  before(async () => {
    await standIn.start();
    keyArn = standIn.createKey();
  });
  after(async () => {
    for (const p of open) await p.close();
    await standIn.stop();
  });
  beforeEach(() => {
    standIn.heal();
    useCredentials();
  });

  async function provider(o: Partial<AwsKmsProviderOptions> & { maxAttempts?: number; credentials?: SdkKmsApiOptions['credentials'] } = {}): Promise<KmsProvider> {
    const api = await createSdkKmsApi({ region: standIn.region, endpoint: standIn.endpoint, maxAttempts: o.maxAttempts ?? 2, attemptTimeoutMs: 1000, now: o.now ?? clock, ...(o.credentials ? { credentials: o.credentials } : {}) });
    const p = createAwsKmsProvider({
      api,
      keyArn,
      previousKeyArns: [],
      cluster: CLUSTER,
      encryptionContext: { team: 'platform' },
      localKek: { enabled: true, maxUses: 1_000_000, maxAgeMs: 86_400_000, cacheSize: 16 },
      timeoutMs: 2000,
      staleAfterMs: 60_000,
      now: clock,
      ...o,
    });
    open.push(p);
    return p;
  }

  const seed = () => randomBytes(32);
  const decryptV2 = (p: KmsProvider, e: ProviderEncryptResult) => p.decrypt(e.ciphertext, e.keyId, e.annotations ?? {}, { uid: 'u' });

  it('health check against the stand-in: a real DescribeKey + Encrypt + Decrypt round trip; key_id is aws-kms:<key ARN>; the encryption context names the cluster', async () => {
    const p = await provider();
    const before = standIn.calls.length;
    const keyId = await p.healthCheck();
    assert.equal(keyId, `aws-kms:${keyArn}`);
    const calls = standIn.calls.slice(before);
    assert.deepEqual(calls.map((c) => `${c.op}:${c.result}`), ['DescribeKey:ok', 'Encrypt:ok', 'Decrypt:ok']);
    assert.deepEqual(calls[1]!.context, { team: 'platform', 'keyhaven:cluster': CLUSTER, 'keyhaven:purpose': 'local-kek' });
    assert.equal(calls[1]!.accessKeyId, ACCESS_KEY_ID, 'the SDK signed with the credentials from the environment');
    // Later checks keep the KEK and still make a full round trip.
    assert.equal(await p.healthCheck(), keyId);
    assert.deepEqual(standIn.calls.slice(before + 3).map((c) => `${c.op}:${c.context?.['keyhaven:purpose'] ?? '-'}`), ['DescribeKey:-', 'Encrypt:health-check', 'Decrypt:health-check']);
  });

  it('local KEK (stand-in): Encrypt calls no KMS; v2 carries the wrapped KEK in an FQDN annotation, v1beta1 embeds it; both fit 1024 bytes and decrypt', async () => {
    const p = await provider();
    await p.healthCheck();
    const n = standIn.calls.length;
    const s2 = seed();
    const e2 = await p.encrypt(s2, { uid: 'u', annotations: true });
    const s1 = randomBytes(p.maxPlaintextBytes);
    const e1 = await p.encrypt(s1, { uid: 'u', annotations: false });
    assert.equal(standIn.calls.length, n, 'no KMS call for Encrypt');
    assert.equal(e2.keyId, `aws-kms:${keyArn}`);
    assert.deepEqual(Object.keys(e2.annotations ?? {}), [AWS_KEK_ANNOTATION]);
    assert.ok(isFqdn(AWS_KEK_ANNOTATION));
    assert.equal(e1.annotations, undefined);
    assert.ok(e1.ciphertext.length <= 1024, `v1beta1 ciphertext of the largest seed is ${e1.ciphertext.length} bytes`);
    assert.ok(!e2.ciphertext.includes(s2) && !e1.ciphertext.includes(s1));
    assert.deepEqual((await decryptV2(p, e2)).plaintext, s2);
    assert.deepEqual((await p.decrypt(e1.ciphertext, undefined, {}, { uid: 'u' })).plaintext, s1);
    assert.equal(standIn.calls.length, n, 'Decrypt with a cached KEK calls no KMS');
  });

  it('after a restart (stand-in): many seeds under one KEK cost one KMS Decrypt, concurrent ones included', async () => {
    const p = await provider();
    await p.healthCheck();
    const seeds = Array.from({ length: 20 }, seed);
    const enc = await Promise.all(seeds.map((s) => p.encrypt(s, { uid: 'u', annotations: true })));
    const fresh = await provider();
    const n = standIn.count('Decrypt');
    const out = await Promise.all(enc.map((e) => decryptV2(fresh, e)));
    assert.deepEqual(out.map((o) => o.plaintext), seeds);
    assert.equal(standIn.count('Decrypt') - n, 1, 'one unwrap for the shared KEK');
  });

  it('local KEK off (stand-in): each seed is a KMS ciphertext (one call per Encrypt and per Decrypt), both API versions', async () => {
    const p = await provider({ localKek: { enabled: false, maxUses: 1, maxAgeMs: 1, cacheSize: 1 } });
    const keyId = await p.healthCheck();
    const n = standIn.calls.length;
    const s = seed();
    const e = await p.encrypt(s, { uid: 'u', annotations: true });
    assert.equal(e.keyId, keyId);
    assert.equal(e.annotations, undefined);
    assert.equal(e.ciphertext.length, 1 + 32 + 152, 'form byte + an AWS-sized blob');
    assert.deepEqual((await decryptV2(p, e)).plaintext, s);
    assert.deepEqual((await p.decrypt(e.ciphertext, undefined, {}, { uid: 'u' })).plaintext, s);
    assert.deepEqual(standIn.calls.slice(n).map((c) => `${c.op}:${c.context?.['keyhaven:purpose']}`), ['Encrypt:kms-seed', 'Decrypt:kms-seed', 'Decrypt:kms-seed']);
    // A plugin that later turns the local KEK on still reads these.
    const on = await provider();
    assert.deepEqual((await decryptV2(on, e)).plaintext, s);
  });

  it('refuses tampered ciphertexts, another cluster\'s ciphertexts and unknown key_ids precisely, and keeps working (stand-in)', async () => {
    const p = await provider();
    await p.healthCheck();
    const s = seed();
    const e = await p.encrypt(s, { uid: 'u', annotations: true });
    const flipped = Buffer.from(e.ciphertext);
    flipped[flipped.length - 1]! ^= 1;
    await expectCode(p.decrypt(flipped, e.keyId, e.annotations!, { uid: 'u' }), 'integrity');
    const wrapped = Buffer.from(e.annotations![AWS_KEK_ANNOTATION]!);
    wrapped[wrapped.length - 1]! ^= 1;
    await expectCode(p.decrypt(e.ciphertext, e.keyId, { [AWS_KEK_ANNOTATION]: wrapped }, { uid: 'u' }), 'integrity', /InvalidCiphertextException/);
    await expectCode(p.decrypt(e.ciphertext, e.keyId, {}, { uid: 'u' }), 'invalid_argument', /annotation is missing/);
    await expectCode(p.decrypt(e.ciphertext, 'kh:0123456789abcdef:0123456789abcdef:1', e.annotations!, { uid: 'u' }), 'unknown_key_id', /not issued by the aws-kms provider/);
    const otherArn = `arn:aws:kms:${standIn.region}:${standIn.account}:key/00000000-0000-4000-8000-000000000000`;
    await expectCode(p.decrypt(e.ciphertext, `aws-kms:${otherArn}`, e.annotations!, { uid: 'u' }), 'unknown_key_id', /does not use/);
    await expectCode(p.decrypt(Buffer.from('k-keyhaven'), e.keyId, {}, { uid: 'u' }), 'invalid_argument', /key server provider/);
    await expectCode(p.decrypt(Buffer.from([0x7f, 1, 2]), e.keyId, {}, { uid: 'u' }), 'invalid_argument', /unknown format byte 0x7f/);
    // Another cluster using the same key and credentials cannot unwrap this cluster's KEK: the context differs.
    const other = await provider({ cluster: 'other-cluster' });
    await expectCode(decryptV2(other, e), 'integrity', /InvalidCiphertextException/);
    assert.deepEqual((await decryptV2(p, e)).plaintext, s, 'still works after the refusals');
  });

  it('an alias (stand-in): key_id names the resolved key; moving the alias changes key_id, and old ciphertexts still decrypt', async () => {
    const k1 = standIn.createKey();
    const k2 = standIn.createKey();
    const alias = standIn.setAlias('k8s-unit', k1);
    const p = await provider({ keyArn: alias });
    assert.equal(await p.healthCheck(), `aws-kms:${k1}`);
    const s = seed();
    const e = await p.encrypt(s, { uid: 'u', annotations: true });
    standIn.setAlias('k8s-unit', k2);
    assert.equal(await p.healthCheck(), `aws-kms:${k2}`);
    const e2 = await p.encrypt(seed(), { uid: 'u', annotations: true });
    assert.equal(e2.keyId, `aws-kms:${k2}`, 'a new local KEK under the new key');
    // A restarted plugin (nothing cached, never saw k1 as current) still reads k1's ciphertexts: same account and region.
    const fresh = await provider({ keyArn: alias });
    await fresh.healthCheck();
    assert.deepEqual((await decryptV2(fresh, e)).plaintext, s);
  });

  it('a key ARN (stand-in): moving to a new key needs previousKeyArns for old ciphertexts', async () => {
    const oldArn = keyArn;
    const p = await provider();
    await p.healthCheck();
    const s = seed();
    const e = await p.encrypt(s, { uid: 'u', annotations: true });
    const newArn = standIn.createKey();
    const without = await provider({ keyArn: newArn });
    assert.equal(await without.healthCheck(), `aws-kms:${newArn}`);
    await expectCode(decryptV2(without, e), 'unknown_key_id', /neither provider\.keyArn nor provider\.previousKeyArns/);
    const withPrev = await provider({ keyArn: newArn, previousKeyArns: [oldArn] });
    await withPrev.healthCheck();
    assert.deepEqual((await decryptV2(withPrev, e)).plaintext, s);
    // v1beta1 (no key_id): KMS reads the key from the blob, the provider checks it is one of its own.
    const v1 = await p.encrypt(s, { uid: 'u', annotations: false });
    assert.deepEqual((await withPrev.decrypt(v1.ciphertext, undefined, {}, { uid: 'u' })).plaintext, s);
    await expectCode(without.decrypt(v1.ciphertext, undefined, {}, { uid: 'u' }), 'unknown_key_id');
  });

  it('disabled key (stand-in): health check fails key_disabled, Encrypt is refused and cached KEKs are dropped; enabling it again recovers', async () => {
    const arn = standIn.createKey();
    const p = await provider({ keyArn: arn });
    await p.healthCheck();
    const s = seed();
    const e = await p.encrypt(s, { uid: 'u', annotations: true });
    standIn.setKeyState(arn, 'Disabled');
    await expectCode(p.healthCheck(), 'key_disabled', /is disabled/);
    await expectCode(p.encrypt(seed(), { uid: 'u', annotations: true }), 'key_disabled');
    const n = standIn.count('Decrypt');
    await expectCode(decryptV2(p, e), 'key_disabled', /DisabledException/);
    assert.equal(standIn.count('Decrypt') - n, 1, 'the KEK was no longer cached: KMS was asked, and refused');
    standIn.setKeyState(arn, 'Enabled');
    await p.healthCheck();
    assert.deepEqual((await decryptV2(p, e)).plaintext, s);
    await p.encrypt(seed(), { uid: 'u', annotations: true });
  });

  it('key pending deletion (stand-in): key_destroyed, in the health check and from KMS on Decrypt', async () => {
    const arn = standIn.createKey();
    const p = await provider({ keyArn: arn, localKek: { enabled: false, maxUses: 1, maxAgeMs: 1, cacheSize: 1 } });
    await p.healthCheck();
    const e = await p.encrypt(seed(), { uid: 'u', annotations: true });
    standIn.setKeyState(arn, 'PendingDeletion');
    await expectCode(p.healthCheck(), 'key_destroyed', /pending deletion/);
    await expectCode(decryptV2(p, e), 'key_destroyed', /KMSInvalidStateException/);
  });

  it('DescribeKey without KeyUsage (stand-in, as some AWS-compatible services answer): a SYMMETRIC_DEFAULT key is used; without a KeySpec it is refused, naming what is missing', async () => {
    const noUsage = standIn.createKey({ omit: ['KeyUsage'] });
    assert.equal(await (await provider({ keyArn: noUsage })).healthCheck(), `aws-kms:${noUsage}`);
    // Only the deprecated spelling of the spec: still a SYMMETRIC_DEFAULT key.
    const oldSpec = standIn.createKey({ omit: ['KeyUsage', 'KeySpec'] });
    assert.equal(await (await provider({ keyArn: oldSpec })).healthCheck(), `aws-kms:${oldSpec}`);
    const noSpec = standIn.createKey({ omit: ['KeyUsage', 'KeySpec', 'CustomerMasterKeySpec'] });
    await expectCode((await provider({ keyArn: noSpec })).healthCheck(), 'failed_precondition', /DescribeKey reported no KeySpec and no KeyUsage/);
  });

  it('a cancelled deletion (stand-in): the key comes back Disabled, and the message says to enable it; enabled, it works again', async () => {
    const arn = standIn.createKey();
    const p = await provider({ keyArn: arn });
    await p.healthCheck();
    standIn.setKeyState(arn, 'PendingDeletion');
    await expectCode(p.healthCheck(), 'key_destroyed', /then enable the key/);
    // What AWS does on CancelKeyDeletion.
    standIn.setKeyState(arn, 'Disabled');
    await expectCode(p.healthCheck(), 'key_disabled', /is disabled \(enable it/);
    standIn.setKeyState(arn, 'Enabled');
    assert.equal(await p.healthCheck(), `aws-kms:${arn}`);
  });

  it('a key that cannot encrypt (stand-in): failed_precondition; an unknown key: not_found', async () => {
    const hmacKey = standIn.createKey({ keySpec: 'HMAC_256', keyUsage: 'GENERATE_VERIFY_MAC' });
    await expectCode((await provider({ keyArn: hmacKey })).healthCheck(), 'failed_precondition', /needs a symmetric encryption key/);
    const missing = `arn:aws:kms:${standIn.region}:${standIn.account}:key/11111111-2222-4333-8444-555555555555`;
    await expectCode((await provider({ keyArn: missing })).healthCheck(), 'not_found', /NotFoundException/);
  });

  it('throttling (stand-in): the SDK retries up to maxAttempts, then too_many_attempts; success once it passes', async () => {
    const p = await provider({ maxAttempts: 3 });
    const n = standIn.count('DescribeKey', 'ThrottlingException');
    standIn.fail('throttle', { ops: ['DescribeKey'] });
    await expectCode(p.healthCheck(), 'too_many_attempts', /ThrottlingException/);
    const attempts = standIn.count('DescribeKey', 'ThrottlingException') - n;
    // Three attempts unless the backoff (at most 300 ms here) met the 2 s deadline first.
    assert.ok(attempts >= 2 && attempts <= 3, `retried: ${attempts} attempts`);
    standIn.heal();
    standIn.fail('throttle', { ops: ['Encrypt'], times: 1 });
    assert.equal(await p.healthCheck(), `aws-kms:${keyArn}`, 'one throttled attempt is retried');
  });

  it('access denied, expired token, KMS internal error, garbage and a hung stand-in are classified', async () => {
    const p = await provider({ maxAttempts: 1 });
    standIn.fail('access-denied', { ops: ['Encrypt'] });
    await expectCode(p.healthCheck(), 'permission_denied', /not authorized to perform: kms:Encrypt/);
    standIn.heal();
    standIn.fail('expired-token');
    await expectCode(p.healthCheck(), 'unauthenticated', /ExpiredTokenException/);
    standIn.heal();
    standIn.fail('internal');
    await expectCode(p.healthCheck(), 'unavailable', /KMSInternalException/);
    standIn.heal();
    standIn.fail('garbage');
    await expectCode(p.healthCheck(), 'unavailable', /unexpected answer/);
    standIn.heal();
    standIn.fail('hang', { ops: ['DescribeKey'] });
    await expectCode(p.healthCheck(), 'unavailable', /no answer within the deadline \(attempt timeout\)/);
    // A deadline shorter than the SDK's attempt timeout (1 s here) ends the call itself.
    await expectCode((await provider({ maxAttempts: 1, timeoutMs: 500 })).healthCheck(), 'unavailable', /AWS KMS did not answer in time/);
    standIn.heal();
    assert.equal(await p.healthCheck(), `aws-kms:${keyArn}`);
  });

  it('wrong secret key, unknown access key and missing session token (stand-in): unauthenticated, and no credential in the message', async () => {
    const wrongSecret = 'planted-wrong-secret-0123456789abcdefghij';
    useCredentials(wrongSecret);
    const e1 = await expectCode((await provider()).healthCheck(), 'unauthenticated', /InvalidSignatureException/);
    useCredentials(SECRET, 'AKIAUNKNOWNKEY000001');
    const e2 = await expectCode((await provider()).healthCheck(), 'unauthenticated', /UnrecognizedClientException/);
    useCredentials();
    delete process.env.AWS_SESSION_TOKEN;
    const e3 = await expectCode((await provider()).healthCheck(), 'unauthenticated');
    for (const e of [e1, e2, e3]) {
      for (const secret of [SECRET, wrongSecret, SESSION_TOKEN, ACCESS_KEY_ID]) assert.ok(!e.message.includes(secret), `${e.message} holds a credential`);
    }
    assert.ok(standIn.calls.some((c) => c.result === 'InvalidSignatureException'), 'the stand-in did check the signature');
  });

  it('no credentials anywhere in the default chain (stand-in): unavailable (nothing was refused), and no request reaches KMS', async () => {
    delete process.env.AWS_ACCESS_KEY_ID;
    delete process.env.AWS_SECRET_ACCESS_KEY;
    delete process.env.AWS_SESSION_TOKEN;
    const n = standIn.calls.length;
    await expectCode((await provider()).healthCheck(), 'unavailable', /AWS credentials could not be loaded \(CredentialsProviderError/);
    assert.equal(standIn.calls.length, n);
  });

  /**
   * Credentials as a provider function whose behaviour the test switches.
   * They expire within the SDK's 5-minute refresh window, so the SDK asks
   * again before every request, as it does when a refresh is due.
   */
  function switchableCredentials() {
    const state = { mode: 'ok' as 'ok' | 'hang' | 'fail', calls: 0 };
    const credentials = async () => {
      state.calls += 1;
      if (state.mode === 'hang') return new Promise<never>(() => {});
      if (state.mode === 'fail') throw Object.assign(new Error('TimeoutError from instance metadata service'), { name: 'ProviderError', statusCode: 429 });
      return { accessKeyId: ACCESS_KEY_ID, secretAccessKey: SECRET, sessionToken: SESSION_TOKEN, expiration: new Date(Date.now() + 60_000) };
    };
    return { state, credentials };
  }

  // The credential provider below never answers: only the call's deadline can settle these calls.
  it('a credential provider that never answers (IRSA with STS blackholed): health check fails unavailable by the deadline, no request reaches KMS', async () => {
    const timeoutMs = 1000;
    const p = await provider({ credentials: () => new Promise(() => {}), timeoutMs });
    const n = standIn.calls.length;
    await expectCode(p.healthCheck(), 'unavailable', /AWS credentials could not be loaded in time/);
    // Still answering (not stuck on the first call), and still by the deadline.
    await expectCode(p.healthCheck(), 'unavailable', /could not be loaded in time/);
    assert.equal(standIn.calls.length, n);
  });

  it('credentials that stop answering after a good start (stand-in): health check, Encrypt and Decrypt all end by the deadline, concurrent ones too', async () => {
    const timeoutMs = 1000;
    const creds = switchableCredentials();
    const p = await provider({ credentials: creds.credentials, timeoutMs, localKek: { enabled: false, maxUses: 1, maxAgeMs: 1, cacheSize: 1 } });
    await p.healthCheck();
    const s = seed();
    const e = await p.encrypt(s, { uid: 'u', annotations: true });
    assert.deepEqual((await decryptV2(p, e)).plaintext, s);
    assert.ok(creds.state.calls >= 4, `the SDK asked for credentials before each request (${creds.state.calls} times)`);
    creds.state.mode = 'hang';
    await Promise.all([
      expectCode(p.healthCheck(), 'unavailable', /could not be loaded in time/),
      ...Array.from({ length: 5 }, () => expectCode(p.encrypt(seed(), { uid: 'u', annotations: true }), 'unavailable', /could not be loaded in time/)),
      expectCode(decryptV2(p, e), 'unavailable', /could not be loaded in time/),
    ]);
  });

  it('credentials that cannot be loaded (IMDS throttled during a refresh; stand-in): unavailable, cached KEKs keep decrypting and Encrypt works in the grace period; AWS refusing the credentials drops them', async () => {
    const creds = switchableCredentials();
    const p = await provider({ credentials: creds.credentials, maxAttempts: 1 });
    await p.healthCheck();
    const s = seed();
    const e = await p.encrypt(s, { uid: 'u', annotations: true });
    creds.state.mode = 'fail';
    const n = standIn.calls.length;
    await expectCode(p.healthCheck(), 'unavailable', /AWS credentials could not be loaded \(ProviderError: TimeoutError from instance metadata service\)/);
    assert.deepEqual((await decryptV2(p, e)).plaintext, s, 'the cached KEK still decrypts');
    const later = await p.encrypt(seed(), { uid: 'u', annotations: true });
    assert.equal(later.keyId, e.keyId);
    assert.equal(standIn.calls.length, n, 'no request reached KMS');
    // Credentials back: all well again.
    creds.state.mode = 'ok';
    await p.healthCheck();
    // AWS itself refusing the credentials is another matter: unauthenticated fails Status and drops the KEKs.
    standIn.fail('expired-token');
    await expectCode(p.healthCheck(), 'unauthenticated', /ExpiredTokenException/);
    await expectCode(p.encrypt(seed(), { uid: 'u', annotations: true }), 'unauthenticated');
    const d = standIn.count('Decrypt');
    await expectCode(decryptV2(p, e), 'unauthenticated', /ExpiredTokenException/);
    assert.equal(standIn.count('Decrypt') - d, 1, 'the KEK was no longer cached: KMS was asked, and refused');
    standIn.heal();
    await p.healthCheck();
    assert.deepEqual((await decryptV2(p, e)).plaintext, s);
  });

  it('stand-in gone: unavailable; a check that fails keeps Encrypt working until the grace period runs out, then refuses it', async () => {
    const gone = new KmsStandIn({ accessKeyId: ACCESS_KEY_ID, secretAccessKey: SECRET, sessionToken: SESSION_TOKEN });
    await gone.start();
    const arn = gone.createKey();
    const api = await createSdkKmsApi({ region: gone.region, endpoint: gone.endpoint, maxAttempts: 1, attemptTimeoutMs: 1000, now: clock });
    const p = createAwsKmsProvider({ api, keyArn: arn, previousKeyArns: [], cluster: CLUSTER, encryptionContext: {}, localKek: { enabled: true, maxUses: 100, maxAgeMs: 86_400_000, cacheSize: 4 }, timeoutMs: 2000, staleAfterMs: 60_000, now: clock });
    open.push(p);
    await p.healthCheck();
    const s = seed();
    const e = await p.encrypt(s, { uid: 'u', annotations: true });
    await gone.stop();
    await expectCode(p.healthCheck(), 'unavailable', /cannot reach the endpoint \((ECONNREFUSED|ECONNRESET)\)/);
    offset += 30_000;
    await p.encrypt(seed(), { uid: 'u', annotations: true });
    assert.deepEqual((await decryptV2(p, e)).plaintext, s, 'cached KEK decrypts without KMS');
    offset += 31_000;
    await expectCode(p.encrypt(seed(), { uid: 'u', annotations: true }), 'unavailable', /grace period/);
    await gone.start(gone.port);
    try {
      await p.healthCheck();
      await p.encrypt(seed(), { uid: 'u', annotations: true });
    } finally {
      await gone.stop();
    }
  });

  it('a new local KEK after maxUses (stand-in); seeds under the old one still decrypt', async () => {
    const p = await provider({ localKek: { enabled: true, maxUses: 2, maxAgeMs: 86_400_000, cacheSize: 16 } });
    await p.healthCheck();
    const a = await p.encrypt(seed(), { uid: 'u', annotations: true });
    await p.encrypt(seed(), { uid: 'u', annotations: true });
    const kekWraps = () => standIn.calls.filter((c) => c.op === 'Encrypt' && c.context?.['keyhaven:purpose'] === 'local-kek').length;
    const n = kekWraps();
    await p.healthCheck();
    assert.equal(kekWraps() - n, 1, 'maxUses reached: a new KEK at the next check');
    const b = await p.encrypt(seed(), { uid: 'u', annotations: true });
    assert.notDeepEqual(b.annotations![AWS_KEK_ANNOTATION], a.annotations![AWS_KEK_ANNOTATION]);
    assert.equal(b.keyId, a.keyId, 'a local KEK is not a key version: key_id stays');
    await decryptV2(p, a);
    await decryptV2(p, b);
  });
});
