import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { describe, it } from 'node:test';
import { code as fails } from '../../../../test/expect-error.js';
import { parsePluginConfig } from '../../../config/plugin-config.js';
import { KeyhavenError } from '../../../errors.js';
import { dsmErrorCode } from './fortanix-dsm-client.js';
import { DSM_FORMAT, dsmKeyId, packDsmCiphertext, parseDsmCiphertext } from './fortanix-dsm-format.js';
import { checkDsmApiKey } from './fortanix-dsm.js';

// plugin.yaml's `provider: {type: fortanix-dsm}` fields, the ciphertext
// format and the error classification, without any server.

const base = { type: 'fortanix-dsm', cluster: 'prod-eu-1', endpoints: ['https://eu.smartkey.io'], apiKeyFile: '/etc/keyhaven/dsm-api-key', keyName: 'Kubernetes Secret Encryption Key' };
const KID = randomUUID();
const parse = (provider: Record<string, unknown>) => parsePluginConfig({ provider }, 'plugin.yaml');

describe('fortanix-dsm config', () => {
  it('parses the documented example with its defaults', () => {
    const cfg = parse(base);
    assert.equal(cfg.provider.type, 'fortanix-dsm');
    const p = cfg.provider as Extract<typeof cfg.provider, { type: 'fortanix-dsm' }>;
    assert.deepEqual(p.endpoints, ['https://eu.smartkey.io']);
    assert.equal(p.mode, 'GCM');
    assert.equal(p.timeout, 2000);
    assert.equal(p.attemptTimeout, 1000);
    assert.deepEqual(p.backoff, { min: 250, max: 10_000 });
    assert.equal(p.keyName, 'Kubernetes Secret Encryption Key');
    assert.equal(p.kid, undefined);
    assert.equal(p.cluster, 'prod-eu-1');
    assert.deepEqual(p.previousKids, []);
  });

  it('takes a kid (normalised to lower case), the API key from an environment variable, and TLS options', () => {
    const kid = randomUUID().toUpperCase();
    const prev = randomUUID();
    const cfg = parse({ type: 'fortanix-dsm', cluster: 'prod-eu-1', previousKids: [prev.toUpperCase()], endpoints: ['https://dsm-a.example:4443/', 'https://dsm-b.example'], apiKeyEnv: 'DSM_API_KEY', kid, tls: { ca: 'ca.pem', pinSha256: ['AB:'.repeat(31) + 'AB'] } });
    const p = cfg.provider as Extract<typeof cfg.provider, { type: 'fortanix-dsm' }>;
    assert.equal(p.kid, kid.toLowerCase());
    assert.deepEqual(p.previousKids, [prev]);
    assert.deepEqual(p.endpoints, ['https://dsm-a.example:4443', 'https://dsm-b.example']);
    assert.ok(p.tls.ca!.startsWith('/'), 'paths are resolved');
    assert.equal(p.tls.pinSha256![0], 'ab'.repeat(32));
  });

  it('refuses what cannot work, each problem on its own line', () => {
    const cases: Array<[Record<string, unknown>, RegExp]> = [
      [{ ...base, keyName: undefined }, /exactly one of keyName \(follows rekeys\) and kid/],
      [{ ...base, kid: randomUUID() }, /exactly one of keyName/],
      [{ ...base, apiKeyEnv: 'X' }, /exactly one of apiKeyFile and apiKeyEnv/],
      [{ ...base, apiKeyFile: undefined }, /exactly one of apiKeyFile and apiKeyEnv/],
      [{ ...base, mode: 'CBC' }, /provider.mode: only GCM is supported/],
      [{ ...base, kid: 'not-a-uuid', keyName: undefined }, /provider.kid: must be a security object UUID/],
      [{ ...base, endpoints: [] }, /provider.endpoints/],
      [{ ...base, endpoints: ['https://dsm.example/api'] }, /without a path/],
      [{ ...base, endpoints: ['https://app:secret@dsm.example'] }, /without a path, query or credentials/],
      [{ ...base, endpoints: ['https://a.example', 'https://a.example/'] }, /lists an endpoint twice/],
      [{ ...base, endpoints: ['http://dsm.example'] }, /plain HTTP to a host that is not loopback/],
      [{ ...base, timeout: '3s' }, /must stay below the apiserver's 3 s deadline/],
      [{ ...base, timeout: '1s', attemptTimeout: '2s' }, /attemptTimeout \(2000 ms\) must not exceed provider.timeout/],
      [{ ...base, tls: { clientCert: 'c.pem' } }, /clientCert and clientKey go together/],
      [{ ...base, keyName: 'a\nb' }, /control characters/],
      [{ ...base, servers: ['https://x'] }, /servers/],
      [{ ...base, cluster: undefined }, /provider.cluster/],
      [{ ...base, cluster: 'Prod_EU' }, /provider.cluster: must be 1-63 lower-case letters, digits/],
      [{ ...base, previousKids: ['k1'] }, /provider.previousKids.*must be security object UUIDs/],
      [{ ...base, keyName: undefined, kid: KID, previousKids: [KID.toUpperCase()] }, /provider.previousKids: lists kid .* itself/],
      [{ ...base, previousKids: [KID, KID] }, /provider.previousKids: lists a kid twice/],
    ];
    for (const [provider, pattern] of cases) {
      assert.throws(() => parse(provider), fails('config_invalid', pattern), JSON.stringify(provider));
    }
    // Plain HTTP is fine on loopback (keyhaven's DSM API beside the plugin) or when asked for.
    parse({ ...base, endpoints: ['http://127.0.0.1:8443'] });
    parse({ ...base, endpoints: ['http://dsm.internal'], allowInsecureHttp: true });
  });

  it('accepts an API key that is base64 of "app-id:secret" and refuses anything else without echoing it', () => {
    checkDsmApiKey(Buffer.from(`${randomUUID()}:s3cr3t-value`).toString('base64'), 'the file');
    for (const bad of ['kha_0123456789', Buffer.from('no-colon-here').toString('base64'), Buffer.from(':secret').toString('base64'), 'not base64!']) {
      try {
        checkDsmApiKey(bad, 'API key file /x');
        assert.fail(`accepted ${bad}`);
      } catch (e) {
        assert.ok(e instanceof KeyhavenError && e.code === 'config_invalid');
        assert.match(e.message, /API key file \/x does not hold a DSM API key/);
        assert.ok(!e.message.includes(bad));
      }
    }
  });
});

describe('fortanix-dsm ciphertext format and error classes', () => {
  it('packs and parses: format byte, 16-byte kid, IV length, IV, 16-byte tag, cipher', () => {
    const kid = randomUUID();
    const c = { kid, iv: Buffer.alloc(12, 1), tag: Buffer.alloc(16, 2), cipher: Buffer.alloc(32, 3) };
    const b = packDsmCiphertext(c);
    assert.equal(b.length, 1 + 16 + 1 + 12 + 16 + 32);
    assert.equal(b[0], DSM_FORMAT);
    assert.equal(b.subarray(1, 17).toString('hex'), kid.replace(/-/g, ''));
    assert.equal(b[17], 12);
    assert.deepEqual(parseDsmCiphertext(b), c);
    assert.equal(dsmKeyId(kid.toUpperCase()), `dsm:${kid}`);
    assert.throws(() => packDsmCiphertext({ ...c, tag: Buffer.alloc(12) }), fails('unavailable', /12-byte tag/));
    assert.throws(() => packDsmCiphertext({ ...c, iv: Buffer.alloc(4) }), fails('unavailable', /4-byte IV/));
    assert.throws(() => packDsmCiphertext({ ...c, kid: 'k1' }), fails('unavailable', /not a UUID/));
    assert.throws(() => parseDsmCiphertext(Buffer.alloc(0)), fails('invalid_argument'));
    assert.throws(() => parseDsmCiphertext(b.subarray(0, 45)), fails('invalid_argument', /truncated/));
    const badIv = Buffer.from(b);
    badIv[17] = 200;
    assert.throws(() => parseDsmCiphertext(badIv), fails('invalid_argument', /truncated or malformed/));
  });

  it('maps DSM status codes (and "disabled" in the words) to keyhaven codes', () => {
    const table: Array<[number, string, string]> = [
      [400, 'bad base64', 'invalid_argument'],
      [400, 'Security object is disabled', 'key_disabled'],
      [403, 'Sobject deactivated', 'key_disabled'],
      [401, 'Unauthorized', 'unauthenticated'],
      [403, 'Forbidden', 'permission_denied'],
      [404, 'not found', 'not_found'],
      [409, 'key "k1" is disabled', 'key_disabled'],
      [409, 'conflict', 'failed_precondition'],
      [410, 'version destroyed', 'key_destroyed'],
      [422, 'unprocessable', 'invalid_argument'],
      [429, 'slow down', 'too_many_attempts'],
      [500, 'oops', 'unavailable'],
      [502, 'bad gateway', 'unavailable'],
      [503, 'disabled for maintenance', 'unavailable'],
    ];
    for (const [status, text, code] of table) assert.equal(dsmErrorCode(status, text), code, `${status} ${text}`);
  });
});
