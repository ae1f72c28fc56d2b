import { aeadOpen, aeadSealInto, NONCE_BYTES, TAG_BYTES } from '../../../crypto/aead.js';
import { parseHeader } from '../../../crypto/blob.js';
import { KeyhavenError } from '../../../errors.js';
import { ENVELOPE_FORMAT } from '../../envelope-formats.js';

// What the remote provider hands the apiserver as a ciphertext. The first
// byte says which form it is, so a cluster that turns the local KEK on or off
// keeps reading everything written before:
//   'k' (0x6b)  the key server's ciphertext text, kh:v<N>:<base64> (local KEK off)
//   0x02        nonce | seed sealed under a local KEK | tag; the server-wrapped
//               KEK travels in the annotation kek.keyhaven.io (KMS v2)
//   0x03        len (uint16 BE) | server-wrapped KEK | nonce | sealed seed | tag
//               (KMS v1beta1 has no annotations)
// The wrapped KEK is the AES-GCM associated data, with the form byte, so a
// sealed seed cannot be paired with another KEK.
export const KEK_ANNOTATION = 'kek.keyhaven.io';
// The bytes themselves are in envelope-formats.ts, with every other provider's.
export const FORM_DIRECT = ENVELOPE_FORMAT.KEYHAVEN_DIRECT;
export const FORM_KEK_ANNOTATED = ENVELOPE_FORMAT.KEYHAVEN_KEK_ANNOTATED;
export const FORM_KEK_EMBEDDED = ENVELOPE_FORMAT.KEYHAVEN_KEK_EMBEDDED;
/** Bound as context when the server wraps a KEK, so a KEK and a seed can never be swapped. */
export const KEK_CONTEXT = Buffer.from('keyhaven plugin local KEK v1');

const SERVER_CIPHERTEXT = /^kh:v([1-9][0-9]{0,9}):([A-Za-z0-9+/]+={0,2})$/;
// The server's ciphertext of a 32-byte KEK is about 100 characters.
const MAX_WRAPPED = 512;

export interface ServerCiphertext {
  readonly text: string;
  readonly version: number;
  /** The key reference in the blob header (16 hex), as in a key_id. */
  readonly keyRef: string;
}

/** Checks a key server ciphertext's shape and reads its (unauthenticated) key and version. */
export function parseServerCiphertext(text: string, what: string): ServerCiphertext {
  const m = text.length <= 4096 ? SERVER_CIPHERTEXT.exec(text) : null;
  if (!m) throw new KeyhavenError('invalid_argument', `${what} is not a keyhaven server ciphertext`);
  const version = Number(m[1]);
  const header = parseHeader(Buffer.from(m[2]!, 'base64'));
  if (header.version !== version) throw new KeyhavenError('integrity', `${what}: its version label does not match its header (tampered)`);
  return { text, version, keyRef: header.keyRef.toString('hex') };
}

/** The form byte and the wrapped KEK: the associated data of a seed sealed under a local KEK. */
export function kekAad(form: number, wrapped: Buffer): Buffer {
  const out = Buffer.allocUnsafe(1 + wrapped.length);
  out[0] = form;
  wrapped.copy(out, 1);
  return out;
}

/**
 * Seals a seed under a local KEK in a provider's two forms: `annotated`
 * (the wrapped KEK travels in an annotation, KMS v2) or, with `embed`,
 * `embedded` (len | wrapped KEK inside the ciphertext, v1beta1).
 */
export function sealUnderLocalKek(kek: Buffer, wrapped: Buffer, seed: Buffer, forms: { readonly annotated: number; readonly embedded: number }, embed: boolean): Buffer {
  if (!embed) {
    const out = aeadSealInto(kek, seed, kekAad(forms.annotated, wrapped), 1);
    out[0] = forms.annotated;
    return out;
  }
  const prefix = 3 + wrapped.length;
  const out = aeadSealInto(kek, seed, kekAad(forms.embedded, wrapped), prefix);
  out[0] = forms.embedded;
  out.writeUInt16BE(wrapped.length, 1);
  wrapped.copy(out, 3);
  return out;
}

const KEYHAVEN_FORMS = { annotated: FORM_KEK_ANNOTATED, embedded: FORM_KEK_EMBEDDED } as const;

export function sealWithKek(kek: Buffer, wrapped: Buffer, seed: Buffer, embed: boolean): Buffer {
  return sealUnderLocalKek(kek, wrapped, seed, KEYHAVEN_FORMS, embed);
}

export type ParsedEnvelope =
  | { readonly form: typeof FORM_DIRECT; readonly server: ServerCiphertext }
  | { readonly form: typeof FORM_KEK_ANNOTATED | typeof FORM_KEK_EMBEDDED; readonly wrapped: ServerCiphertext; readonly sealed: Buffer };

/** Splits a ciphertext into its parts; nothing is authenticated yet. */
export function parseEnvelope(ciphertext: Buffer, annotations: Readonly<Record<string, Buffer>>): ParsedEnvelope {
  const form = ciphertext[0];
  const minSealed = NONCE_BYTES + TAG_BYTES + 1;
  if (form === FORM_DIRECT) {
    return { form, server: parseServerCiphertext(ciphertext.toString('latin1'), 'ciphertext') };
  }
  if (form === FORM_KEK_ANNOTATED) {
    const wrapped = annotations[KEK_ANNOTATION];
    if (!wrapped) throw new KeyhavenError('invalid_argument', `ciphertext was sealed under a local KEK but the ${KEK_ANNOTATION} annotation is missing`);
    if (wrapped.length > MAX_WRAPPED) throw new KeyhavenError('invalid_argument', `annotation ${KEK_ANNOTATION} is ${wrapped.length} bytes; keyhaven never writes more than ${MAX_WRAPPED}`);
    if (ciphertext.length < 1 + minSealed) throw new KeyhavenError('integrity', 'ciphertext is truncated');
    return { form, wrapped: parseServerCiphertext(wrapped.toString('latin1'), `annotation ${KEK_ANNOTATION}`), sealed: ciphertext.subarray(1) };
  }
  if (form === FORM_KEK_EMBEDDED) {
    if (ciphertext.length < 3) throw new KeyhavenError('integrity', 'ciphertext is truncated');
    const n = ciphertext.readUInt16BE(1);
    if (n > MAX_WRAPPED || ciphertext.length < 3 + n + minSealed) throw new KeyhavenError('integrity', 'ciphertext is truncated or its wrapped KEK length is wrong');
    const wrapped = ciphertext.subarray(3, 3 + n);
    return { form, wrapped: parseServerCiphertext(wrapped.toString('latin1'), 'the wrapped KEK in the ciphertext'), sealed: ciphertext.subarray(3 + n) };
  }
  if (form === undefined) throw new KeyhavenError('invalid_argument', 'ciphertext is empty');
  throw new KeyhavenError('invalid_argument', `ciphertext has unknown format byte 0x${form.toString(16).padStart(2, '0')}; it was not made by keyhaven's key server provider`);
}

export function openWithKek(kek: Buffer, env: Extract<ParsedEnvelope, { wrapped: ServerCiphertext }>): Buffer {
  return aeadOpen(kek, env.sealed, kekAad(env.form, Buffer.from(env.wrapped.text, 'latin1')));
}
