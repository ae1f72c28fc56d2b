import { readFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import { KeyhavenError } from '../../errors.js';
import { connectGateway, gatewaySource, probe, type GatewayTarget } from './gateway.js';
import type { EtcdSource } from './types.js';

export interface LiveEtcdOptions {
  /** `http(s)://host:port`: an etcd client URL. */
  endpoint: string;
  caFile?: string;
  certFile?: string;
  keyFile?: string;
  /** Per request; default 30 s. */
  timeoutMs?: number;
}

const DEFAULT_TIMEOUT_MS = 30_000;

/** The endpoint's origin, checked; a message about a bad one never repeats a user or password it may hold. */
function parseEndpoint(endpoint: string): URL {
  let u: URL;
  try {
    u = new URL(endpoint);
  } catch {
    throw new KeyhavenError('invalid_argument', `the etcd endpoint ${endpoint.includes('@') ? '(as given)' : JSON.stringify(endpoint)} is not a URL; give one as in https://127.0.0.1:2379`);
  }
  if (u.username || u.password) throw new KeyhavenError('invalid_argument', 'the etcd endpoint must not hold a user or password');
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new KeyhavenError('invalid_argument', `the etcd endpoint ${u.origin === 'null' ? JSON.stringify(endpoint) : u.origin} must start with http:// or https://`);
  if ((u.pathname !== '/' && u.pathname !== '') || u.search || u.hash) throw new KeyhavenError('invalid_argument', `the etcd endpoint must be a bare URL as in https://127.0.0.1:2379, without a path, not ${JSON.stringify(endpoint)}`);
  return u;
}

function readTlsFile(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    throw new KeyhavenError('config_invalid', `cannot read the etcd ${what} file ${path}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
}

/** Loads the TLS material once here, so a bad PEM or a key that does not match its certificate is named as such, not as a connection failure. */
function checkTls(tls: GatewayTarget['tls'], o: LiveEtcdOptions): void {
  if (!tls.ca && !tls.cert) return;
  try {
    createSecureContext(tls);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'error';
    const files = [o.caFile && `CA ${o.caFile}`, o.certFile && `certificate ${o.certFile}`, o.keyFile && `key ${o.keyFile}`].filter(Boolean).join(', ');
    const why = /KEY_VALUES_MISMATCH/.test(code) ? 'the key does not match the certificate' : 'not PEM certificates and key that load';
    throw new KeyhavenError('config_invalid', `the etcd TLS files (${files}) are unusable: ${why} (${code})`);
  }
}

/** Connects to a live etcd over its JSON gateway and checks that it answers before returning. */
export async function openLiveEtcd(o: LiveEtcdOptions): Promise<EtcdSource> {
  const u = parseEndpoint(o.endpoint);
  const timeoutMs = o.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  if (!Number.isSafeInteger(timeoutMs) || timeoutMs < 1) throw new KeyhavenError('invalid_argument', `the etcd timeout must be a positive number of milliseconds, not ${timeoutMs}`);
  if (!!o.certFile !== !!o.keyFile) throw new KeyhavenError('invalid_argument', 'an etcd client certificate needs both a certificate file and a key file');
  const tlsFiles = o.caFile || o.certFile;
  if (tlsFiles && u.protocol !== 'https:') throw new KeyhavenError('invalid_argument', `TLS files were given for the plain-http etcd endpoint ${u.origin}; use https://`);
  const target: GatewayTarget = {
    origin: u.origin,
    label: `etcd ${u.origin}`,
    tls: {
      ...(o.caFile ? { ca: readTlsFile(o.caFile, 'CA') } : {}),
      ...(o.certFile ? { cert: readTlsFile(o.certFile, 'client certificate') } : {}),
      ...(o.keyFile ? { key: readTlsFile(o.keyFile, 'client key') } : {}),
    },
    ...(o.caFile ? { caFile: o.caFile } : {}),
    ...(o.certFile ? { certFile: o.certFile } : {}),
    timeoutMs,
  };
  checkTls(target.tls, o);
  const gw = await connectGateway(target);
  try {
    await probe(gw);
  } catch (e) {
    await gw.close().catch(() => {});
    throw e;
  }
  return gatewaySource(target.label, gw);
}
