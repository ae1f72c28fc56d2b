import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULT_PASSWORD_POOL } from './password-pool.js';
import { configurePasswordHashing, dummyPasswordHash, hashesEqual, hashPassword, newToken, parseToken, sha256Hex, validatePassword, verifyPassword } from './secrets.js';

describe('passwords', () => {
  it('scrypt hashes verify the right password only, and never contain it', async () => {
    const h = await hashPassword('correct horse battery');
    assert.match(h, /^scrypt\$32768\$8\$1\$/);
    assert.ok(!h.includes('correct'));
    assert.equal(await verifyPassword('correct horse battery', h), true);
    assert.equal(await verifyPassword('correct horse batterY', h), false);
    assert.notEqual(await hashPassword('correct horse battery'), h, 'salted');
    assert.equal(await verifyPassword('anything at all', dummyPasswordHash()), false);
  });

  it('a configured cost applies to new hashes and the unknown-user hash; stored hashes keep their own', async () => {
    const before = await hashPassword('made at the default cost');
    try {
      configurePasswordHashing({ ...DEFAULT_PASSWORD_POOL, scryptN: 1024 });
      const cheap = await hashPassword('made at a lower cost');
      assert.match(cheap, /^scrypt\$1024\$8\$1\$/);
      assert.match(dummyPasswordHash(), /^scrypt\$1024\$/);
      assert.equal(await verifyPassword('made at a lower cost', cheap), true);
      assert.equal(await verifyPassword('made at the default cost', before), true, 'an older hash still verifies at its own cost');
      for (const bad of [1000, 0, -2, 1.5, Number.NaN]) assert.throws(() => configurePasswordHashing({ ...DEFAULT_PASSWORD_POOL, scryptN: bad }), /power of two/);
    } finally {
      configurePasswordHashing(DEFAULT_PASSWORD_POOL);
    }
    assert.match(await hashPassword('back to the default'), /^scrypt\$32768\$/);
    assert.match(dummyPasswordHash(), /^scrypt\$32768\$/);
  });

  it('length rules', () => {
    assert.throws(() => validatePassword('short'), /at least 12/);
    assert.throws(() => validatePassword('x'.repeat(1025)), /at most 1024/);
    validatePassword('twelve chars');
  });
});

describe('tokens', () => {
  it('round trip: the id is the lookup key, only the secret\'s hash is stored', () => {
    const t = newToken('api_key');
    assert.match(t.token, /^kha_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$/);
    const p = parseToken(t.token)!;
    assert.equal(p.kind, 'api_key');
    assert.equal(p.id, t.id);
    assert.ok(hashesEqual(p.secretHash, t.hash));
    assert.ok(!t.token.includes(t.hash));
    assert.equal(parseToken(newToken('session').token)!.kind, 'session');
  });

  it('anything else is not a token', () => {
    const t = newToken('session').token;
    for (const bad of ['', 'khs_', t.slice(0, -1), `${t}x`, t.replace('khs_', 'khx_'), t.toUpperCase(), `Bearer ${t}`]) {
      assert.equal(parseToken(bad), undefined, bad);
    }
  });

  it('hash comparison is exact', () => {
    const a = sha256Hex('a');
    assert.ok(hashesEqual(a, a));
    assert.ok(!hashesEqual(a, sha256Hex('b')));
    assert.ok(!hashesEqual(a, a.slice(2)));
    assert.ok(!hashesEqual('', ''));
  });
});
