import { CBC_BLOCK_SIZE, GCM_NONCE_SIZE, GCM_TAG_SIZE, XNONCE_INFO_SIZE } from './aes.js';
import { splitKmsV1 } from './kms-v1.js';
import { DEK_SOURCE_TYPE, splitKmsV2 } from './kms-v2.js';
import { SECRETBOX_NONCE_SIZE, SECRETBOX_OVERHEAD } from './local-forms.js';
import { ENC_PREFIX, hasPrefix, PREFIX, PROTOBUF_MAGIC, splitNamed } from './prefixes.js';

/** What a stored value is, without any key. */
export type StorageForm =
  | { kind: 'unencrypted'; encoding: 'protobuf' | 'json' | 'unknown' } // identity writes values unchanged, so it lands here too
  | { kind: 'aescbc' | 'aesgcm' | 'secretbox'; keyName: string }
  | { kind: 'kms-v1'; provider: string }
  | {
      kind: 'kms-v2';
      provider: string;
      keyId: string;
      dekSourceType: 'aes-gcm-key' | 'hkdf-sha256-xnonce-aes-gcm-seed';
      annotations: string[] /* annotation keys only */;
    }
  | { kind: 'malformed'; form: string /* e.g. 'kms-v2' */; provider?: string; reason: string };

type LocalKind = 'aescbc' | 'aesgcm' | 'secretbox';

/** The smallest data each local transformer can have produced, and why. */
function localProblem(kind: LocalKind, n: number): string | undefined {
  switch (kind) {
    case 'aesgcm':
      return n < GCM_NONCE_SIZE + GCM_TAG_SIZE ? `${n} bytes of data, shorter than nonce + tag (${GCM_NONCE_SIZE + GCM_TAG_SIZE})` : undefined;
    case 'aescbc':
      if (n < 2 * CBC_BLOCK_SIZE) return `${n} bytes of data, shorter than IV + one block (${2 * CBC_BLOCK_SIZE})`;
      return n % CBC_BLOCK_SIZE !== 0 ? `${n} bytes of data, not whole ${CBC_BLOCK_SIZE}-byte blocks` : undefined;
    case 'secretbox':
      return n < SECRETBOX_NONCE_SIZE + SECRETBOX_OVERHEAD
        ? `${n} bytes of data, shorter than nonce + tag (${SECRETBOX_NONCE_SIZE + SECRETBOX_OVERHEAD})`
        : undefined;
  }
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function providerOf(value: Buffer, prefix: string): { provider?: string } {
  const named = splitNamed(value, prefix);
  return named ? { provider: named.name } : {};
}

function unencrypted(value: Buffer): StorageForm {
  if (hasPrefix(value, PROTOBUF_MAGIC.toString('latin1'))) return { kind: 'unencrypted', encoding: 'protobuf' };
  // The JSON serializer writes a bare object; allow leading whitespace all the same.
  const first = value.find((b) => b !== 0x20 && b !== 0x0a && b !== 0x0d && b !== 0x09);
  if (first === 0x7b) return { kind: 'unencrypted', encoding: 'json' };
  return { kind: 'unencrypted', encoding: 'unknown' };
}

/** Classifies a stored value by its prefix and checks its layout. Never throws. */
export function classifyValue(value: Buffer): StorageForm {
  try {
    return classify(value);
  } catch (e) {
    return { kind: 'malformed', form: 'unknown', reason: `unexpected: ${errorText(e)}` };
  }
}

function classify(value: Buffer): StorageForm {
  if (!hasPrefix(value, ENC_PREFIX)) return unencrypted(value);

  if (hasPrefix(value, PREFIX.kmsV2)) {
    try {
      const { provider, object } = splitKmsV2(value);
      const seed = object.encryptedDEKSourceType === DEK_SOURCE_TYPE.HKDF_SHA256_XNONCE_AES_GCM_SEED;
      // The data's own minimum: in seed mode info + nonce + tag, else nonce + tag.
      const min = (seed ? XNONCE_INFO_SIZE : 0) + GCM_NONCE_SIZE + GCM_TAG_SIZE;
      if (object.encryptedData.length < min) {
        return {
          kind: 'malformed',
          form: 'kms-v2',
          provider,
          reason: `encrypted data is ${object.encryptedData.length} bytes, shorter than the ${min} its mode needs`,
        };
      }
      return {
        kind: 'kms-v2',
        provider,
        keyId: object.keyID,
        dekSourceType: seed ? 'hkdf-sha256-xnonce-aes-gcm-seed' : 'aes-gcm-key',
        annotations: Object.keys(object.annotations).sort(),
      };
    } catch (e) {
      return { kind: 'malformed', form: 'kms-v2', ...providerOf(value, PREFIX.kmsV2), reason: errorText(e) };
    }
  }

  if (hasPrefix(value, PREFIX.kmsV1)) {
    try {
      const { provider, encryptedData } = splitKmsV1(value);
      // GCM (1.25+) needs nonce + tag; CBC (older) needs IV + a block: the smaller is 28.
      if (encryptedData.length < GCM_NONCE_SIZE + GCM_TAG_SIZE) {
        const reason = `encrypted data is ${encryptedData.length} bytes, too short for AES-GCM or AES-CBC`;
        return { kind: 'malformed', form: 'kms-v1', provider, reason };
      }
      return { kind: 'kms-v1', provider };
    } catch (e) {
      return { kind: 'malformed', form: 'kms-v1', ...providerOf(value, PREFIX.kmsV1), reason: errorText(e) };
    }
  }

  for (const kind of ['aescbc', 'aesgcm', 'secretbox'] as const) {
    if (!hasPrefix(value, PREFIX[kind])) continue;
    const named = splitNamed(value, PREFIX[kind]);
    if (!named) return { kind: 'malformed', form: kind, reason: `no ':' ends the key name after ${JSON.stringify(PREFIX[kind])}` };
    const problem = localProblem(kind, named.rest.length);
    if (problem) return { kind: 'malformed', form: kind, reason: `key ${JSON.stringify(named.name)}: ${problem}` };
    return { kind, keyName: named.name };
  }

  const text = value.toString('latin1');
  for (const p of Object.values(PREFIX)) {
    if (p.startsWith(text)) return { kind: 'malformed', form: 'truncated-prefix', reason: `value ends inside the prefix ${JSON.stringify(p)}` };
  }
  // A prefix this keyhaven does not know (a future provider, or a truncated one).
  // Name only `k8s:enc:<type>:<version>:`, never the bytes after it.
  let end = ENC_PREFIX.length;
  for (let colons = 0; colons < 2 && end < value.length && end < 64; end++) if (value[end] === 0x3a) colons++;
  const head = value.subarray(0, end).toString('latin1').replace(/[^\x20-\x7e]/g, '?');
  return { kind: 'malformed', form: 'unknown-prefix', reason: `unrecognised encryption prefix ${JSON.stringify(head)}` };
}
