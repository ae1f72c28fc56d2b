import { KeyhavenError } from '../errors.js';

// The apiserver rejects annotation keys that are not fully qualified domain
// names (a slash breaks every write) and a total above 32 KiB.
export const MAX_ANNOTATIONS_BYTES = 32 * 1024;
const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

export function isFqdn(key: string): boolean {
  if (key.length === 0 || key.length > 253) return false;
  const labels = key.split('.');
  if (labels.length < 2) return false;
  return labels.every((l) => LABEL.test(l));
}

export function validateAnnotations(annotations: Readonly<Record<string, Buffer>> | undefined, side: 'request' | 'reply'): void {
  if (!annotations) return;
  let total = 0;
  for (const [key, value] of Object.entries(annotations)) {
    if (!isFqdn(key)) {
      throw new KeyhavenError(side === 'request' ? 'invalid_argument' : 'internal', `annotation key ${JSON.stringify(key.slice(0, 100))} is not a fully qualified domain name`);
    }
    total += Buffer.byteLength(key) + value.length;
  }
  if (total > MAX_ANNOTATIONS_BYTES) {
    throw new KeyhavenError(side === 'request' ? 'invalid_argument' : 'internal', `annotations total ${total} bytes, above the ${MAX_ANNOTATIONS_BYTES}-byte limit`);
  }
}
