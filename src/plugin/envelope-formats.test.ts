import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ENVELOPE_FORMAT, formatOwner } from './envelope-formats.js';

describe('envelope format bytes', () => {
  it('are distinct, so every ciphertext names one provider', () => {
    const bytes = Object.values(ENVELOPE_FORMAT);
    assert.equal(new Set(bytes).size, bytes.length);
  });

  it('keep the values written to etcd so far', () => {
    // A change here makes stored ciphertexts unreadable: these are facts, not choices.
    assert.deepEqual(
      { ...ENVELOPE_FORMAT },
      { EMBEDDED: 0x01, KEYHAVEN_DIRECT: 0x6b, KEYHAVEN_KEK_ANNOTATED: 0x02, KEYHAVEN_KEK_EMBEDDED: 0x03, PKCS11: 0x11, AWS_DIRECT: 0x41, AWS_KEK_ANNOTATED: 0x42, AWS_KEK_EMBEDDED: 0x43, FORTANIX_DSM: 0x64, VAULT: 0x76 },
    );
    assert.equal(ENVELOPE_FORMAT.KEYHAVEN_DIRECT, 'k'.charCodeAt(0));
    assert.equal(ENVELOPE_FORMAT.VAULT, 'v'.charCodeAt(0));
  });

  it('name their provider', () => {
    for (const [name, byte] of Object.entries(ENVELOPE_FORMAT)) assert.ok(formatOwner(byte), name);
    assert.equal(formatOwner(0x42), 'aws-kms');
    assert.equal(formatOwner(0x03), 'keyhaven');
    assert.equal(formatOwner(0xff), undefined);
  });
});
