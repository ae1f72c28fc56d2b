/**
 * Root-key protection. The root key (32 bytes) is what the barrier derives
 * its keys from; a seal is how keyhaven gets it back at start-up.
 *
 * - `keyfile`: the root key is the content of a 0600 file.
 * - `shamir`: the root key exists only in memory, rebuilt from M of N shares
 *   that operators enter after each start.
 * - `pkcs11`: the root key is stored wrapped by a non-extractable AES key
 *   inside an HSM token, and unwrapped through PKCS#11 at start-up.
 *
 * What a seal needs to find the root key again (never the key itself) is a
 * SealRecord, stored in the database's meta table under "seal".
 */
export type SealKind = 'keyfile' | 'shamir' | 'pkcs11';

/** The meta row holding the SealRecord (the server's and restore-check's name for it). */
export const SEAL_META = 'seal';

export interface SealRecord {
  readonly kind: SealKind;
  readonly [field: string]: unknown;
}

export interface InitOptions {
  /** shamir only: how many shares to make (N) and how many rebuild the key (M). */
  readonly shares?: number | undefined;
  readonly threshold?: number | undefined;
}

export interface InitResult {
  readonly rootKey: Buffer;
  readonly record: SealRecord;
  /** shamir only: the shares, to be shown once and never stored. */
  readonly shares?: readonly string[];
}

export interface Seal {
  readonly kind: SealKind;
  /** True when unsealing needs operators to enter shares (shamir). */
  readonly needsShares: boolean;
  /** Makes a new root key for a new store. */
  initialize(opts: InitOptions): Promise<InitResult>;
  /**
   * Recovers the root key. Auto kinds (keyfile, pkcs11) ignore `shares`;
   * shamir needs at least `threshold` distinct valid shares.
   */
  unseal(record: SealRecord, shares?: readonly string[]): Promise<Buffer>;
  /** Releases what the seal holds open (an HSM session). */
  close(): Promise<void>;
}
