import { randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import type { AuditLog } from '../audit/audit-log.js';
import { asKeyhavenError, KeyhavenError } from '../errors.js';
import { GRPC_STATUS } from '../grpc-status.js';
import { validateAnnotations } from './annotations.js';
import type { PluginMetrics } from './metrics.js';
import type { KmsProvider, ProviderDecryptResult } from './provider.js';
import { MAX_CIPHERTEXT_BYTES, MAX_KEY_ID_BYTES } from './limits.js';
import type { StatusMonitor } from './status-monitor.js';

export interface KmsServiceDeps {
  readonly provider: KmsProvider;
  readonly monitor: StatusMonitor;
  readonly metrics: PluginMetrics;
  readonly logger: Logger;
  /** The embedded store's audit log; a remote provider's calls are audited by the key server, and logged here. */
  readonly audit?: Pick<AuditLog, 'record'>;
  readonly runtimeVersion: string;
}

type Unary<Req, Res> = (call: grpc.ServerUnaryCall<Req, Res>, cb: grpc.sendUnaryData<Res>) => void;

interface V2EncryptRequest { plaintext: Buffer; uid: string }
interface V2DecryptRequest { ciphertext: Buffer; uid: string; key_id: string; annotations: Record<string, Buffer> }
interface V1EncryptRequest { version: string; plain: Buffer }
interface V1DecryptRequest { version: string; cipher: Buffer }

const ACTOR = 'kms-client';
// kube-apiserver sends UUIDs; anything on the socket could send 100 KiB, which
// would then be copied into every log line and audit record.
const MAX_UID_CHARS = 128;

function boundedUid(uid: string): string {
  return uid.length <= MAX_UID_CHARS ? uid : `${uid.slice(0, MAX_UID_CHARS)}...(${uid.length} chars)`;
}

function checkPlaintext(p: Buffer, max: number): void {
  if (p.length === 0) throw new KeyhavenError('invalid_argument', 'plaintext is empty');
  if (p.length > max) {
    throw new KeyhavenError('invalid_argument', `plaintext is ${p.length} bytes; at most ${max} fit a ${MAX_CIPHERTEXT_BYTES}-byte ciphertext`);
  }
}

function checkCiphertext(c: Buffer): void {
  if (c.length === 0) throw new KeyhavenError('invalid_argument', 'ciphertext is empty');
  if (c.length > MAX_CIPHERTEXT_BYTES) throw new KeyhavenError('invalid_argument', `ciphertext is ${c.length} bytes; keyhaven never issues more than ${MAX_CIPHERTEXT_BYTES}`);
}

function checkKeyIdReply(keyId: string): void {
  const n = Buffer.byteLength(keyId);
  if (n === 0 || n > MAX_KEY_ID_BYTES) throw new KeyhavenError('internal', 'provider returned an invalid key_id');
}

/** Implements both KMS API versions over one provider. */
export function createKmsHandlers(deps: KmsServiceDeps) {
  const { provider, monitor, metrics, logger, audit } = deps;
  // Identical Decrypts in flight (an apiserver restart sends duplicates) share one provider call.
  const decrypting = new Map<string, Promise<ProviderDecryptResult>>();

  const decryptOnce = (ciphertext: Buffer, keyId: string | undefined, annotations: Record<string, Buffer>, uid: string): Promise<ProviderDecryptResult> => {
    const k = `${keyId ?? ''}\u0000${ciphertext.toString('base64')}`;
    let p = decrypting.get(k);
    if (!p) {
      const end = metrics.providerDuration.startTimer({ operation: 'decrypt' });
      p = provider.decrypt(ciphertext, keyId, annotations, { uid }).finally(() => {
        end();
        decrypting.delete(k);
      });
      decrypting.set(k, p);
    }
    return p;
  };

  // Label children are looked up once: the label hashing is measurable per call.
  const children = new Map<string, { inc(): void; observe(v: number): void }>();
  const countRequest = (method: string, code: string, seconds: number) => {
    const k = `${method} ${code}`;
    let c = children.get(k);
    if (!c) {
      const counter = metrics.requests.labels({ method, code });
      const histogram = metrics.duration.labels({ method, code });
      c = { inc: () => counter.inc(), observe: (v) => histogram.observe(v) };
      children.set(k, c);
    }
    c.inc();
    c.observe(seconds);
  };

  // Wraps a handler: timing, metrics, one log line, the error mapping.
  function unary<Req, Res>(
    method: string,
    uidOf: (req: Req) => string,
    body: (req: Req, uid: string, ctx: { keyName?: string; keyVersion?: number; keyId?: string }) => Promise<Res>,
    audited: boolean,
  ): Unary<Req, Res> {
    const infoLevel = method === 'v2.Status' ? 'debug' : 'info';
    return (call, cb) => {
      const start = process.hrtime.bigint();
      const uid = boundedUid(uidOf(call.request)) || randomUUID();
      const ctx: { keyName?: string; keyVersion?: number; keyId?: string } = {};
      const finish = (code: grpc.status, err?: KeyhavenError) => {
        const seconds = Number(process.hrtime.bigint() - start) / 1e9;
        countRequest(method, grpc.status[code] ?? String(code), seconds);
        const line = () => ({ uid, method, keyId: ctx.keyId, keyVersion: ctx.keyVersion, code: grpc.status[code], ms: Math.round(seconds * 1e6) / 1e3 });
        if (err) {
          const level = err.code === 'internal' || err.code === 'audit_failed' ? 'error' : 'warn';
          logger[level]({ ...line(), err: { code: err.code, message: err.message } }, 'kms call failed');
        } else if (logger.isLevelEnabled(infoLevel)) {
          logger[infoLevel](line(), 'kms call');
        }
      };
      body(call.request, uid, ctx).then(
        async (res) => {
          if (audited && audit) {
            try {
              await audit.record({ actor: ACTOR, operation: method, keyName: ctx.keyName, keyVersion: ctx.keyVersion, result: 'ok', requestId: uid, details: ctx.keyId ? { keyId: ctx.keyId } : undefined });
            } catch (e) {
              const err = asKeyhavenError(e);
              finish(GRPC_STATUS[err.code], err);
              cb({ code: GRPC_STATUS[err.code], details: err.message });
              return;
            }
          }
          finish(grpc.status.OK);
          cb(null, res);
        },
        async (e: unknown) => {
          const err = asKeyhavenError(e);
          if (err.code === 'internal' && err.cause) logger.error({ uid, method, err: err.cause }, 'internal error');
          if (audited && audit) {
            // A refused request is audited too; if even that fails the answer is already an error.
            await audit.record({ actor: ACTOR, operation: method, keyName: ctx.keyName, keyVersion: ctx.keyVersion, result: err.code, requestId: uid, details: ctx.keyId ? { keyId: ctx.keyId } : undefined }).catch(() => {});
          }
          finish(GRPC_STATUS[err.code], err);
          cb({ code: GRPC_STATUS[err.code], details: err.message });
        },
      );
    };
  }

  const v2 = {
    Status: unary<Record<string, never>, { version: string; healthz: string; key_id: string }>(
      'v2.Status',
      () => '',
      async (_req, _uid, ctx) => {
        const snap = await monitor.check();
        ctx.keyId = snap.keyId;
        return { version: 'v2', healthz: 'ok', key_id: snap.keyId };
      },
      false,
    ),
    Encrypt: unary<V2EncryptRequest, { ciphertext: Buffer; key_id: string; annotations: Record<string, Buffer> }>(
      'v2.Encrypt',
      (r) => r.uid,
      async (req, uid, ctx) => {
        checkPlaintext(req.plaintext, provider.maxPlaintextBytes);
        const end = metrics.providerDuration.startTimer({ operation: 'encrypt' });
        const r = await provider.encrypt(req.plaintext, { uid, annotations: true }).finally(end);
        Object.assign(ctx, { keyName: r.keyName, keyVersion: r.keyVersion, keyId: r.keyId });
        checkKeyIdReply(r.keyId);
        if (r.ciphertext.length === 0 || r.ciphertext.length > MAX_CIPHERTEXT_BYTES) throw new KeyhavenError('internal', 'provider returned a ciphertext outside 1..1024 bytes');
        const annotations = r.annotations ? { ...r.annotations } : {};
        validateAnnotations(annotations, 'reply');
        return { ciphertext: r.ciphertext, key_id: r.keyId, annotations };
      },
      true,
    ),
    Decrypt: unary<V2DecryptRequest, { plaintext: Buffer }>(
      'v2.Decrypt',
      (r) => r.uid,
      async (req, uid, ctx) => {
        checkCiphertext(req.ciphertext);
        const keyIdBytes = Buffer.byteLength(req.key_id);
        if (keyIdBytes === 0) throw new KeyhavenError('invalid_argument', 'key_id is empty');
        if (keyIdBytes > MAX_KEY_ID_BYTES) throw new KeyhavenError('invalid_argument', `key_id is ${keyIdBytes} bytes; at most ${MAX_KEY_ID_BYTES}`);
        ctx.keyId = req.key_id;
        validateAnnotations(req.annotations, 'request');
        const r = await decryptOnce(req.ciphertext, req.key_id, req.annotations ?? {}, uid);
        Object.assign(ctx, { keyName: r.keyName, keyVersion: r.keyVersion });
        return { plaintext: r.plaintext };
      },
      true,
    ),
  };

  const checkV1 = (version: string) => {
    if (version !== 'v1beta1') throw new KeyhavenError('invalid_argument', `unsupported KMS API version ${JSON.stringify(version.slice(0, 40))}; this service speaks v1beta1`);
  };

  const v1beta1 = {
    Version: unary<{ version: string }, { version: string; runtime_name: string; runtime_version: string }>(
      'v1beta1.Version',
      () => '',
      async (req) => {
        checkV1(req.version);
        return { version: 'v1beta1', runtime_name: 'keyhaven', runtime_version: deps.runtimeVersion };
      },
      false,
    ),
    Encrypt: unary<V1EncryptRequest, { cipher: Buffer }>(
      'v1beta1.Encrypt',
      () => '',
      async (req, uid, ctx) => {
        checkV1(req.version);
        checkPlaintext(req.plain, provider.maxPlaintextBytes);
        const end = metrics.providerDuration.startTimer({ operation: 'encrypt' });
        const r = await provider.encrypt(req.plain, { uid, annotations: false }).finally(end);
        Object.assign(ctx, { keyName: r.keyName, keyVersion: r.keyVersion, keyId: r.keyId });
        if (r.annotations && Object.keys(r.annotations).length > 0) throw new KeyhavenError('internal', 'provider needs annotations, which v1beta1 cannot carry');
        return { cipher: r.ciphertext };
      },
      true,
    ),
    Decrypt: unary<V1DecryptRequest, { plain: Buffer }>(
      'v1beta1.Decrypt',
      () => '',
      async (req, uid, ctx) => {
        checkV1(req.version);
        checkCiphertext(req.cipher);
        const r = await decryptOnce(req.cipher, undefined, {}, uid);
        Object.assign(ctx, { keyName: r.keyName, keyVersion: r.keyVersion, keyId: r.keyId });
        return { plain: r.plaintext };
      },
      true,
    ),
  };

  return { v2, v1beta1 };
}
