import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { keyAfter, prefixRangeEnd, prefixRangeStart } from './keys.js';

const hex = (b: Buffer) => b.toString('hex');
const bytes = (...b: number[]) => Buffer.from(b);

describe('prefix ranges (clientv3.GetPrefixRangeEnd)', () => {
  it('increments the last byte', () => {
    assert.equal(prefixRangeEnd(Buffer.from('/registry/')).toString(), '/registry0');
    assert.equal(prefixRangeEnd(Buffer.from('/registry')).toString(), '/registrz');
    assert.equal(hex(prefixRangeEnd(bytes(0x61, 0x00))), '6101');
    assert.equal(hex(prefixRangeEnd(bytes(0x61, 0xfe))), '61ff');
  });

  it('drops trailing 0xff bytes and increments the one before', () => {
    assert.equal(hex(prefixRangeEnd(bytes(0x61, 0xff))), '62');
    assert.equal(hex(prefixRangeEnd(bytes(0x61, 0xff, 0xff))), '62');
    assert.equal(hex(prefixRangeEnd(bytes(0x61, 0xfe, 0xff))), '61ff');
  });

  it('runs to the end of the keyspace when no key follows the prefix', () => {
    assert.equal(hex(prefixRangeEnd(bytes(0xff))), '00');
    assert.equal(hex(prefixRangeEnd(bytes(0xff, 0xff))), '00');
    assert.equal(hex(prefixRangeEnd(Buffer.alloc(0))), '00');
  });

  it('starts an empty prefix at "\\0" (every key) and leaves the prefix it increments alone', () => {
    assert.equal(hex(prefixRangeStart(Buffer.alloc(0))), '00');
    const p = bytes(0x61, 0x62);
    assert.equal(prefixRangeStart(p), p);
    prefixRangeEnd(p);
    assert.equal(hex(p), '6162');
  });

  it('puts the next page right after the last key, whatever its bytes', () => {
    assert.equal(hex(keyAfter(bytes(0x61))), '6100');
    assert.equal(hex(keyAfter(bytes(0xff, 0xfe))), 'fffe00');
    // Nothing sorts between a key and its successor.
    assert.equal(Buffer.compare(bytes(0x61), keyAfter(bytes(0x61))), -1);
  });
});
