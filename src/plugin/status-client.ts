import { lstatSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { KeyhavenError } from '../errors.js';
import { loadKmsProtos } from './kms-protos.js';
import { parseEndpoint } from './socket.js';

// `keyhaven plugin status`: asks a running KMS plugin over its socket what the
// apiserver would hear. Works against any KMS plugin, not only keyhaven's.

export interface CallFailure {
  /** The gRPC status code's name, e.g. FAILED_PRECONDITION. */
  readonly code: string;
  readonly message: string;
}

export interface PluginStatusReport {
  readonly socket: string;
  /** v2 Status answered, healthz is "ok" and key_id is not empty: what the apiserver needs to write. */
  readonly healthy: boolean;
  readonly v2: { readonly version: string; readonly healthz: string; readonly keyId: string } | { readonly error: CallFailure };
  /** null when the socket does not serve v1beta1 (off by default since Kubernetes 1.29, or --no-v1beta1). */
  readonly v1beta1: { readonly version: string; readonly runtimeName: string; readonly runtimeVersion: string } | { readonly error: CallFailure } | null;
}

type Unary = (req: unknown, meta: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: any) => void) => void;
type Outcome = { ok: true; res: any } | { ok: false; err: grpc.ServiceError };

function unary(client: grpc.Client, method: string, req: unknown, deadline: number): Promise<Outcome> {
  return new Promise((resolve) => {
    (client as unknown as Record<string, Unary>)[method]!(req, new grpc.Metadata(), { deadline }, (err, res) => resolve(err ? { ok: false, err } : { ok: true, res }));
  });
}

const failure = (e: grpc.ServiceError): CallFailure => ({ code: grpc.status[e.code] ?? String(e.code), message: e.details || e.message });

// No server answered: the connection failed or nothing came back in time. A
// plugin's Version never fails this way, so together they mean "no plugin here".
const unreached = (o: Outcome) => !o.ok && (o.err.code === grpc.status.UNAVAILABLE || o.err.code === grpc.status.DEADLINE_EXCEEDED);
const unimplemented = (o: Outcome) => !o.ok && o.err.code === grpc.status.UNIMPLEMENTED;

/** Calls v2 Status and v1beta1 Version on `endpoint` (unix:///path or unix:///@name) within `timeoutMs`. */
export async function queryPluginStatus(endpoint: string, timeoutMs: number): Promise<PluginStatusReport> {
  const ep = parseEndpoint(endpoint);
  if (ep.kind === 'path') {
    let isSocket: boolean;
    try {
      isSocket = lstatSync(ep.path).isSocket();
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw new KeyhavenError('not_found', `no socket at ${ep.path}: is the plugin running, and is this the socket its config names?`);
      throw new KeyhavenError(code === 'EACCES' ? 'permission_denied' : 'unavailable', `cannot inspect ${ep.path}: ${code ?? 'error'}`);
    }
    if (!isSocket) throw new KeyhavenError('invalid_argument', `${ep.path} is not a unix socket`);
  }
  const protos = loadKmsProtos();
  // grpc-js has no unix-abstract scheme; a path starting with NUL is an abstract name to Node's net.connect.
  const address = ep.kind === 'abstract' ? `unix:\0${ep.name}` : ep.grpcAddress;
  const v2 = new protos.v2.KeyManagementService(address, grpc.credentials.createInsecure());
  const v1 = new protos.v1beta1.KeyManagementService(address, grpc.credentials.createInsecure());
  try {
    const deadline = Date.now() + timeoutMs;
    const [status, version] = await Promise.all([unary(v2, 'Status', {}, deadline), unary(v1, 'Version', { version: 'v1beta1' }, deadline)]);
    if (unreached(status) && unreached(version)) {
      const e = (status as { err: grpc.ServiceError }).err;
      if (e.code === grpc.status.DEADLINE_EXCEEDED) throw new KeyhavenError('unavailable', `no answer from ${endpoint} within ${timeoutMs} ms`);
      if (/EACCES/.test(e.details)) throw new KeyhavenError('permission_denied', `cannot connect to ${endpoint}: permission denied (the socket is mode 0600 by default; run as its owner)`);
      // Some Node.js releases (20.x) pad abstract names when connecting as when binding (nodejs/node#50889).
      const hint = ep.kind === 'abstract' ? '; if a plugin does listen there, this Node.js may pad abstract socket names: try buf curl or a path socket' : '';
      throw new KeyhavenError('unavailable', `no KMS plugin answers on ${endpoint}: ${e.details || e.message}${hint}`);
    }
    if (unimplemented(status) && unimplemented(version)) {
      throw new KeyhavenError('failed_precondition', `${endpoint} answers gRPC but serves neither v2 nor v1beta1 KeyManagementService: not a KMS plugin`);
    }
    const v2Part: PluginStatusReport['v2'] = status.ok
      ? { version: String(status.res.version ?? ''), healthz: String(status.res.healthz ?? ''), keyId: String(status.res.key_id ?? '') }
      : { error: failure(status.err) };
    const v1Part: PluginStatusReport['v1beta1'] = version.ok
      ? { version: String(version.res.version ?? ''), runtimeName: String(version.res.runtime_name ?? ''), runtimeVersion: String(version.res.runtime_version ?? '') }
      : unimplemented(version)
        ? null
        : { error: failure(version.err) };
    const healthy = 'healthz' in v2Part && v2Part.healthz === 'ok' && v2Part.keyId.length > 0 && (v2Part.version === 'v2' || v2Part.version === 'v2beta1');
    return { socket: endpoint, healthy, v2: v2Part, v1beta1: v1Part };
  } finally {
    v2.close();
    v1.close();
  }
}
