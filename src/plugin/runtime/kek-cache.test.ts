import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { KekCache } from './kek-cache.js';

describe('KekCache', () => {
  const entry = (version: number) => ({ kek: randomBytes(32), version });

  it('evicts the least recently used entry and zeroes its key', () => {
    const c = new KekCache(2);
    const a = entry(1);
    const b = entry(1);
    c.set('a', a);
    c.set('b', b);
    assert.equal(c.get('a'), a, 'a is now the most recently used');
    c.set('c', entry(2));
    assert.equal(c.size, 2);
    assert.equal(c.get('b'), undefined);
    assert.deepEqual(b.kek, Buffer.alloc(32), 'the evicted KEK is overwritten');
    assert.ok(c.get('a') && c.get('c'));
  });

  it('drops entries by predicate, zeroing them', () => {
    const c = new KekCache(8);
    const old = entry(1);
    c.set('old', old);
    c.set('new', entry(3));
    assert.equal(c.drop((e) => e.version < 2), 1);
    assert.equal(c.get('old'), undefined);
    assert.deepEqual(old.kek, Buffer.alloc(32));
    assert.equal(c.drop(), 1);
    assert.equal(c.size, 0);
  });

  it('replacing an entry zeroes the replaced key', () => {
    const c = new KekCache(4);
    const first = entry(1);
    c.set('k', first);
    c.set('k', entry(1));
    assert.deepEqual(first.kek, Buffer.alloc(32));
    assert.equal(c.size, 1);
  });
});
