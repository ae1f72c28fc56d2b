import { randomFillSync } from 'node:crypto';

// Nonces come from the CSPRNG in 4 KiB refills rather than one call per
// message: a call per 12 bytes costs ~10x more, and this is the hot path.
// Bytes are handed out once and never reused.
const POOL_BYTES = 4096;
const pool = Buffer.allocUnsafe(POOL_BYTES);
let offset = POOL_BYTES;

/** Writes n fresh random bytes into target at position at. */
export function fillRandom(target: Buffer, at: number, n: number): void {
  if (n > POOL_BYTES) {
    randomFillSync(target, at, n);
    return;
  }
  if (offset + n > POOL_BYTES) {
    randomFillSync(pool);
    offset = 0;
  }
  pool.copy(target, at, offset, offset + n);
  // Wipe what was handed out so the pool never holds a used nonce.
  pool.fill(0, offset, offset + n);
  offset += n;
}
