import type { FastifyRequest } from 'fastify';
import { z } from 'zod';
import { KeyhavenError } from '../../errors.js';
import { cbcDecrypt, cbcEncrypt, gcmDecrypt, gcmEncrypt, GCM_TAG_BITS, rawSubkey } from '../../keys/raw-cipher.js';
import { principalOf, requireGrant } from '../pipeline/context.js';
import type { Services } from '../core.js';
import { dsmKid, parseObjectName, UUID, type KidIndex } from './objects.js';
import { base64 } from '../schemas.js';

// DSM encrypt and decrypt: raw AES-256 output (cipher, iv, tag) under a
// sub-key of one key version (see keys/raw-cipher.ts), with the app's
// encrypt or decrypt grant on the key, exactly as the native API checks it.

const MAX_PLAIN = 64 * 1024;
const MAX_AD = 4 * 1024;

export const keyDescriptor = z
  .strictObject({
    kid: z.string().regex(UUID, 'must be a UUID').optional(),
    name: z.string().min(1).max(200).optional(),
  })
  .refine((d) => (d.kid === undefined) !== (d.name === undefined), 'give exactly one of kid or name');

const mode = z.enum(['GCM', 'CBC'], { error: 'mode must be "GCM" (preferred) or "CBC"; other DSM modes are not supported' });
const alg = z.enum(['AES'], { error: 'alg must be "AES": keyhaven keys are AES-256' });

export const encryptBody = z.strictObject({
  key: keyDescriptor.optional(),
  alg,
  mode,
  plain: base64(MAX_PLAIN),
  iv: base64(16).optional().describe('CBC only: a caller-chosen 16-byte IV'),
  ad: base64(MAX_AD).optional().describe('GCM only: associated data'),
  tag_len: z.number().int().optional().describe('GCM only: tag length in bits, 96 to 128'),
});

export const decryptBody = z.strictObject({
  key: keyDescriptor.optional(),
  alg: alg.optional(),
  mode,
  cipher: base64(MAX_PLAIN + 16),
  iv: base64(16),
  ad: base64(MAX_AD).optional(),
  tag: base64(16).optional(),
});

export type EncryptBody = z.infer<typeof encryptBody>;
export type DecryptBody = z.infer<typeof decryptBody>;
type Descriptor = z.infer<typeof keyDescriptor>;

const b64 = (s: string) => Buffer.from(s, 'base64');

/**
 * The key name and version a descriptor names, with the app's grant for
 * `op` checked. An unknown kid and a kid of a key without the grant get the
 * same answer, so apps learn nothing of keys they may not use.
 */
async function resolveGranted(s: Services, kids: KidIndex, req: FastifyRequest, d: Descriptor, op: 'encrypt' | 'decrypt'): Promise<{ keyName: string; version: number | undefined }> {
  principalOf(req);
  if (d.kid !== undefined) {
    const denied = new KeyhavenError('permission_denied', `no ${op} grant on security object ${d.kid.toLowerCase()}`);
    const ref = await kids.resolve(s.storeId, d.kid);
    if (!ref) throw denied;
    const keyId = await requireGrant(s, req, ref.keyName, op).catch((e: unknown) => {
      throw e instanceof KeyhavenError && e.code === 'permission_denied' ? denied : e;
    });
    // A key deleted and re-created under the same name: the kid named the old one.
    if (keyId !== ref.keyId) throw denied;
    return { keyName: ref.keyName, version: ref.version };
  }
  const { keyName, version } = parseObjectName(d.name!);
  await requireGrant(s, req, keyName, op);
  if (version !== undefined) {
    // "<name> (version N)" names only versions before the current one.
    const current = (await s.keys.get(keyName)).currentVersion;
    if (version < 1 || version >= current) throw new KeyhavenError('not_found', `no security object named ${JSON.stringify(d.name)}`);
  }
  return { keyName, version };
}

function note(req: FastifyRequest, keyName: string, version: number, kid: string, m: string) {
  req.auditNote.keyName = keyName;
  req.auditNote.keyVersion = version;
  req.auditNote.details.kid = kid;
  req.auditNote.details.mode = m;
}

export async function dsmEncrypt(s: Services, kids: KidIndex, req: FastifyRequest, d: Descriptor, body: EncryptBody) {
  if (body.mode === 'GCM' && body.iv !== undefined) {
    // A caller-chosen GCM IV that repeats gives away the keystream and lets anyone forge tags.
    throw new KeyhavenError('invalid_argument', 'iv is chosen by the server for GCM; omit it (the answer carries the iv to store)');
  }
  if (body.mode === 'CBC' && (body.ad !== undefined || body.tag_len !== undefined)) throw new KeyhavenError('invalid_argument', 'ad and tag_len apply to GCM only');
  if (body.tag_len !== undefined && !GCM_TAG_BITS.includes(body.tag_len)) throw new KeyhavenError('invalid_argument', `tag_len must be one of ${GCM_TAG_BITS.join(', ')} (bits)`);
  const { keyName, version } = await resolveGranted(s, kids, req, d, 'encrypt');
  const plain = b64(body.plain);
  try {
    return await s.keys.withVersionMaterial(keyName, version, 'encrypt', (material, v) => {
      const kid = dsmKid(s.storeId, s.keys.idOf(keyName)!, v);
      note(req, keyName, v, kid, body.mode);
      const key = rawSubkey(material, 'dsm', body.mode);
      try {
        if (body.mode === 'GCM') {
          const out = gcmEncrypt(key, plain, { ad: body.ad === undefined ? undefined : b64(body.ad), tagBits: body.tag_len });
          return { kid, cipher: out.cipher.toString('base64'), iv: out.iv.toString('base64'), tag: out.tag.toString('base64') };
        }
        const out = cbcEncrypt(key, plain, body.iv === undefined ? undefined : b64(body.iv));
        return { kid, cipher: out.cipher.toString('base64'), iv: out.iv.toString('base64') };
      } finally {
        key.fill(0);
      }
    });
  } finally {
    plain.fill(0);
  }
}

export async function dsmDecrypt(s: Services, kids: KidIndex, req: FastifyRequest, d: Descriptor, body: DecryptBody) {
  if (body.mode === 'GCM' && body.tag === undefined) throw new KeyhavenError('invalid_argument', 'tag is required for GCM');
  if (body.mode === 'CBC' && (body.ad !== undefined || body.tag !== undefined)) throw new KeyhavenError('invalid_argument', 'ad and tag apply to GCM only');
  const { keyName, version } = await resolveGranted(s, kids, req, d, 'decrypt');
  return s.keys.withVersionMaterial(keyName, version, 'decrypt', (material, v) => {
    const kid = dsmKid(s.storeId, s.keys.idOf(keyName)!, v);
    note(req, keyName, v, kid, body.mode);
    const key = rawSubkey(material, 'dsm', body.mode);
    try {
      const plain =
        body.mode === 'GCM'
          ? gcmDecrypt(key, b64(body.cipher), b64(body.iv), b64(body.tag!), body.ad === undefined ? undefined : b64(body.ad))
          : cbcDecrypt(key, b64(body.cipher), b64(body.iv));
      const out = { kid, plain: plain.toString('base64') };
      plain.fill(0);
      return out;
    } finally {
      key.fill(0);
    }
  });
}
