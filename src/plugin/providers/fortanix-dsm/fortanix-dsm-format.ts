import { KeyhavenError } from '../../../errors.js';
import { DSM_UUID } from '../../../config/providers/fortanix-dsm.js';
import { ENVELOPE_FORMAT } from '../../envelope-formats.js';

/**
 * The plugin's ciphertext for the fortanix-dsm provider. DSM returns the
 * pieces of an AES-GCM encryption (cipher, iv, tag) and the kid of the
 * security object; the apiserver stores one opaque blob, so they are packed:
 *
 *   0x64 'd' | kid (16 bytes, the UUID) | iv length (1 byte) | iv | tag (16 bytes) | cipher
 *
 * The kid inside lets Decrypt use the object that encrypted, whatever the
 * current one is (old objects keep decrypting after a rekey). Every encryption
 * binds dsmAd(cluster, kid) as GCM additional data: a ciphertext DSM produced
 * for another purpose under the same key does not decrypt here, nor ours
 * elsewhere, and etcd data copied from another cluster (another `cluster`
 * name) fails the tag check even when its DSM app can use the same object.
 * Whoever recovers by hand must send the same `ad` (docs/provider-fortanix-dsm.md).
 */

export const DSM_FORMAT = ENVELOPE_FORMAT.FORTANIX_DSM;
const AD_PREFIX = 'keyhaven.io/kms-plugin/fortanix-dsm/v2';

/**
 * The GCM additional data of a ciphertext: the cluster name and the kid, NUL
 * separated (neither can hold a NUL: the cluster is [a-z0-9.-], the kid a
 * UUID). The kid, not the key name: DSM renames an object when it is rekeyed.
 */
export function dsmAd(cluster: string, kid: string): Buffer {
  return Buffer.from(`${AD_PREFIX}\0cluster=${cluster}\0kid=${kid.toLowerCase()}`, 'ascii');
}
const DSM_TAG_BYTES = 16;
// DSM picks a 96-bit IV for GCM; longer or shorter ones are valid GCM and are carried as they come.
const DSM_IV_MIN = 8;
const DSM_IV_MAX = 32;

export interface DsmCiphertext {
  /** Lower-case UUID of the security object. */
  readonly kid: string;
  readonly iv: Buffer;
  readonly tag: Buffer;
  readonly cipher: Buffer;
}

export function kidToBytes(kid: string): Buffer {
  const k = kid.toLowerCase();
  if (!DSM_UUID.test(k)) throw new KeyhavenError('unavailable', 'DSM answered with a kid that is not a UUID');
  return Buffer.from(k.replace(/-/g, ''), 'hex');
}

function kidFromBytes(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export function packDsmCiphertext(c: DsmCiphertext): Buffer {
  if (c.iv.length < DSM_IV_MIN || c.iv.length > DSM_IV_MAX) throw new KeyhavenError('unavailable', `DSM answered with a ${c.iv.length}-byte IV`);
  if (c.tag.length !== DSM_TAG_BYTES) throw new KeyhavenError('unavailable', `DSM answered with a ${c.tag.length}-byte tag; 16 were asked for`);
  return Buffer.concat([Buffer.from([DSM_FORMAT]), kidToBytes(c.kid), Buffer.from([c.iv.length]), c.iv, c.tag, c.cipher]);
}

/** Reads a ciphertext this provider issued; anything else is refused with invalid_argument before DSM is asked. */
export function parseDsmCiphertext(b: Buffer): DsmCiphertext {
  if (b.length === 0 || b[0] !== DSM_FORMAT) {
    throw new KeyhavenError('invalid_argument', 'ciphertext was not written by the fortanix-dsm provider (unknown format byte)');
  }
  const ivLen = b[17];
  if (b.length < 18 || ivLen === undefined || ivLen < DSM_IV_MIN || ivLen > DSM_IV_MAX || b.length < 18 + ivLen + DSM_TAG_BYTES + 1) {
    throw new KeyhavenError('invalid_argument', `ciphertext is truncated or malformed (${b.length} bytes)`);
  }
  const ivEnd = 18 + ivLen;
  const tagEnd = ivEnd + DSM_TAG_BYTES;
  return {
    kid: kidFromBytes(b.subarray(1, 17)),
    iv: Buffer.from(b.subarray(18, ivEnd)),
    tag: Buffer.from(b.subarray(ivEnd, tagEnd)),
    cipher: Buffer.from(b.subarray(tagEnd)),
  };
}

/** The plugin's key_id for a security object: safe to log, unique per object, and a rekey (a new kid) changes it. */
export function dsmKeyId(kid: string): string {
  return `dsm:${kid.toLowerCase()}`;
}
