import { createCipheriv, createDecipheriv, createHash, createHmac, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

// A stand-in for AWS KMS (AWS itself cannot be reached from tests): an HTTP
// server on 127.0.0.1 speaking the AWS JSON 1.1 protocol of TrentService
// (POST /, X-Amz-Target: TrentService.<Op>, application/x-amz-json-1.1, errors
// as {"__type","message"} with HTTP 400), for the official AWS SDK.
//
// It checks requests as AWS does: the SigV4 signature is recomputed with the
// secret of the access key (wrong secret → InvalidSignatureException), the
// credential scope must name this region and "kms", a session token must be
// the expected one. Encrypt/Decrypt use a real AES-256-GCM key per KMS key;
// the ciphertext blob is opaque to the client and binds the key id and the
// encryption context, with AWS's size (plaintext + 152 bytes).
//
// Switches make it answer as AWS does when things go wrong: key disabled,
// pending deletion, throttling, access denied, expired token, garbage.

export type KeyState = 'Enabled' | 'Disabled' | 'PendingDeletion' | 'PendingImport' | 'Unavailable';
export type Failure = 'throttle' | 'access-denied' | 'expired-token' | 'garbage' | 'internal' | 'hang';
export type Op = 'Encrypt' | 'Decrypt' | 'DescribeKey';

export interface StandInCall {
  readonly op: string;
  readonly keyId?: string;
  readonly context?: Record<string, string>;
  readonly accessKeyId?: string;
  readonly result: string;
}

interface StandInKey {
  readonly id: string;
  readonly arn: string;
  readonly material: Buffer;
  state: KeyState;
  keySpec: string;
  keyUsage: string;
  /** DescribeKey fields left out of the reply, as some AWS-compatible services do. */
  omit: ReadonlySet<DescribeField>;
}

type DescribeField = 'KeyUsage' | 'KeySpec' | 'CustomerMasterKeySpec';

export interface StandInOptions {
  readonly region?: string;
  readonly account?: string;
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  /** When set, requests must carry this session token (X-Amz-Security-Token). */
  readonly sessionToken?: string;
}

// AWS's blob for a 32-byte plaintext is 184 bytes: version | key id | metadata | nonce | ct | tag.
const BLOB_VERSION = 0x01;
const RESERVED = 107;
const HEADER = 1 + 16 + RESERVED;

function canonicalContext(ctx: Record<string, string> | undefined): Buffer {
  const entries = Object.entries(ctx ?? {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return Buffer.from(JSON.stringify(entries));
}

const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');
const hmac = (k: Buffer | string, v: string) => createHmac('sha256', k).update(v).digest();

export class KmsStandIn {
  readonly region: string;
  readonly account: string;
  readonly calls: StandInCall[] = [];
  /** Failures per operation (all operations when `ops` is omitted); `times` limits how many calls fail. */
  private failures: Array<{ kind: Failure; ops?: ReadonlySet<string>; times: number }> = [];
  private readonly keys = new Map<string, StandInKey>();
  private readonly aliases = new Map<string, string>();
  private server: Server | undefined;
  private readonly opts: StandInOptions;
  port = 0;

  constructor(opts: StandInOptions) {
    this.opts = opts;
    this.region = opts.region ?? 'eu-west-1';
    this.account = opts.account ?? '111122223333';
  }

  get endpoint(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Creates a symmetric encryption key; returns its ARN. `omit`: fields its DescribeKey reply leaves out. */
  createKey(opts: { keySpec?: string; keyUsage?: string; omit?: readonly DescribeField[] } = {}): string {
    const id = randomUUID();
    const arn = `arn:aws:kms:${this.region}:${this.account}:key/${id}`;
    this.keys.set(id, { id, arn, material: randomBytes(32), state: 'Enabled', keySpec: opts.keySpec ?? 'SYMMETRIC_DEFAULT', keyUsage: opts.keyUsage ?? 'ENCRYPT_DECRYPT', omit: new Set(opts.omit ?? []) });
    return arn;
  }

  /** Points alias/<name> at a key; returns the alias ARN. */
  setAlias(name: string, keyArn: string): string {
    this.aliases.set(`alias/${name}`, keyArn.slice(keyArn.lastIndexOf('/') + 1));
    return `arn:aws:kms:${this.region}:${this.account}:alias/${name}`;
  }

  setKeyState(arn: string, state: KeyState): void {
    this.keys.get(arn.slice(arn.lastIndexOf('/') + 1))!.state = state;
  }

  /** Makes the next `times` calls of `ops` (default: every operation) fail as AWS does for `kind`. */
  fail(kind: Failure, opts: { ops?: Op[]; times?: number } = {}): void {
    this.failures.push({ kind, ...(opts.ops ? { ops: new Set(opts.ops) } : {}), times: opts.times ?? Infinity });
  }

  heal(): void {
    this.failures = [];
  }

  count(op: string, result?: string): number {
    return this.calls.filter((c) => c.op === op && (result === undefined || c.result === result)).length;
  }

  async start(port = 0): Promise<void> {
    const server = createServer((req, res) => void this.handle(req, res));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => resolve());
    });
    this.server = server;
    this.port = (server.address() as AddressInfo).port;
  }

  /** Closes the listener and every open connection: the service is gone. */
  async stop(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (!s) return;
    s.closeAllConnections();
    await new Promise<void>((resolve) => s.close(() => resolve()));
  }

  private resolveKey(keyId: unknown): StandInKey | undefined {
    if (typeof keyId !== 'string') return undefined;
    let id = keyId;
    const prefix = `arn:aws:kms:${this.region}:${this.account}:`;
    if (id.startsWith('arn:')) {
      if (!id.startsWith(prefix)) return undefined;
      id = id.slice(prefix.length);
    }
    if (id.startsWith('alias/')) id = this.aliases.get(id) ?? '';
    else if (id.startsWith('key/')) id = id.slice(4);
    return this.keys.get(id);
  }

  /** Checks the SigV4 Authorization as AWS does; returns an error to send, or the access key id. */
  private authenticate(req: IncomingMessage, body: Buffer): { error: [string, string] } | { accessKeyId: string } {
    const auth = req.headers.authorization;
    if (!auth) return { error: ['MissingAuthenticationTokenException', 'Missing Authentication Token'] };
    const m = /^AWS4-HMAC-SHA256 Credential=([^/,\s]+)\/(\d{8})\/([^/]+)\/([^/]+)\/aws4_request, ?SignedHeaders=([a-z0-9;-]+), ?Signature=([0-9a-f]{64})$/.exec(auth);
    if (!m) return { error: ['IncompleteSignatureException', 'Authorization header requires Credential, SignedHeaders and Signature'] };
    const [, accessKeyId, date, region, service, signedHeaders, signature] = m as unknown as [string, string, string, string, string, string, string];
    if (accessKeyId !== this.opts.accessKeyId) return { error: ['UnrecognizedClientException', 'The security token included in the request is invalid.'] };
    if (region !== this.region || service !== 'kms') return { error: ['InvalidSignatureException', `Credential should be scoped to a valid region and service kms, not '${region}/${service}'.`] };
    const amzDate = String(req.headers['x-amz-date'] ?? '');
    if (!amzDate.startsWith(date)) return { error: ['InvalidSignatureException', 'Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP'] };
    const token = req.headers['x-amz-security-token'];
    if (this.opts.sessionToken !== undefined && token !== this.opts.sessionToken) return { error: ['UnrecognizedClientException', 'The security token included in the request is invalid.'] };
    const names = signedHeaders.split(';');
    if (!names.includes('host') || !names.includes('x-amz-date')) return { error: ['InvalidSignatureException', 'host and x-amz-date must be signed'] };
    const headers = names.map((n) => `${n}:${String(req.headers[n] ?? '').trim().replace(/\s+/g, ' ')}\n`).join('');
    const canonical = ['POST', '/', '', headers, signedHeaders, sha256(body)].join('\n');
    const scope = `${date}/${region}/${service}/aws4_request`;
    const toSign = ['AWS4-HMAC-SHA256', amzDate, scope, sha256(canonical)].join('\n');
    const key = hmac(hmac(hmac(hmac(`AWS4${this.opts.secretAccessKey}`, date), region), service), 'aws4_request');
    const expected = createHmac('sha256', key).update(toSign).digest();
    if (!timingSafeEqual(expected, Buffer.from(signature, 'hex'))) {
      // As AWS does, the message quotes the canonical request, signed headers (session token included) and all.
      return { error: ['InvalidSignatureException', `The request signature we calculated does not match the signature you provided. The Canonical String for this request should have been\n'${canonical}'\n\nThe String-to-Sign should have been\n'${toSign}'\n`] };
    }
    return { accessKeyId };
  }

  private takeFailure(op: string): Failure | undefined {
    const f = this.failures.find((x) => x.times > 0 && (!x.ops || x.ops.has(op)));
    if (!f) return undefined;
    f.times -= 1;
    return f.kind;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const body = Buffer.concat(chunks);
    const target = String(req.headers['x-amz-target'] ?? '');
    const op = target.startsWith('TrentService.') ? target.slice('TrentService.'.length) : target;
    const send = (status: number, payload: unknown, result: string, extra: Partial<StandInCall> = {}) => {
      this.calls.push({ op, result, ...extra });
      res.writeHead(status, { 'content-type': 'application/x-amz-json-1.1', 'x-amzn-requestid': randomUUID() });
      res.end(JSON.stringify(payload));
    };
    const error = (type: string, message: string, extra: Partial<StandInCall> = {}, status = 400) => send(status, { __type: type, message }, type, extra);

    if (req.method !== 'POST' || req.url !== '/') return error('UnknownOperationException', 'only POST / is served');
    if (!String(req.headers['content-type'] ?? '').startsWith('application/x-amz-json-1.1')) return error('SerializationException', 'content type must be application/x-amz-json-1.1');
    const who = this.authenticate(req, body);
    if ('error' in who) return error(who.error[0], who.error[1]);
    const extra: { accessKeyId: string; keyId?: string; context?: Record<string, string> } = { accessKeyId: who.accessKeyId };

    let input: Record<string, unknown>;
    try {
      input = JSON.parse(body.toString('utf8')) as Record<string, unknown>;
    } catch {
      return error('SerializationException', 'body is not JSON', extra);
    }
    if (typeof input.KeyId === 'string') extra.keyId = input.KeyId;
    if (input.EncryptionContext && typeof input.EncryptionContext === 'object') extra.context = input.EncryptionContext as Record<string, string>;

    const failure = this.takeFailure(op);
    if (failure === 'hang') {
      this.calls.push({ op, result: 'hang', ...extra });
      return; // never answers; the client's timeout must end the call
    }
    if (failure === 'throttle') return error('ThrottlingException', 'Rate exceeded', extra);
    if (failure === 'access-denied') {
      return error('AccessDeniedException', `User: arn:aws:iam::${this.account}:role/keyhaven-plugin is not authorized to perform: kms:${op} on resource: ${String(input.KeyId ?? '*')} because no identity-based policy allows the kms:${op} action`, extra);
    }
    if (failure === 'expired-token') return error('ExpiredTokenException', 'The security token included in the request is expired', extra);
    if (failure === 'internal') return error('KMSInternalException', 'An internal error occurred', extra, 500);
    if (failure === 'garbage') {
      this.calls.push({ op, result: 'garbage', ...extra });
      res.writeHead(200, { 'content-type': 'application/x-amz-json-1.1' });
      res.end('<html>not KMS</html>');
      return;
    }

    const stateError = (k: StandInKey): [string, string] | undefined => {
      if (k.state === 'Disabled') return ['DisabledException', `${k.arn} is disabled.`];
      if (k.state === 'PendingDeletion') return ['KMSInvalidStateException', `${k.arn} is pending deletion.`];
      if (k.state !== 'Enabled') return ['KMSInvalidStateException', `${k.arn} is ${k.state === 'Unavailable' ? 'unavailable' : 'pending import'}.`];
      return undefined;
    };

    if (op === 'DescribeKey') {
      const k = this.resolveKey(input.KeyId);
      if (!k) return error('NotFoundException', `Key '${String(input.KeyId)}' does not exist`, extra);
      const metadata: Record<string, unknown> = {
        AWSAccountId: this.account,
        KeyId: k.id,
        Arn: k.arn,
        CreationDate: 1_700_000_000,
        Enabled: k.state === 'Enabled',
        Description: '',
        KeyUsage: k.keyUsage,
        KeyState: k.state,
        Origin: 'AWS_KMS',
        KeyManager: 'CUSTOMER',
        CustomerMasterKeySpec: k.keySpec,
        KeySpec: k.keySpec,
        EncryptionAlgorithms: ['SYMMETRIC_DEFAULT'],
        MultiRegion: false,
      };
      for (const f of k.omit) delete metadata[f];
      return send(200, { KeyMetadata: metadata }, 'ok', extra);
    }
    if (op === 'Encrypt') {
      const k = this.resolveKey(input.KeyId);
      if (!k) return error('NotFoundException', `Key '${String(input.KeyId)}' does not exist`, extra);
      const se = stateError(k);
      if (se) return error(se[0], se[1], extra);
      if (k.keyUsage !== 'ENCRYPT_DECRYPT' || k.keySpec !== 'SYMMETRIC_DEFAULT') return error('InvalidKeyUsageException', `${k.arn} key usage is ${k.keyUsage} which is not valid for Encrypt.`, extra);
      const plaintext = typeof input.Plaintext === 'string' ? Buffer.from(input.Plaintext, 'base64') : Buffer.alloc(0);
      if (plaintext.length < 1 || plaintext.length > 4096) return error('ValidationException', '1 validation error detected: Value at \'plaintext\' failed to satisfy constraint: Member must have length between 1 and 4096', extra);
      const header = Buffer.alloc(HEADER);
      header[0] = BLOB_VERSION;
      Buffer.from(k.id.replace(/-/g, ''), 'hex').copy(header, 1);
      const nonce = randomBytes(12);
      const c = createCipheriv('aes-256-gcm', k.material, nonce);
      c.setAAD(Buffer.concat([header, canonicalContext(extra.context)]));
      const ct = Buffer.concat([c.update(plaintext), c.final()]);
      const blob = Buffer.concat([header, nonce, ct, c.getAuthTag()]);
      return send(200, { CiphertextBlob: blob.toString('base64'), KeyId: k.arn, EncryptionAlgorithm: 'SYMMETRIC_DEFAULT' }, 'ok', extra);
    }
    if (op === 'Decrypt') {
      const blob = typeof input.CiphertextBlob === 'string' ? Buffer.from(input.CiphertextBlob, 'base64') : Buffer.alloc(0);
      if (blob.length < HEADER + 12 + 16 + 1 || blob[0] !== BLOB_VERSION) return error('InvalidCiphertextException', '', extra);
      const hex = blob.subarray(1, 17).toString('hex');
      const id = `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
      const k = this.keys.get(id);
      if (!k) return error('InvalidCiphertextException', '', extra);
      if (input.KeyId !== undefined) {
        const named = this.resolveKey(input.KeyId);
        if (!named) return error('NotFoundException', `Key '${String(input.KeyId)}' does not exist`, extra);
        if (named.id !== k.id) return error('IncorrectKeyException', 'The key ID in the request does not identify a KMS key that can perform this operation.', extra);
      }
      const se = stateError(k);
      if (se) return error(se[0], se[1], extra);
      const d = createDecipheriv('aes-256-gcm', k.material, blob.subarray(HEADER, HEADER + 12));
      d.setAAD(Buffer.concat([blob.subarray(0, HEADER), canonicalContext(extra.context)]));
      d.setAuthTag(blob.subarray(blob.length - 16));
      let plaintext: Buffer;
      try {
        plaintext = Buffer.concat([d.update(blob.subarray(HEADER + 12, blob.length - 16)), d.final()]);
      } catch {
        return error('InvalidCiphertextException', '', extra);
      }
      return send(200, { KeyId: k.arn, Plaintext: plaintext.toString('base64'), EncryptionAlgorithm: 'SYMMETRIC_DEFAULT' }, 'ok', extra);
    }
    return error('UnknownOperationException', `${op.slice(0, 60)} is not served by the stand-in`, extra);
  }
}
