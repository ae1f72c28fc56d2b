import assert from 'node:assert/strict';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { removeDir } from './helpers.js';
import { HAVE_OPENSSL, makePki, type Pki } from './pki.js';
import { requireDependency } from './require.js';

// The shared test PKI (test/pki.ts) gives what the other tests rely on.

const CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';

describe('test PKI', { skip: !HAVE_OPENSSL && process.env.KEYHAVEN_REQUIRE_ALL !== '1' ? 'openssl is not installed' : false }, () => {
  let pki: Pki | undefined;
  const x509 = (pem: Buffer) => new X509Certificate(pem);

  before(() => {
    if (HAVE_OPENSSL) pki = makePki();
  });
  after(() => {
    if (pki) removeDir(pki.dir);
  });

  it('the expired client certificate is long expired, for client auth, and signed by the test CA', (t) => {
    if (!requireDependency(t, HAVE_OPENSSL, 'openssl')) return;
    const cert = x509(pki!.expiredClient.cert);
    const ca = x509(pki!.ca);
    assert.ok(new Date(cert.validTo).getTime() < Date.now(), `validTo ${cert.validTo} is in the past`);
    assert.equal(new Date(cert.validFrom).toISOString(), '2020-01-01T00:00:00.000Z');
    assert.equal(new Date(cert.validTo).toISOString(), '2020-01-02T00:00:00.000Z');
    assert.ok(cert.verify(ca.publicKey), 'signed by the test CA');
    assert.ok(cert.checkIssued(ca));
    assert.ok(!cert.verify(x509(readFileSync(pki!.foreignCaFile)).publicKey), 'not signed by the foreign CA');
    assert.deepEqual(cert.keyUsage, [CLIENT_AUTH]);
    assert.ok(cert.checkPrivateKey(createPrivateKey(pki!.expiredClient.key)), 'key matches');
  });

  it('the server certificate is for IP 127.0.0.1 and signed by the test CA', (t) => {
    if (!requireDependency(t, HAVE_OPENSSL, 'openssl')) return;
    const cert = x509(readFileSync(pki!.serverCert));
    assert.match(cert.subjectAltName ?? '', /IP Address:127\.0\.0\.1/);
    assert.equal(cert.checkIP('127.0.0.1'), '127.0.0.1');
    assert.ok(cert.verify(x509(pki!.ca).publicKey));
    assert.ok(new Date(cert.validTo).getTime() > Date.now(), 'not expired');
    assert.ok(cert.checkPrivateKey(createPrivateKey(readFileSync(pki!.serverKey))));
  });

  it('fingerprints match X509Certificate.fingerprint256', (t) => {
    if (!requireDependency(t, HAVE_OPENSSL, 'openssl')) return;
    assert.equal(pki!.client.fingerprint, x509(pki!.client.cert).fingerprint256);
    assert.equal(pki!.expiredClient.fingerprint, x509(pki!.expiredClient.cert).fingerprint256);
    assert.equal(pki!.serverFingerprint, x509(readFileSync(pki!.serverCert)).fingerprint256);
    for (const fp of [pki!.client.fingerprint, pki!.expiredClient.fingerprint, pki!.serverFingerprint]) assert.match(fp, /^[0-9A-F]{2}(:[0-9A-F]{2}){31}$/);
  });

  it('file paths hold the same certificates and keys as the buffers', (t) => {
    if (!requireDependency(t, HAVE_OPENSSL, 'openssl')) return;
    for (const c of [pki!.client, pki!.other, pki!.foreign, pki!.expiredClient]) {
      assert.deepEqual(readFileSync(c.certFile), c.cert);
      assert.deepEqual(readFileSync(c.keyFile), c.key);
    }
    assert.deepEqual(readFileSync(pki!.caFile), pki!.ca);
    assert.ok(x509(pki!.foreign.cert).checkIssued(x509(readFileSync(pki!.foreignCaFile))));
  });

  it('key files are mode 0600', (t) => {
    if (!requireDependency(t, HAVE_OPENSSL, 'openssl')) return;
    for (const f of [pki!.serverKey, pki!.client.keyFile, pki!.other.keyFile, pki!.foreign.keyFile, pki!.expiredClient.keyFile]) {
      assert.equal((statSync(f).mode & 0o777).toString(8), '600', f);
    }
  });
});
