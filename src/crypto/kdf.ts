import { hkdfSync, timingSafeEqual } from 'node:crypto';

/** HKDF-SHA256: derives independent sub-keys from one root key. */
export function deriveKey(ikm: Buffer, info: string, length = 32, salt: Buffer = Buffer.alloc(0)): Buffer {
  return Buffer.from(hkdfSync('sha256', ikm, salt, Buffer.from(info, 'utf8'), length));
}

/** Constant-time equality for secrets; unequal lengths compare false. */
export function constantTimeEqual(a: Buffer, b: Buffer): boolean {
  if (a.length !== b.length) return false;
  return timingSafeEqual(a, b);
}
