import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { KeyhavenError } from '../errors.js';
import { isFqdn, MAX_ANNOTATIONS_BYTES, validateAnnotations } from './annotations.js';
import { code as fails } from '../../test/expect-error.js';


/** A valid FQDN of exactly `length` characters made of labels of at most 63 characters. */
function fqdnOfLength(length: number): string {
  let name = '';
  while (name.length < length) {
    const room = length - name.length - (name ? 1 : 0);
    name += (name ? '.' : '') + 'a'.repeat(Math.min(63, room));
  }
  assert.equal(name.length, length);
  assert.ok(name.split('.').every((l) => l.length >= 1 && l.length <= 63));
  return name;
}

describe('plugin/annotations: isFqdn', () => {
  for (const good of ['kek.keyhaven.io', 'a.b', 'x-1.example.com', 'a1.b2', '0.0', 'version.encryption.keyhaven.io', `${'a'.repeat(63)}.io`]) {
    it(`accepts ${JSON.stringify(good)}`, () => {
      assert.equal(isFqdn(good), true);
    });
  }

  const bad: Array<[string, string]> = [
    ['keyhaven.io/kek', 'a slash (the apiserver rejects it and every write breaks)'],
    ['localhost', 'a single label'],
    ['KEK.keyhaven.io', 'uppercase'],
    ['kek.Keyhaven.io', 'uppercase in a later label'],
    ['', 'empty'],
    ['-kek.keyhaven.io', 'a label starting with a dash'],
    ['kek-.keyhaven.io', 'a label ending with a dash'],
    ['kek..keyhaven.io', 'an empty label'],
    ['.kek.keyhaven.io', 'a leading dot'],
    ['kek_1.keyhaven.io', 'an underscore'],
    ['kek keyhaven.io', 'a space'],
    ['kék.keyhaven.io', 'a non-ASCII letter'],
    [`${'a'.repeat(64)}.io`, 'a 64-character label'],
    ['kek.keyhaven.io:443', 'a port'],
  ];
  for (const [name, why] of bad) {
    it(`rejects ${why}: ${JSON.stringify(name.length > 40 ? `${name.slice(0, 20)}…` : name)}`, () => {
      assert.equal(isFqdn(name), false);
    });
  }

  it('accepts 253 characters and rejects 254 and more', () => {
    assert.equal(isFqdn(fqdnOfLength(253)), true);
    assert.equal(isFqdn(fqdnOfLength(254)), false);
    assert.equal(isFqdn(fqdnOfLength(300)), false);
  });
});

describe('plugin/annotations: validateAnnotations', () => {
  it('accepts no annotations and an empty map', () => {
    assert.doesNotThrow(() => validateAnnotations(undefined, 'reply'));
    assert.doesNotThrow(() => validateAnnotations({}, 'reply'));
  });

  it('accepts valid keys', () => {
    assert.doesNotThrow(() => validateAnnotations({ 'kek.keyhaven.io': Buffer.from('v1'), 'version.keyhaven.io': Buffer.from('1') }, 'reply'));
  });

  it('refuses a key that is not an FQDN: invalid_argument in a request, internal in a reply', () => {
    const bad = { 'keyhaven.io/kek': Buffer.from('x') };
    assert.throws(() => validateAnnotations(bad, 'request'), fails('invalid_argument', /keyhaven\.io\/kek.*fully qualified domain name/));
    assert.throws(() => validateAnnotations(bad, 'reply'), fails('internal', /not a fully qualified domain name/));
  });

  it('quotes at most 100 characters of a bad key', () => {
    const key = `${'x'.repeat(500)}/y`;
    assert.throws(
      () => validateAnnotations({ [key]: Buffer.alloc(0) }, 'request'),
      (e: unknown) => e instanceof KeyhavenError && !e.message.includes('x'.repeat(101)) && e.message.includes('x'.repeat(100)),
    );
  });

  it('accepts keys plus values totalling exactly 32 KiB', () => {
    const key = 'kek.keyhaven.io';
    assert.equal(MAX_ANNOTATIONS_BYTES, 32 * 1024);
    assert.doesNotThrow(() => validateAnnotations({ [key]: Buffer.alloc(32 * 1024 - key.length) }, 'reply'));
  });

  it('refuses one byte over 32 KiB, counting the key bytes too', () => {
    const key = 'kek.keyhaven.io';
    const value = Buffer.alloc(32 * 1024 - key.length + 1);
    assert.throws(() => validateAnnotations({ [key]: value }, 'reply'), fails('internal', /32769 bytes.*32768/));
    assert.throws(() => validateAnnotations({ [key]: value }, 'request'), fails('invalid_argument'));
  });

  it('sums every annotation', () => {
    const a = { 'a.keyhaven.io': Buffer.alloc(16 * 1024), 'b.keyhaven.io': Buffer.alloc(16 * 1024) };
    assert.throws(() => validateAnnotations(a, 'request'), fails('invalid_argument', /above the 32768-byte limit/));
    const b = { 'a.keyhaven.io': Buffer.alloc(16 * 1024 - 13), 'b.keyhaven.io': Buffer.alloc(16 * 1024 - 13) };
    assert.doesNotThrow(() => validateAnnotations(b, 'request'));
  });
});
