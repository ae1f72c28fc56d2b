import { aeadOpen, NONCE_BYTES, TAG_BYTES } from '../../../crypto/aead.js';
import { kekAad, sealUnderLocalKek } from '../keyhaven/remote-envelope.js';
import { KeyhavenError } from '../../../errors.js';
import { ENVELOPE_FORMAT, formatByteText, formatOwner } from '../../envelope-formats.js';

// What the aws-kms provider hands the apiserver as a ciphertext. The first
// byte says which form it is, so a cluster that turns the local KEK on or off
// keeps reading everything written before. The bytes differ from the keyhaven
// provider's (0x6b, 0x02, 0x03), so a ciphertext taken to the wrong provider
// gets a precise error:
//   0x41 ('A')  the AWS KMS CiphertextBlob of the seed (local KEK off)
//   0x42        nonce | seed sealed under a local KEK | tag; the KMS-wrapped
//               KEK travels in the annotation kek.aws-kms.keyhaven.io (KMS v2)
//   0x43        len (uint16 BE) | KMS-wrapped KEK | nonce | sealed seed | tag
//               (KMS v1beta1 has no annotations)
// The wrapped KEK, with the form byte, is the AES-GCM associated data, so a
// sealed seed cannot be paired with another KEK.
export const AWS_KEK_ANNOTATION = 'kek.aws-kms.keyhaven.io';
export const FORM_AWS_DIRECT = ENVELOPE_FORMAT.AWS_DIRECT;
export const FORM_AWS_KEK_ANNOTATED = ENVELOPE_FORMAT.AWS_KEK_ANNOTATED;
export const FORM_AWS_KEK_EMBEDDED = ENVELOPE_FORMAT.AWS_KEK_EMBEDDED;

// AWS KMS accepts CiphertextBlobs of at most 6144 bytes; one for a 32-byte KEK is about 180.
const MAX_BLOB = 6144;
const MIN_SEALED = NONCE_BYTES + TAG_BYTES + 1;

export type AwsEnvelope =
  | { readonly form: typeof FORM_AWS_DIRECT; readonly blob: Buffer }
  | { readonly form: typeof FORM_AWS_KEK_ANNOTATED | typeof FORM_AWS_KEK_EMBEDDED; readonly wrapped: Buffer; readonly sealed: Buffer };

export function direct(blob: Buffer): Buffer {
  const out = Buffer.allocUnsafe(1 + blob.length);
  out[0] = FORM_AWS_DIRECT;
  blob.copy(out, 1);
  return out;
}

const AWS_FORMS = { annotated: FORM_AWS_KEK_ANNOTATED, embedded: FORM_AWS_KEK_EMBEDDED } as const;

/** Seals a seed under a local KEK; `embed` carries the wrapped KEK inside (v1beta1). */
export function sealWithAwsKek(kek: Buffer, wrapped: Buffer, seed: Buffer, embed: boolean): Buffer {
  return sealUnderLocalKek(kek, wrapped, seed, AWS_FORMS, embed);
}

/** Splits a ciphertext into its parts; nothing is authenticated yet (KMS and AES-GCM do that). */
export function parseAwsEnvelope(ciphertext: Buffer, annotations: Readonly<Record<string, Buffer>>): AwsEnvelope {
  const form = ciphertext[0];
  if (form === undefined) throw new KeyhavenError('invalid_argument', 'ciphertext is empty');
  if (form === FORM_AWS_DIRECT) {
    if (ciphertext.length < 2) throw new KeyhavenError('integrity', 'ciphertext is truncated');
    return { form, blob: ciphertext.subarray(1) };
  }
  if (form === FORM_AWS_KEK_ANNOTATED) {
    const wrapped = annotations[AWS_KEK_ANNOTATION];
    if (!wrapped || wrapped.length === 0) throw new KeyhavenError('invalid_argument', `ciphertext was sealed under a local KEK but the ${AWS_KEK_ANNOTATION} annotation is missing`);
    if (wrapped.length > MAX_BLOB) throw new KeyhavenError('invalid_argument', `annotation ${AWS_KEK_ANNOTATION} is ${wrapped.length} bytes; AWS KMS ciphertexts are at most ${MAX_BLOB}`);
    if (ciphertext.length < 1 + MIN_SEALED) throw new KeyhavenError('integrity', 'ciphertext is truncated');
    return { form, wrapped, sealed: ciphertext.subarray(1) };
  }
  if (form === FORM_AWS_KEK_EMBEDDED) {
    if (ciphertext.length < 3) throw new KeyhavenError('integrity', 'ciphertext is truncated');
    const n = ciphertext.readUInt16BE(1);
    if (n === 0 || ciphertext.length < 3 + n + MIN_SEALED) throw new KeyhavenError('integrity', 'ciphertext is truncated or its wrapped KEK length is wrong');
    return { form, wrapped: ciphertext.subarray(3, 3 + n), sealed: ciphertext.subarray(3 + n) };
  }
  if (formatOwner(form) === 'keyhaven') {
    throw new KeyhavenError('invalid_argument', `ciphertext has format byte ${formatByteText(form)}: it was made by keyhaven's key server provider, not by aws-kms`);
  }
  throw new KeyhavenError('invalid_argument', `ciphertext has unknown format byte 0x${form.toString(16).padStart(2, '0')}; it was not made by keyhaven's aws-kms provider`);
}

export function openWithAwsKek(kek: Buffer, env: Extract<AwsEnvelope, { wrapped: Buffer }>): Buffer {
  return aeadOpen(kek, env.sealed, kekAad(env.form, env.wrapped));
}
