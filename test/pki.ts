import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from './helpers.js';

// A throw-away test PKI built with the openssl CLI: a test CA, a foreign CA
// the server does not trust, a server certificate for IP 127.0.0.1 and client
// certificates (one of them long expired). Everything lives in one temp dir;
// the caller removes `dir` when done. Private keys are mode 0600, because
// keyhaven refuses key files readable by group or others.

/** Whether the openssl CLI is available; tests needing a PKI skip without it. */
export const HAVE_OPENSSL = spawnSync('openssl', ['version']).status === 0;

export interface PkiClient {
  cert: Buffer;
  key: Buffer;
  certFile: string;
  keyFile: string;
}

export interface Pki {
  dir: string;
  /** The test CA's certificate (PEM). */
  ca: Buffer;
  /** Path of the server certificate (SAN IP:127.0.0.1, signed by the test CA). */
  serverCert: string;
  /** Path of the server key. */
  serverKey: string;
  /** SHA-256 fingerprint of the server certificate, openssl's colon form. */
  serverFingerprint: string;
  /** Path of the test CA's certificate. */
  caFile: string;
  /** Signed by the test CA; `fingerprint` is SHA-256 in openssl's colon form. */
  client: PkiClient & { fingerprint: string };
  /** Same CA, never registered to an app. */
  other: PkiClient;
  /** Signed by a CA the server does not trust. */
  foreign: PkiClient;
  /** Path of the foreign CA's certificate. */
  foreignCaFile: string;
  /** Signed by the test CA, valid only 2020-01-01 to 2020-01-02. */
  expiredClient: PkiClient & { fingerprint: string };
}

export function makePki(): Pki {
  const dir = tempDir('kh-pki-');
  const ssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] }).toString();
  const file = (name: string, text: string) => {
    writeFileSync(join(dir, name), text);
    return name;
  };
  const lockKey = (name: string) => chmodSync(join(dir, `${name}.key`), 0o600);
  const ca = (name: string) => {
    ssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.crt`, '-days', '2', '-subj', `/CN=${name}`,
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
    lockKey(name);
  };
  const csr = (name: string) => {
    ssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`);
    lockKey(name);
  };
  const leaf = (name: string, signer: string, extFile: string) => {
    csr(name);
    ssl('x509', '-req', '-in', `${name}.csr`, '-CA', `${signer}.crt`, '-CAkey', `${signer}.key`, '-CAcreateserial', '-out', `${name}.crt`, '-days', '2', '-extfile', extFile);
  };
  const fingerprint = (name: string) => {
    const out = ssl('x509', '-in', `${name}.crt`, '-noout', '-fingerprint', '-sha256').trim();
    const m = /=([0-9A-F:]+)$/i.exec(out);
    if (!m) throw new Error(`unexpected openssl fingerprint output: ${out}`);
    return m[1]!.toUpperCase();
  };

  ca('kh-test-ca');
  ca('kh-foreign-ca');
  const serverExt = file('server.ext', 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n');
  const clientExt = file('client.ext', 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n');
  leaf('server', 'kh-test-ca', serverExt);
  leaf('app-mtls', 'kh-test-ca', clientExt);
  leaf('unregistered', 'kh-test-ca', clientExt);
  leaf('foreign', 'kh-foreign-ca', clientExt);

  // An expired client certificate. `openssl x509 -req` in OpenSSL 3.0 cannot
  // set explicit dates, so sign it with `openssl ca` and a minimal config.
  file('ca-index.txt', '');
  file('ca-serial', `01${randomBytes(8).toString('hex')}\n`);
  const caConf = file('ca.cnf', [
    '[ ca ]',
    'default_ca = kh_ca',
    '[ kh_ca ]',
    'database = ca-index.txt',
    'serial = ca-serial',
    'new_certs_dir = .',
    'certificate = kh-test-ca.crt',
    'private_key = kh-test-ca.key',
    'default_md = sha256',
    'policy = policy_anything',
    'unique_subject = no',
    'copy_extensions = none',
    '[ policy_anything ]',
    'commonName = supplied',
    '',
  ].join('\n'));
  csr('expired-client');
  ssl('ca', '-config', caConf, '-batch', '-notext', '-in', 'expired-client.csr', '-out', 'expired-client.crt',
    '-startdate', '20200101000000Z', '-enddate', '20200102000000Z', '-extfile', clientExt);

  const path = (f: string) => join(dir, f);
  const read = (f: string) => readFileSync(path(f));
  const client = (name: string): PkiClient => ({ cert: read(`${name}.crt`), key: read(`${name}.key`), certFile: path(`${name}.crt`), keyFile: path(`${name}.key`) });
  return {
    dir,
    ca: read('kh-test-ca.crt'),
    caFile: path('kh-test-ca.crt'),
    serverCert: path('server.crt'),
    serverKey: path('server.key'),
    serverFingerprint: fingerprint('server'),
    client: { ...client('app-mtls'), fingerprint: fingerprint('app-mtls') },
    other: client('unregistered'),
    foreign: client('foreign'),
    foreignCaFile: path('kh-foreign-ca.crt'),
    expiredClient: { ...client('expired-client'), fingerprint: fingerprint('expired-client') },
  };
}
