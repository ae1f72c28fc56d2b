import { KeyhavenError } from '../errors.js';
import type { SealKind, SealRecord } from './seal.js';

/**
 * Refuses a stored record made by another kind of seal: switching seal kinds
 * needs a migration, and guessing would lose the root key.
 */
export function requireKind(record: SealRecord | undefined, kind: SealKind): void {
  const found: unknown = record?.kind;
  if (found !== kind) {
    const what = typeof found === 'string' ? `of kind "${found}"` : 'missing its kind';
    throw new KeyhavenError('config_invalid', `the stored seal record is ${what}, but the configured seal is ${kind}`);
  }
}
