import { z } from 'zod';
import { ROLES, CRYPTO_OPERATIONS } from '../access/roles.js';
import { KEY_NAME } from '../key-name.js';

// Request and response shapes: the same schemas validate requests and
// produce the OpenAPI document.

export const keyNameParam = z.strictObject({
  name: z.string().regex(KEY_NAME, 'must be a key name: 1-128 letters, digits, ".", "_" or "-"'),
});

export const principalNameParam = z.strictObject({
  name: z.string().regex(/^[a-z0-9][a-z0-9._-]{0,63}$/, 'must be a user or app name: 1-64 lower-case letters, digits, ".", "_" or "-"'),
});

/** Standard base64 with padding, at most `maxBytes` once decoded. */
export function base64(maxBytes: number) {
  const maxChars = Math.ceil(maxBytes / 3) * 4;
  return z
    .string()
    .max(maxChars, `must encode at most ${maxBytes} bytes`)
    .regex(/^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/, 'must be standard base64')
    // The character limit alone lets through up to 2 bytes more.
    .refine((s) => (s.length / 4) * 3 - (s.endsWith('==') ? 2 : s.endsWith('=') ? 1 : 0) <= maxBytes, `must encode at most ${maxBytes} bytes`);
}

export const ciphertextString = z
  .string()
  .max(200_000, 'is too long')
  .regex(/^kh:v\d{1,10}:[A-Za-z0-9+/]+={0,2}$/, 'must be a keyhaven ciphertext "kh:v<version>:<base64>"');

export const errorResponse = z.object({
  error: z.object({ code: z.string(), message: z.string(), requestId: z.string() }),
});

const versionInfo = z.object({
  version: z.number(),
  state: z.enum(['active', 'destroyed']),
  createdAt: z.string(),
  destroyedAt: z.string().nullable(),
});

export const keyInfo = z.object({
  name: z.string(),
  state: z.enum(['enabled', 'disabled', 'pending_destruction', 'destroyed']),
  currentVersion: z.number(),
  minDecryptionVersion: z.number(),
  rotationPeriod: z.string().nullable().describe('e.g. "30d", or null for manual rotation only'),
  nextRotationAt: z.string().nullable(),
  destroyAt: z.string().nullable(),
  createdAt: z.string(),
  updatedAt: z.string(),
  versions: z.array(versionInfo),
});

export const roleEnum = z.enum(ROLES);
export const operationEnum = z.enum(CRYPTO_OPERATIONS);

/** One cluster node's KMS plugin, as it last reported (POST /v1/keys/{name}/status). */
const appCluster = z.object({
  cluster: z.string(),
  node: z.string(),
  key: z.string(),
  keyVersion: z.number(),
  keyId: z.string(),
  pluginVersion: z.string(),
  lastSuccess: z.string().nullable(),
  lastSeen: z.string(),
});

export const principalInfo = z.object({
  name: z.string(),
  kind: z.enum(['user', 'app']),
  roles: z.array(roleEnum),
  state: z.enum(['active', 'disabled']),
  description: z.string().nullable(),
  certFingerprint: z.string().nullable(),
  lockedUntil: z.string().nullable(),
  createdAt: z.string(),
  breakGlass: z.literal(true).optional().describe('apps: a break-glass app, which decrypts only inside an open recovery and never encrypts'),
  grants: z.array(z.object({ key: z.string(), operations: z.array(operationEnum), createdAt: z.string(), createdBy: z.string() })).optional(),
  clusters: z.array(appCluster).optional().describe('apps: what their KMS plugins last reported, one entry per cluster node'),
});

export const approvalInfo = z.object({
  id: z.string(),
  operation: z.string(),
  params: z.record(z.string(), z.unknown()),
  requester: z.string(),
  required: z.number(),
  approverRoles: z.array(z.string()),
  approvals: z.array(z.object({ name: z.string(), at: z.string() })),
  state: z.enum(['pending', 'approved', 'executed', 'failed', 'denied', 'expired']),
  createdAt: z.string(),
  expiresAt: z.string(),
  decidedAt: z.string().nullable(),
  result: z.unknown(),
});

export const approvalAccepted = z.object({ approval: approvalInfo });

export const sealStatus = z.object({
  initialized: z.boolean(),
  sealed: z.boolean(),
  kind: z.enum(['keyfile', 'shamir', 'pkcs11']),
  threshold: z.number().optional(),
  shares: z.number().optional(),
  progress: z.number().optional(),
  sealedBy: z.literal('operator').optional(),
  initConfirmed: z.boolean().optional(),
});

/** A duration "30d", "12h", "90m" or null. */
export const periodString = z.string().regex(/^\d{1,9}(s|m|h|d)$/, 'must be a duration such as 90m, 12h or 30d');

export const emptyBody = z.strictObject({}).optional();
