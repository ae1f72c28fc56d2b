import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { KeyhavenError } from '../errors.js';
import { cbcDecrypt, cbcEncrypt, gcmDecrypt, gcmEncrypt, rawSubkey } from './raw-cipher.js';

const hex = (s: string) => Buffer.from(s, 'hex');

function codeOf(fn: () => unknown): { code: string; message: string } {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof KeyhavenError, `a KeyhavenError, got ${String(e)}`);
    return { code: e.code, message: e.message };
  }
  assert.fail('expected an error');
}

describe('raw cipher', () => {
  it('GCM decrypt matches the published AES-256 test vectors (NIST GCM test cases 13 and 14)', () => {
    const key = Buffer.alloc(32);
    const iv = Buffer.alloc(12);
    assert.deepEqual(gcmDecrypt(key, Buffer.alloc(0), iv, hex('530f8afbc74536b9a963b4f1c4cb738b')), Buffer.alloc(0));
    assert.deepEqual(gcmDecrypt(key, hex('cea7403d4d606b6e074ec5d3baf39d18'), iv, hex('d0d1c8a799996bf0265b98b5d48ab919')), Buffer.alloc(16));
  });

  it('CBC encrypt matches the published AES-256 vector (SP 800-38A F.2.5) and adds one PKCS#7 block', () => {
    const key = hex('603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4');
    const iv = hex('000102030405060708090a0b0c0d0e0f');
    const out = cbcEncrypt(key, hex('6bc1bee22e409f96e93d7e117393172a'), iv);
    assert.equal(out.cipher.length, 32);
    assert.equal(out.cipher.subarray(0, 16).toString('hex'), 'f58c4c04d6e5f1ba779eabfb5f7bfbd6');
    assert.deepEqual(out.iv, iv);
    assert.equal(cbcDecrypt(key, out.cipher, iv).toString('hex'), '6bc1bee22e409f96e93d7e117393172a');
  });

  it('GCM round-trips with ad and every allowed tag length; IVs are fresh', () => {
    const key = randomBytes(32);
    const ad = Buffer.from('context');
    for (const bits of [96, 104, 112, 120, 128]) {
      const plain = randomBytes(37);
      const a = gcmEncrypt(key, plain, { ad, tagBits: bits });
      const b = gcmEncrypt(key, plain, { ad, tagBits: bits });
      assert.equal(a.iv.length, 12);
      assert.equal(a.tag.length, bits / 8);
      assert.notDeepEqual(a.iv, b.iv);
      assert.deepEqual(gcmDecrypt(key, a.cipher, a.iv, a.tag, ad), plain);
    }
  });

  it('GCM refuses a tampered cipher, tag, iv or ad with one integrity error', () => {
    const key = randomBytes(32);
    const s = gcmEncrypt(key, Buffer.from('hello gcm'), { ad: Buffer.from('ad') });
    const flip = (b: Buffer) => {
      const c = Buffer.from(b);
      c[0] = c[0]! ^ 1;
      return c;
    };
    const cases = [
      () => gcmDecrypt(key, flip(s.cipher), s.iv, s.tag, Buffer.from('ad')),
      () => gcmDecrypt(key, s.cipher, s.iv, flip(s.tag), Buffer.from('ad')),
      () => gcmDecrypt(key, s.cipher, flip(s.iv), s.tag, Buffer.from('ad')),
      () => gcmDecrypt(key, s.cipher, s.iv, s.tag, Buffer.from('other')),
      () => gcmDecrypt(key, s.cipher, s.iv, s.tag),
      () => gcmDecrypt(randomBytes(32), s.cipher, s.iv, s.tag, Buffer.from('ad')),
    ];
    for (const c of cases) assert.equal(codeOf(c).code, 'integrity');
  });

  it('GCM refuses bad lengths precisely', () => {
    const key = randomBytes(32);
    assert.match(codeOf(() => gcmEncrypt(key, Buffer.from('x'), { tagBits: 64 })).message, /tag_len must be one of 96, 104, 112, 120, 128/);
    assert.match(codeOf(() => gcmDecrypt(key, Buffer.from('x'), Buffer.alloc(16), Buffer.alloc(16))).message, /iv must be 12 bytes for GCM \(got 16\)/);
    assert.match(codeOf(() => gcmDecrypt(key, Buffer.from('x'), Buffer.alloc(12), Buffer.alloc(8))).message, /tag must be 12 to 16 bytes/);
  });

  it('CBC round-trips any length with a random or a caller IV', () => {
    const key = randomBytes(32);
    for (const n of [0, 1, 15, 16, 17, 100]) {
      const plain = randomBytes(n);
      const r = cbcEncrypt(key, plain);
      assert.equal(r.iv.length, 16);
      assert.equal(r.cipher.length, (Math.floor(n / 16) + 1) * 16);
      assert.deepEqual(cbcDecrypt(key, r.cipher, r.iv), plain);
      const iv = randomBytes(16);
      const c = cbcEncrypt(key, plain, iv);
      assert.deepEqual(c.iv, iv);
      assert.deepEqual(cbcDecrypt(key, c.cipher, iv), plain);
    }
    assert.match(codeOf(() => cbcEncrypt(key, Buffer.from('x'), Buffer.alloc(12))).message, /iv must be 16 bytes for CBC \(got 12\)/);
    assert.match(codeOf(() => cbcDecrypt(key, Buffer.alloc(15), Buffer.alloc(16))).message, /multiple of 16/);
    assert.match(codeOf(() => cbcDecrypt(key, Buffer.alloc(0), Buffer.alloc(16))).message, /multiple of 16/);
  });

  it('CBC failures all read "decryption failed" (no padding oracle)', () => {
    const key = randomBytes(32);
    const { cipher, iv } = cbcEncrypt(key, Buffer.from('sixteen byte msg plus some'));
    const seen = new Set<string>();
    let failures = 0;
    // Tampered last blocks: most break the padding, a few happen to end in valid padding.
    for (let i = 0; i < 64; i++) {
      const c = Buffer.from(cipher);
      c[c.length - 17] = c[c.length - 17]! ^ (i + 1);
      try {
        cbcDecrypt(key, c, iv);
      } catch (e) {
        failures += 1;
        assert.ok(e instanceof KeyhavenError);
        seen.add(`${e.code}:${e.message}`);
      }
    }
    for (let i = 0; i < 16; i++) {
      try {
        cbcDecrypt(randomBytes(32), cipher, iv);
      } catch (e) {
        failures += 1;
        assert.ok(e instanceof KeyhavenError);
        seen.add(`${e.code}:${e.message}`);
      }
    }
    assert.ok(failures > 40, `${failures} failures`);
    assert.deepEqual([...seen], ['integrity:decryption failed']);
  });

  it('sub-keys are deterministic and separate per mode and purpose', () => {
    const m = randomBytes(32);
    const a = rawSubkey(m, 'dsm', 'GCM');
    assert.equal(a.length, 32);
    assert.deepEqual(rawSubkey(m, 'dsm', 'GCM'), a);
    assert.notDeepEqual(rawSubkey(m, 'dsm', 'CBC'), a);
    assert.notDeepEqual(rawSubkey(m, 'other', 'GCM'), a);
    assert.notDeepEqual(a, m);
  });
});
