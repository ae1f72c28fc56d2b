import { z } from 'zod';
import { durationMs } from '../duration.js';
import { checkDeadlines, clusterName, localKekSchema, originUrl, plainHttpProblem } from './common.js';

// plugin.yaml provider `type: aws-kms`: an AWS KMS symmetric key wraps the
// apiserver's seeds (or the plugin's local KEKs). Fields are parsed here;
// problems that involve several fields are checked in check(), called after
// parsing. Credentials are never configured here: the AWS SDK's default chain
// finds them (environment, shared files / profile, web identity (IRSA),
// container and instance metadata).

const PARTITION = '(aws|aws-cn|aws-us-gov|aws-iso|aws-iso-b|aws-iso-e|aws-iso-f|aws-eusc)';
const REGION = '[a-z]{2}(-[a-z]+)+-\\d{1,2}';
const ACCOUNT = '\\d{12}';
const KEY_ID = '(mrk-[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})';
// AWS alias names: letters, digits, "/", "_", "-"; "alias/aws/" is reserved for AWS managed keys.
const ALIAS = 'alias/(?!aws/)[A-Za-z0-9/_-]{1,250}';

/** arn:<partition>:kms:<region>:<account>:key/<id> */
export const KEY_ARN = new RegExp(`^arn:${PARTITION}:kms:(${REGION}):(${ACCOUNT}):key/${KEY_ID}$`);
const KEY_OR_ALIAS_ARN = new RegExp(`^arn:${PARTITION}:kms:(${REGION}):(${ACCOUNT}):(key/${KEY_ID}|${ALIAS})$`);

export interface ParsedKmsArn {
  readonly partition: string;
  readonly region: string;
  readonly account: string;
  readonly alias: boolean;
}

/** Reads an AWS KMS key or alias ARN; undefined if it is not one. */
export function parseKmsArn(arn: string): ParsedKmsArn | undefined {
  const m = KEY_OR_ALIAS_ARN.exec(arn);
  if (!m) return undefined;
  return { partition: m[1]!, region: m[2]!, account: m[4]!, alias: m[5]!.startsWith('alias/') };
}

const keyOrAliasArn = z
  .string()
  .max(2048)
  .refine((v) => KEY_OR_ALIAS_ARN.test(v), 'must be a KMS key ARN (arn:aws:kms:<region>:<account>:key/<key id>) or alias ARN (arn:aws:kms:<region>:<account>:alias/<name>)');

const keyArn = z
  .string()
  .max(2048)
  .refine((v) => KEY_ARN.test(v), 'must be KMS key ARNs (arn:aws:kms:<region>:<account>:key/<key id>), not aliases: a key_id names the key itself');

const endpointUrl = originUrl('for example https://vpce-0abc-xyz.kms.eu-west-1.vpce.amazonaws.com');

// CloudTrail records the encryption context in clear: names and values must never be secrets.
const contextEntry = z.string().min(1).max(256);

export const awsKmsProviderSchema = z.strictObject({
  type: z.literal('aws-kms'),
  // The KMS key: a key ARN, or an alias ARN (resolved with DescribeKey at every health check).
  keyArn: keyOrAliasArn,
  // Defaults to the ARN's region; KMS keys are regional, so another region is refused.
  region: z.string().regex(new RegExp(`^${REGION}$`), 'must be an AWS region such as eu-west-1').optional(),
  // A VPC endpoint or other KMS endpoint; default: the public endpoint of the region.
  endpoint: endpointUrl.optional(),
  allowInsecureHttp: z.boolean().default(false),
  // A named profile of the shared AWS config files; default: the SDK's default chain (AWS_PROFILE or "default").
  profile: z.string().regex(/^[A-Za-z0-9_.+=,@-]{1,128}$/, 'must be a profile name from ~/.aws/config').optional(),
  // Bound into every Encrypt/Decrypt as encryption context key keyhaven:cluster, so one cluster
  // cannot decrypt another's seeds even with the same key and role, and CloudTrail names the cluster.
  cluster: clusterName,
  // Extra encryption context pairs. Decrypt needs the very same pairs: never change them while data written with them exists.
  encryptionContext: z.record(contextEntry, contextEntry).default({}),
  // Keys this cluster used before `keyArn`: Decrypt still accepts their key_ids (Encrypt never uses them).
  previousKeyArns: z.array(keyArn).max(16).default([]),
  // Deadline of one plugin call to KMS, SDK retries included: well inside the apiserver's 3 s.
  timeout: durationMs.prefault('2s'),
  // One HTTP attempt gets at most this long before the SDK retries.
  attemptTimeout: durationMs.prefault('1s'),
  // Attempts per call, with backoff, for throttling and unavailability; all within `timeout`.
  maxAttempts: z.number().int().min(1).max(10).default(3),
  localKek: localKekSchema,
});

export type AwsKmsProviderConfig = z.output<typeof awsKmsProviderSchema>;

const RESERVED_CONTEXT_PREFIX = 'keyhaven:';

/** Cross-field checks; returns the problems found (empty when none). Fills in `region` from the ARN. */
export function checkAwsKmsProvider(p: AwsKmsProviderConfig): string[] {
  const problems: string[] = [];
  const arn = parseKmsArn(p.keyArn);
  if (arn) {
    if (p.region !== undefined && p.region !== arn.region) {
      problems.push(`provider.region (${p.region}) differs from the region of provider.keyArn (${arn.region}); KMS keys are regional: use the key's own region (a multi-region replica has its own ARN)`);
    }
    p.region ??= arn.region;
    for (const prev of p.previousKeyArns) {
      if (prev === p.keyArn) problems.push('provider.previousKeyArns: lists provider.keyArn itself');
    }
  }
  if (new Set(p.previousKeyArns).size !== p.previousKeyArns.length) problems.push('provider.previousKeyArns: lists a key twice');
  for (const k of Object.keys(p.encryptionContext)) {
    if (k.startsWith(RESERVED_CONTEXT_PREFIX)) problems.push(`provider.encryptionContext: key ${JSON.stringify(k)} uses the prefix "${RESERVED_CONTEXT_PREFIX}", reserved for the pairs the plugin adds itself (keyhaven:cluster, keyhaven:purpose)`);
  }
  if (Object.keys(p.encryptionContext).length > 16) problems.push('provider.encryptionContext: at most 16 pairs');
  problems.push(...checkDeadlines(p));
  if (p.timeout < 100) problems.push(`provider.timeout (${p.timeout} ms) is too short for a KMS round trip; use at least 100ms`);
  const insecure = p.endpoint && plainHttpProblem('endpoint', p.endpoint, p.allowInsecureHttp, 'seeds and KEKs');
  if (insecure) problems.push(insecure);
  return problems;
}
