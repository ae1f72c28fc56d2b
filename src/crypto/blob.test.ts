import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { KeyhavenError, type ErrorCode } from '../errors.js';
import { aeadOpen, aeadSeal, generateKey, KEY_BYTES, NONCE_BYTES, TAG_BYTES } from './aead.js';
import { BLOB_OVERHEAD, encodeHeader, FORMAT_V1, HEADER_BYTES, KEY_REF_BYTES, openBlob, parseHeader, sealBlob } from './blob.js';
import { constantTimeEqual, deriveKey } from './kdf.js';

function fails(code: ErrorCode): (e: unknown) => true {
  return (e: unknown) => {
    assert.ok(e instanceof KeyhavenError, `expected a KeyhavenError, got ${String(e)}`);
    assert.equal(e.code, code, `expected code ${code}, got ${e.code}: ${e.message}`);
    return true;
  };
}

function flipBit(buf: Buffer, byte: number, bit: number): Buffer {
  const copy = Buffer.from(buf);
  copy[byte] = copy[byte]! ^ (1 << bit);
  return copy;
}

const key = generateKey();
const keyRef = Buffer.from('0123456789abcdef', 'hex');
const VERSION = 7;

// Layout of a v1 blob: format | key ref | version | nonce | body | tag.
function regions(plaintextLength: number): Array<{ name: string; start: number; end: number; code: ErrorCode }> {
  const nonceStart = HEADER_BYTES;
  const bodyStart = nonceStart + NONCE_BYTES;
  const tagStart = bodyStart + plaintextLength;
  return [
    { name: 'format byte', start: 0, end: 1, code: 'invalid_argument' },
    { name: 'key ref', start: 1, end: 1 + KEY_REF_BYTES, code: 'integrity' },
    { name: 'version', start: 1 + KEY_REF_BYTES, end: HEADER_BYTES, code: 'integrity' },
    { name: 'nonce', start: nonceStart, end: bodyStart, code: 'integrity' },
    { name: 'body', start: bodyStart, end: tagStart, code: 'integrity' },
    { name: 'tag', start: tagStart, end: tagStart + TAG_BYTES, code: 'integrity' },
  ];
}

describe('crypto/blob: layout constants', () => {
  it('has a 13-byte header and 41 bytes of overhead', () => {
    assert.equal(KEY_BYTES, 32);
    assert.equal(NONCE_BYTES, 12);
    assert.equal(TAG_BYTES, 16);
    assert.equal(HEADER_BYTES, 13);
    assert.equal(BLOB_OVERHEAD, 41);
  });
});

describe('crypto/blob: round trip', () => {
  it('a 32-byte plaintext seals to a 73-byte blob and opens back', () => {
    const pt = randomBytes(32);
    const blob = sealBlob(key, keyRef, VERSION, pt);
    assert.equal(blob.length, 73);
    assert.deepEqual(openBlob(key, blob), pt);
  });

  it('round-trips plaintexts of many lengths, including empty', () => {
    for (const n of [0, 1, 15, 16, 17, 31, 32, 33, 1000, 65536]) {
      const pt = randomBytes(n);
      const blob = sealBlob(key, keyRef, VERSION, pt);
      assert.equal(blob.length, BLOB_OVERHEAD + n, `length for ${n}-byte plaintext`);
      assert.deepEqual(openBlob(key, blob), pt, `round trip for ${n}-byte plaintext`);
    }
  });

  it('round-trips with a context', () => {
    const pt = Buffer.from('seed');
    const ctx = Buffer.from('keys/abc/versions/1');
    assert.deepEqual(openBlob(key, sealBlob(key, keyRef, VERSION, pt, ctx), ctx), pt);
  });

  it('writes the header it was given: format 0x01, key ref, version big-endian', () => {
    const blob = sealBlob(key, keyRef, 0x01020304, Buffer.from('x'));
    assert.equal(blob[0], FORMAT_V1);
    assert.deepEqual(blob.subarray(1, 9), keyRef);
    assert.deepEqual(blob.subarray(9, 13), Buffer.from([1, 2, 3, 4]));
    const h = parseHeader(blob);
    assert.equal(h.format, FORMAT_V1);
    assert.deepEqual(h.keyRef, keyRef);
    assert.equal(h.version, 0x01020304);
  });

  it('accepts the extreme versions 1 and 0xffffffff', () => {
    for (const v of [1, 0xffffffff]) {
      const blob = sealBlob(key, keyRef, v, Buffer.from('abc'));
      assert.equal(parseHeader(blob).version, v);
      assert.deepEqual(openBlob(key, blob), Buffer.from('abc'));
    }
  });

  it('uses a fresh random nonce: the same plaintext seals differently each time', () => {
    const pt = Buffer.alloc(32, 7);
    const a = sealBlob(key, keyRef, VERSION, pt);
    const b = sealBlob(key, keyRef, VERSION, pt);
    assert.notDeepEqual(a, b);
    assert.notDeepEqual(a.subarray(HEADER_BYTES, HEADER_BYTES + NONCE_BYTES), b.subarray(HEADER_BYTES, HEADER_BYTES + NONCE_BYTES));
  });

  it('does not carry the plaintext in the clear', () => {
    const pt = Buffer.from('a very recognisable plaintext string');
    const blob = sealBlob(key, keyRef, VERSION, pt);
    assert.equal(blob.indexOf(pt), -1);
  });
});

describe('crypto/blob: tampering', () => {
  const pt = randomBytes(32);
  const blob = sealBlob(key, keyRef, VERSION, pt);

  it('the regions cover every byte of the blob exactly once', () => {
    const rs = regions(pt.length);
    assert.equal(rs[0]!.start, 0);
    for (let i = 1; i < rs.length; i++) assert.equal(rs[i]!.start, rs[i - 1]!.end);
    assert.equal(rs[rs.length - 1]!.end, blob.length);
  });

  for (const r of regions(32)) {
    it(`flipping any bit of the ${r.name} fails with ${r.code}`, () => {
      let tried = 0;
      for (let byte = r.start; byte < r.end; byte++) {
        for (let bit = 0; bit < 8; bit++) {
          assert.throws(() => openBlob(key, flipBit(blob, byte, bit)), fails(r.code), `${r.name}: byte ${byte} bit ${bit}`);
          tried++;
        }
      }
      assert.equal(tried, (r.end - r.start) * 8);
      // The untouched blob still opens: the failures above come from the flips.
      assert.deepEqual(openBlob(key, blob), pt);
    });
  }

  it('an unknown format byte is named in the message', () => {
    const bad = Buffer.from(blob);
    bad[0] = 0x02;
    assert.throws(() => openBlob(key, bad), (e: unknown) => e instanceof KeyhavenError && e.code === 'invalid_argument' && /0x02/.test(e.message));
    assert.throws(() => parseHeader(bad), fails('invalid_argument'));
  });

  it('truncated at every length from 0 to full-1 fails (empty: invalid_argument, otherwise integrity)', () => {
    for (let n = 0; n < blob.length; n++) {
      const cut = blob.subarray(0, n);
      assert.throws(() => openBlob(key, cut), fails(n === 0 ? 'invalid_argument' : 'integrity'), `truncated to ${n} bytes`);
    }
  });

  it('a blob with a byte appended fails with integrity', () => {
    assert.throws(() => openBlob(key, Buffer.concat([blob, Buffer.from([0])])), fails('integrity'));
  });

  it('opened with another key fails with integrity', () => {
    assert.throws(() => openBlob(generateKey(), blob), fails('integrity'));
  });

  it('relabelled with another version fails with integrity', () => {
    for (const v of [VERSION - 1, VERSION + 1, 1, 0xffffffff]) {
      const relabelled = Buffer.concat([encodeHeader(keyRef, v), blob.subarray(HEADER_BYTES)]);
      assert.equal(parseHeader(relabelled).version, v);
      assert.throws(() => openBlob(key, relabelled), fails('integrity'), `version ${v}`);
    }
  });

  it('relabelled with another key ref fails with integrity', () => {
    const otherRef = Buffer.from('fedcba9876543210', 'hex');
    const relabelled = Buffer.concat([encodeHeader(otherRef, VERSION), blob.subarray(HEADER_BYTES)]);
    assert.throws(() => openBlob(key, relabelled), fails('integrity'));
  });

  it('a body moved under the header of another blob fails with integrity', () => {
    const other = sealBlob(key, Buffer.from('1111111111111111', 'hex'), 1, randomBytes(32));
    const spliced = Buffer.concat([other.subarray(0, HEADER_BYTES), blob.subarray(HEADER_BYTES)]);
    assert.throws(() => openBlob(key, spliced), fails('integrity'));
  });
});

describe('crypto/blob: context binding', () => {
  const pt = Buffer.from('context-bound');
  const ctxA = Buffer.from('context A');
  const ctxB = Buffer.from('context B');

  it('sealed with a context, opened with another context fails', () => {
    assert.throws(() => openBlob(key, sealBlob(key, keyRef, 1, pt, ctxA), ctxB), fails('integrity'));
  });

  it('sealed with a context, opened without one fails', () => {
    assert.throws(() => openBlob(key, sealBlob(key, keyRef, 1, pt, ctxA)), fails('integrity'));
  });

  it('sealed without a context, opened with one fails', () => {
    assert.throws(() => openBlob(key, sealBlob(key, keyRef, 1, pt), ctxA), fails('integrity'));
  });

  it('a context differing in one bit fails', () => {
    const blob = sealBlob(key, keyRef, 1, pt, ctxA);
    assert.throws(() => openBlob(key, blob, flipBit(ctxA, 3, 0)), fails('integrity'));
  });
});

describe('crypto/blob: header encoding', () => {
  it('refuses a key ref that is not 8 bytes', () => {
    for (const n of [0, 7, 9, 16]) {
      assert.throws(() => encodeHeader(Buffer.alloc(n), 1), fails('internal'), `${n}-byte key ref`);
      assert.throws(() => sealBlob(key, Buffer.alloc(n), 1, Buffer.from('x')), fails('internal'), `${n}-byte key ref`);
    }
  });

  it('refuses versions outside 1..2^32-1 and non-integers', () => {
    for (const v of [0, -1, 0x100000000, 1.5, Number.NaN, Number.POSITIVE_INFINITY]) {
      assert.throws(() => encodeHeader(keyRef, v), fails('internal'), `version ${v}`);
    }
  });

  it('parseHeader refuses empty input and a header shorter than the overhead', () => {
    assert.throws(() => parseHeader(Buffer.alloc(0)), fails('invalid_argument'));
    assert.throws(() => parseHeader(Buffer.concat([encodeHeader(keyRef, 1), Buffer.alloc(NONCE_BYTES + TAG_BYTES - 1)])), fails('integrity'));
    assert.doesNotThrow(() => parseHeader(Buffer.concat([encodeHeader(keyRef, 1), Buffer.alloc(NONCE_BYTES + TAG_BYTES)])));
  });
});

describe('crypto/aead', () => {
  it('round-trips and lays out nonce || body || tag', () => {
    const pt = randomBytes(20);
    const aad = Buffer.from('aad');
    const sealed = aeadSeal(key, pt, aad);
    assert.equal(sealed.length, NONCE_BYTES + pt.length + TAG_BYTES);
    assert.deepEqual(aeadOpen(key, sealed, aad), pt);
  });

  it('refuses input shorter than nonce + tag with integrity', () => {
    for (let n = 0; n < NONCE_BYTES + TAG_BYTES; n++) {
      assert.throws(() => aeadOpen(key, Buffer.alloc(n), Buffer.alloc(0)), fails('integrity'), `${n} bytes`);
    }
  });

  it('refuses another AAD, another key and a flipped bit with integrity', () => {
    const sealed = aeadSeal(key, Buffer.from('hello'), Buffer.from('a'));
    assert.throws(() => aeadOpen(key, sealed, Buffer.from('b')), fails('integrity'));
    assert.throws(() => aeadOpen(generateKey(), sealed, Buffer.from('a')), fails('integrity'));
    for (let i = 0; i < sealed.length; i++) {
      assert.throws(() => aeadOpen(key, flipBit(sealed, i, 7), Buffer.from('a')), fails('integrity'), `byte ${i}`);
    }
  });

  it('generateKey returns 32 fresh random bytes', () => {
    const a = generateKey();
    const b = generateKey();
    assert.equal(a.length, 32);
    assert.notDeepEqual(a, b);
  });

  it('the integrity error message does not carry the plaintext or key', () => {
    const pt = Buffer.from('secret-plaintext-value');
    const sealed = aeadSeal(key, pt, Buffer.alloc(0));
    try {
      aeadOpen(key, flipBit(sealed, sealed.length - 1, 0), Buffer.alloc(0));
      assert.fail('expected a failure');
    } catch (e) {
      assert.ok(e instanceof KeyhavenError);
      assert.ok(!e.message.includes('secret-plaintext-value'));
      assert.ok(!e.message.includes(key.toString('hex')));
      assert.ok(!e.message.includes(key.toString('base64')));
    }
  });
});

describe('crypto/kdf', () => {
  it('matches RFC 5869 test case 3 (HKDF-SHA256, empty salt and info)', () => {
    const okm = deriveKey(Buffer.alloc(22, 0x0b), '', 42);
    assert.equal(okm.toString('hex'), '8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8');
  });

  it('uses the salt it is given', () => {
    const ikm = Buffer.alloc(22, 0x0b);
    const salt = Buffer.from('000102030405060708090a0b0c', 'hex');
    const a = deriveKey(ikm, 'label', 32, salt);
    assert.equal(a.length, 32);
    assert.deepEqual(a, deriveKey(ikm, 'label', 32, salt));
    assert.notDeepEqual(a, deriveKey(ikm, 'label', 32), 'the salt changes the output');
  });

  it('is deterministic and separates info labels', () => {
    const root = randomBytes(32);
    assert.deepEqual(deriveKey(root, 'one'), deriveKey(root, 'one'));
    assert.notDeepEqual(deriveKey(root, 'one'), deriveKey(root, 'two'));
    assert.notDeepEqual(deriveKey(root, 'one'), deriveKey(randomBytes(32), 'one'));
    assert.equal(deriveKey(root, 'one').length, 32);
    assert.equal(deriveKey(root, 'one', 16).length, 16);
  });

  it('constantTimeEqual compares contents, and unequal lengths are false', () => {
    assert.equal(constantTimeEqual(Buffer.from('abc'), Buffer.from('abc')), true);
    assert.equal(constantTimeEqual(Buffer.from('abc'), Buffer.from('abd')), false);
    assert.equal(constantTimeEqual(Buffer.from('abc'), Buffer.from('abcd')), false);
    assert.equal(constantTimeEqual(Buffer.alloc(0), Buffer.alloc(0)), true);
  });
});
