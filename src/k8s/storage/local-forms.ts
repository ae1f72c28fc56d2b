import { randomBytes } from 'node:crypto';
import { KeyhavenError } from '../../errors.js';
import { cbcOpen, cbcSeal, gcmOpen, gcmSeal } from './aes.js';
import { hasPrefix, PREFIX, splitNamed } from './prefixes.js';

// The local (non-KMS) providers: `k8s:enc:<aescbc|aesgcm|secretbox>:v1:<key name>:`
// + the transformer's output. aesgcm is nonce|ct|tag with the etcd key as
// authenticated data; aescbc is iv|ct (PKCS#7), unauthenticated.
// secretbox is nonce(24) | XSalsa20-Poly1305 box (tag 16 | ct). node:crypto has no
// XSalsa20-Poly1305, so keyhaven only classifies secretbox values and its test
// writer makes opaque bytes of that layout.

export const SECRETBOX_NONCE_SIZE = 24;
export const SECRETBOX_OVERHEAD = 16;

function prefixFor(kind: 'aescbc' | 'aesgcm' | 'secretbox', keyName: string): Buffer {
  if (keyName.length === 0 || keyName.includes(':')) {
    throw new KeyhavenError('invalid_argument', `${kind} key name ${JSON.stringify(keyName)} must be non-empty without ':'`);
  }
  return Buffer.from(`${PREFIX[kind]}${keyName}:`, 'utf8');
}

/** A value as kube-apiserver's aescbc or aesgcm provider writes it — for tests. */
export function encodeLocal(kind: 'aescbc' | 'aesgcm', keyName: string, key: Buffer, plaintext: Buffer, etcdKey: string): Buffer {
  const data = kind === 'aesgcm' ? gcmSeal(key, plaintext, Buffer.from(etcdKey, 'utf8')) : cbcSeal(key, plaintext);
  return Buffer.concat([prefixFor(kind, keyName), data]);
}

/** Reads an aescbc or aesgcm value back with its key. */
export function openLocal(value: Buffer, key: Buffer, etcdKey: string): { kind: 'aescbc' | 'aesgcm'; keyName: string; plaintext: Buffer } {
  for (const kind of ['aescbc', 'aesgcm'] as const) {
    if (!hasPrefix(value, PREFIX[kind])) continue;
    const named = splitNamed(value, PREFIX[kind]);
    if (!named) throw new KeyhavenError('invalid_argument', `${kind} value has no ':' ending the key name`);
    const plaintext =
      kind === 'aesgcm'
        ? gcmOpen(key, named.rest, Buffer.from(etcdKey, 'utf8'), `aesgcm data (key ${named.name})`)
        : cbcOpen(key, named.rest, `aescbc data (key ${named.name})`);
    return { kind, keyName: named.name, plaintext };
  }
  throw new KeyhavenError('invalid_argument', 'value is not an aescbc or aesgcm value');
}

/** A secretbox-shaped value (prefix, 24-byte nonce, tag and ciphertext of `plaintextLength`), random bytes — for classification tests. */
export function encodeSecretboxShape(keyName: string, plaintextLength: number): Buffer {
  return Buffer.concat([prefixFor('secretbox', keyName), randomBytes(SECRETBOX_NONCE_SIZE + SECRETBOX_OVERHEAD + plaintextLength)]);
}
