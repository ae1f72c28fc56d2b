/** The forms a secret byte string could leak in: raw, hex (both cases) and base64 (padded, unpadded, URL-safe). */
export function byteForms(b: Buffer): Record<string, Buffer> {
  return {
    raw: b,
    hex: Buffer.from(b.toString('hex')),
    HEX: Buffer.from(b.toString('hex').toUpperCase()),
    base64: Buffer.from(b.toString('base64')),
    base64NoPad: Buffer.from(b.toString('base64').replace(/=+$/, '')),
    base64url: Buffer.from(b.toString('base64url')),
  };
}
