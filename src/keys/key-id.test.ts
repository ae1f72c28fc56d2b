import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { KeyhavenError } from '../errors.js';
import { formatKeyId, parseKeyId } from './key-id.js';

const STORE = '0123456789abcdef';
const REF = 'fedcba9876543210';
const TAG = 'a1b2c3d4e5f60718';
const GOOD = `kh1:${STORE}:${REF}:42:${TAG}`;

function unknownKeyId(e: unknown): true {
  assert.ok(e instanceof KeyhavenError, `expected a KeyhavenError, got ${String(e)}`);
  assert.equal(e.code, 'unknown_key_id', e.message);
  return true;
}

function hex8(): string {
  return randomBytes(8).toString('hex');
}

describe('plugin/key-id', () => {
  it('formats kh1:<store>:<ref>:<version>:<tag>', () => {
    assert.equal(formatKeyId(STORE, REF, 1, TAG), 'kh1:0123456789abcdef:fedcba9876543210:1:a1b2c3d4e5f60718');
    assert.equal(formatKeyId(STORE, REF, 42, TAG), GOOD);
  });

  it('parses what it formats', () => {
    assert.deepEqual(parseKeyId(GOOD), { storeId: STORE, keyRef: REF, version: 42, tag: TAG });
  });

  it('round-trips random store ids, key refs, tags and versions up to 2^32-1', () => {
    for (let i = 0; i < 200; i++) {
      const storeId = hex8();
      const keyRef = hex8();
      const tag = hex8();
      const version = i === 0 ? 0xffffffff : i === 1 ? 1 : 1 + (randomBytes(4).readUInt32BE(0) % 0xfffffffe);
      const id = formatKeyId(storeId, keyRef, version, tag);
      const parsed = parseKeyId(id);
      assert.deepEqual(parsed, { storeId, keyRef, version, tag });
      assert.equal(formatKeyId(parsed.storeId, parsed.keyRef, parsed.version, parsed.tag), id);
      assert.ok(Buffer.byteLength(id) <= 1024, 'the apiserver limit');
    }
  });

  it('ids differ when any part differs', () => {
    const ids = new Set([
      formatKeyId(STORE, REF, 1, TAG),
      formatKeyId(STORE, REF, 2, TAG),
      formatKeyId(STORE, REF, 1, hex8()),
      formatKeyId(REF, STORE, 1, TAG),
      formatKeyId(hex8(), REF, 1, TAG),
    ]);
    assert.equal(ids.size, 5);
  });

  const bad: Array<[string, string]> = [
    ['', 'empty'],
    [`kh2:${STORE}:${REF}:1:${TAG}`, 'another format prefix'],
    [`KH1:${STORE}:${REF}:1:${TAG}`, 'an uppercase prefix'],
    [`kh1:${STORE.toUpperCase()}:${REF}:1:${TAG}`, 'uppercase hex'],
    [`kh1:${STORE}:${REF}:1:${TAG.toUpperCase()}`, 'an uppercase tag'],
    [`kh1:${STORE.slice(1)}:${REF}:1:${TAG}`, 'a 15-digit store id'],
    [`kh1:${STORE}0:${REF}:1:${TAG}`, 'a 17-digit store id'],
    [`kh1:${STORE}:fedcba987654321g:1:${TAG}`, 'a non-hex key ref'],
    [`kh1:${STORE}:${REF}:1:${TAG.slice(1)}`, 'a 15-digit tag'],
    [`kh1:${STORE}:${REF}:1`, 'no tag (the earlier four-part form)'],
    [`kh1:${STORE}:${REF}:0:${TAG}`, 'version 0'],
    [`kh1:${STORE}:${REF}:01:${TAG}`, 'a leading zero'],
    [`kh1:${STORE}:${REF}:-1:${TAG}`, 'a negative version'],
    [`kh1:${STORE}:${REF}:1.5:${TAG}`, 'a fractional version'],
    [`kh1:${STORE}:${REF}:12345678901:${TAG}`, 'an 11-digit version'],
    [`kh1:${STORE}:${REF}:1:${TAG}:x`, 'an extra field'],
    [`${GOOD}\n`, 'a trailing newline'],
    [` ${GOOD}`, 'a leading space'],
    ['vault:v1:abc', 'a Vault key id'],
  ];
  for (const [id, why] of bad) {
    it(`refuses ${why} with unknown_key_id`, () => {
      assert.throws(() => parseKeyId(id), unknownKeyId);
    });
  }

  it('quotes at most 80 characters of a long bad id', () => {
    const long = `kh1:${'z'.repeat(2000)}`;
    assert.throws(() => parseKeyId(long), (e: unknown) => {
      unknownKeyId(e);
      const msg = (e as Error).message;
      assert.ok(msg.length < 200, `message length ${msg.length}`);
      assert.ok(msg.includes('z'.repeat(76)) && !msg.includes('z'.repeat(77)));
      return true;
    });
  });
});
