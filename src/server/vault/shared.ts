import type { FastifyRequest } from 'fastify';
import { KeyhavenError } from '../../errors.js';
import { KEY_NAME } from '../../key-name.js';
import type { KeyInfo } from '../../keys/key-store.js';

// Pieces the Vault key and crypto routes share.


/** The route's key name, checked, and noted for the audit record. */
export function keyName(req: FastifyRequest): string {
  const name = (req.params as { name?: unknown }).name;
  if (typeof name !== 'string' || !KEY_NAME.test(name)) {
    throw new KeyhavenError('invalid_argument', 'key name must be 1-128 characters of letters, digits, ".", "_" or "-", starting with a letter or digit');
  }
  req.auditNote.keyName = name;
  return name;
}

/**
 * Vault answers a write to a missing key with 400 and its own message
 * (only reads answer 404): turns not_found into that.
 */
export function writeFailed(message: string): (e: unknown) => never {
  return (e) => {
    if (e instanceof KeyhavenError && e.code === 'not_found') throw new KeyhavenError('invalid_argument', message);
    throw e;
  };
}

/** Vault's min_available_version: the lowest version not trimmed (0 while version 1 exists). */
function minAvailableVersion(k: KeyInfo): number {
  let first = 0;
  for (const v of k.versions) {
    if (v.state !== 'destroyed') break;
    first = v.version + 1;
  }
  return first;
}

/** A key as Vault's GET /transit/keys/:name shows it. */
export function vaultKeyView(k: KeyInfo): Record<string, unknown> {
  const keys: Record<string, number> = {};
  for (const v of k.versions) if (v.state === 'active') keys[String(v.version)] = Math.floor(Date.parse(v.createdAt) / 1000);
  return {
    name: k.name,
    type: 'aes256-gcm96',
    derived: false,
    deletion_allowed: k.deletionAllowed,
    exportable: false,
    allow_plaintext_backup: false,
    keys,
    latest_version: k.currentVersion,
    min_available_version: minAvailableVersion(k),
    min_decryption_version: k.minDecryptionVersion,
    min_encryption_version: k.minEncryptionVersion,
    supports_encryption: true,
    supports_decryption: true,
    supports_derivation: false,
    supports_signing: false,
    auto_rotate_period: k.rotationPeriodS ?? 0,
    imported_key: false,
  };
}
