import { readFileSync, statSync } from 'node:fs';
import { KeyhavenError } from '../errors.js';

/**
 * Where a secret file is named in messages: `what` ("the HSM PIN file") and
 * optionally the config field that named it ("metrics.tokenFile"). The value
 * read is never part of a message.
 */
export interface SecretFileLabel {
  readonly what: string;
  readonly field?: string;
}

const named = (path: string, l: SecretFileLabel) => `${l.what} ${path}${l.field ? ` (${l.field})` : ''}`;

/** Refuses a file group or others may read or write: a credential others can read is not used. */
export function assertOwnerOnly(path: string, label: SecretFileLabel): void {
  let mode: number;
  try {
    mode = statSync(path).mode;
  } catch (e) {
    throw new KeyhavenError('config_invalid', `cannot read ${named(path, label)}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  if ((mode & 0o077) !== 0) throw new KeyhavenError('config_invalid', `${named(path, label)} is readable or writable by group or others; chmod 600 it`);
}

/**
 * Reads a one-value secret file (an HSM PIN, a bearer token): it must exist,
 * be readable by its owner only, and hold something once surrounding
 * whitespace (the editor's trailing newline) is trimmed.
 */
export function readSecretFile(path: string, label: SecretFileLabel): string {
  assertOwnerOnly(path, label);
  let text: string;
  try {
    text = readFileSync(path, 'utf8').trim();
  } catch (e) {
    throw new KeyhavenError('config_invalid', `cannot read ${named(path, label)}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  if (text === '') throw new KeyhavenError('config_invalid', `${named(path, label)} is empty`);
  return text;
}

/** A secret from a file or an environment variable, whichever the config names (exactly one is set). */
export function readSecret(src: { readonly file?: string | undefined; readonly env?: string | undefined }, label: SecretFileLabel & { readonly envField: string }): string {
  if (src.env) {
    const v = process.env[src.env];
    if (!v) throw new KeyhavenError('config_invalid', `environment variable ${src.env} (${label.envField}) is not set`);
    return v;
  }
  return readSecretFile(src.file!, label);
}
