import { KeyhavenError } from '../errors.js';

// key_id = kh1:<store id>:<key ref>:<version>:<version tag>. Store id, key ref
// and version tag are random, so a key_id is never reused: not by a store
// re-created from scratch, nor by two copies of one store rotated separately.
// It names no secret and is safe to log.
const KEY_ID = /^kh1:([0-9a-f]{16}):([0-9a-f]{16}):([1-9][0-9]{0,9}):([0-9a-f]{16})$/;

export interface ParsedKeyId {
  readonly storeId: string;
  readonly keyRef: string;
  readonly version: number;
  readonly tag: string;
}

export function formatKeyId(storeId: string, keyRef: string, version: number, tag: string): string {
  return `kh1:${storeId}:${keyRef}:${version}:${tag}`;
}

export function parseKeyId(keyId: string): ParsedKeyId {
  const m = KEY_ID.exec(keyId);
  if (!m) throw new KeyhavenError('unknown_key_id', `key_id ${JSON.stringify(keyId.slice(0, 80))} was not issued by keyhaven`);
  const version = Number(m[3]);
  if (version > 0xffffffff) throw new KeyhavenError('unknown_key_id', `key_id ${JSON.stringify(keyId.slice(0, 80))} names a version keyhaven never issues`);
  return { storeId: m[1]!, keyRef: m[2]!, version, tag: m[4]! };
}
