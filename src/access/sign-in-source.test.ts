import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { signInSource } from './sign-in-source.js';

describe('sign-in source', () => {
  it('IPv4 as it is; IPv4-mapped IPv6 as IPv4', () => {
    assert.equal(signInSource('127.0.0.1'), '127.0.0.1');
    assert.equal(signInSource('203.0.113.7'), '203.0.113.7');
    assert.equal(signInSource('::ffff:203.0.113.7'), '203.0.113.7');
    assert.equal(signInSource('::FFFF:127.0.0.2'), '127.0.0.2');
  });

  it('IPv6 by its /64, whatever the spelling', () => {
    const a = signInSource('2001:db8:1:2:aaaa:bbbb:cccc:dddd');
    assert.equal(a, '2001:db8:1:2::/64');
    for (const same of ['2001:db8:1:2::1', '2001:0DB8:0001:0002:0:0:0:ffff', '2001:db8:1:2::1.2.3.4', '2001:db8:1:2::5%eth0']) assert.equal(signInSource(same), a, same);
    assert.notEqual(signInSource('2001:db8:1:3::1'), a, 'another /64');
    assert.equal(signInSource('::1'), '0:0:0:0::/64');
    assert.equal(signInSource('fe80::1'), 'fe80:0:0:0::/64');
    assert.equal(signInSource('1::'), '1:0:0:0::/64');
  });
});
