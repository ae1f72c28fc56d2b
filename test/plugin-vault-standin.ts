import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * A stand-in for the parts of Vault the vault provider uses that keyhaven's
 * own Transit API does not serve (AppRole and Kubernetes logins, token
 * renewal and revocation, lookup-self, sealed, throttled and slow answers), written from Vault's
 * API documentation. Real HTTP on 127.0.0.1 and real AES-256-GCM; every test
 * using it says "stand-in" in its name.
 */

export interface StandinToken {
  readonly policy: 'transit' | 'none';
  /** Epoch ms at which it stops working; Infinity: never. */
  expiresAt: number;
  /** Epoch ms past which renewals no longer extend it (max TTL). */
  readonly maxAt: number;
  readonly renewable: boolean;
  readonly ttlSeconds: number;
}

export interface StandinRequest {
  readonly method: string;
  readonly path: string;
  readonly headers: IncomingMessage['headers'];
  readonly body: any;
}

export interface VaultStandin {
  readonly url: string;
  readonly mount: string;
  readonly key: string;
  readonly requests: StandinRequest[];
  readonly tokens: Map<string, StandinToken>;
  /** Tokens revoked with revoke-self, in order (they stay in `tokens`, expired, for the tests' secret scans). */
  readonly revoked: string[];
  /** Adds a token with a policy; returns it. */
  addToken(policy: StandinToken['policy'], opts?: { ttlSeconds?: number; maxTtlSeconds?: number; renewable?: boolean }): string;
  rotate(): number;
  setMinDecryptionVersion(v: number): void;
  /** Deletes the key and creates it again under the same name (new material, new creation times). */
  recreate(): void;
  /** Every answer becomes this (sealed, throttled) until cleared. */
  mode: 'ok' | 'sealed' | 'throttled' | 'error500';
  /** Answers to paths starting with `pathPrefix` come this late (a Vault under load). */
  slow: { pathPrefix: string; ms: number } | undefined;
  /** policy: what the tokens of an AppRole login may do. */
  approle: { roleId: string; secretId: string; ttlSeconds: number; maxTtlSeconds: number; renewable: boolean; policy: StandinToken['policy'] };
  kubernetes: { role: string; jwt: string; ttlSeconds: number; maxTtlSeconds: number };
  /** Whether encrypt honours key_version (real Vault does). */
  honourKeyVersion: boolean;
  count(pathPrefix: string): number;
  close(): Promise<void>;
}

interface Version {
  readonly key: Buffer;
  readonly created: number;
}

export async function startVaultStandin(opts: { mount?: string; key?: string; namespace?: string } = {}): Promise<VaultStandin> {
  const mount = opts.mount ?? 'transit';
  const keyName = opts.key ?? 'kubernetes-secrets';
  const requests: StandinRequest[] = [];
  const tokens = new Map<string, StandinToken>();
  const revoked: string[] = [];
  const slowTimers = new Set<NodeJS.Timeout>();
  let versions: Version[] = [];
  let minDecryption = 1;
  let createdClock = 1_700_000_000;
  const newVersion = (): Version => ({ key: randomBytes(32), created: createdClock++ });
  versions.push(newVersion());

  const mkToken = (policy: StandinToken['policy'], ttlSeconds: number, maxTtlSeconds: number, renewable: boolean): string => {
    const t = `hvs.${randomBytes(24).toString('base64url')}`;
    const now = Date.now();
    tokens.set(t, { policy, ttlSeconds, renewable, expiresAt: ttlSeconds > 0 ? now + ttlSeconds * 1000 : Infinity, maxAt: maxTtlSeconds > 0 ? now + maxTtlSeconds * 1000 : Infinity });
    return t;
  };

  const send = (res: ServerResponse, status: number, body: unknown) => {
    const text = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  };
  const errors = (res: ServerResponse, status: number, ...msgs: string[]) => send(res, status, { errors: msgs });

  const authOf = (t: string, tok: StandinToken) => ({
    auth: { client_token: t, accessor: randomBytes(8).toString('hex'), policies: ['default', tok.policy], lease_duration: tok.ttlSeconds, renewable: tok.renewable },
  });

  const live = (t: string | undefined): StandinToken | undefined => {
    const tok = t ? tokens.get(t) : undefined;
    return tok && tok.expiresAt > Date.now() ? tok : undefined;
  };

  const encryptWith = (version: number, plaintext: Buffer): string => {
    const v = versions[version - 1]!;
    const nonce = randomBytes(12);
    const c = createCipheriv('aes-256-gcm', v.key, nonce);
    const ct = Buffer.concat([nonce, c.update(plaintext), c.final(), c.getAuthTag()]);
    return `vault:v${version}:${ct.toString('base64')}`;
  };

  const handle = (req: IncomingMessage, res: ServerResponse, raw: string) => {
    const path = (req.url ?? '').split('?')[0]!;
    let body: any = {};
    if (raw) {
      try {
        body = JSON.parse(raw);
      } catch {
        return errors(res, 400, 'failed to parse JSON input');
      }
    }
    requests.push({ method: req.method ?? '', path, headers: req.headers, body });
    if (s.mode === 'sealed') return errors(res, 503, 'Vault is sealed');
    if (s.mode === 'throttled') return errors(res, 429, 'request path "' + path + '": rate limit quota exceeded');
    if (s.mode === 'error500') return errors(res, 500, 'internal error');
    if (opts.namespace && req.headers['x-vault-namespace'] !== opts.namespace) return errors(res, 404, `no handler for route "${path}". route entry not found.`);

    if (req.method === 'POST' && path === '/v1/auth/approle/login') {
      if (body.role_id !== s.approle.roleId || body.secret_id !== s.approle.secretId) return errors(res, 400, 'invalid role or secret ID');
      const t = mkToken(s.approle.policy, s.approle.ttlSeconds, s.approle.maxTtlSeconds, s.approle.renewable);
      return send(res, 200, authOf(t, tokens.get(t)!));
    }
    if (req.method === 'POST' && path === '/v1/auth/kubernetes/login') {
      if (body.role !== s.kubernetes.role || body.jwt !== s.kubernetes.jwt) return errors(res, 403, 'permission denied');
      const t = mkToken('transit', s.kubernetes.ttlSeconds, s.kubernetes.maxTtlSeconds, true);
      return send(res, 200, authOf(t, tokens.get(t)!));
    }

    const token = req.headers['x-vault-token'] as string | undefined;
    const tok = live(token);
    if (!tok) return errors(res, 403, 'permission denied', 'invalid token');

    if (req.method === 'POST' && path === '/v1/auth/token/renew-self') {
      if (!tok.renewable) return errors(res, 400, 'lease is not renewable');
      const now = Date.now();
      const ttl = Math.max(0, Math.min(tok.ttlSeconds * 1000, tok.maxAt - now));
      tok.expiresAt = now + ttl;
      return send(res, 200, { auth: { client_token: token, policies: ['default', tok.policy], lease_duration: Math.floor(ttl / 1000), renewable: true }, warnings: ttl < tok.ttlSeconds * 1000 ? ['TTL is capped by max_ttl'] : null });
    }
    if (req.method === 'POST' && path === '/v1/auth/token/revoke-self') {
      tok.expiresAt = -Infinity;
      revoked.push(token!);
      res.writeHead(204);
      return res.end();
    }
    if (req.method === 'GET' && path === '/v1/auth/token/lookup-self') {
      return send(res, 200, { data: { policies: ['default', tok.policy], ttl: Number.isFinite(tok.expiresAt) ? Math.floor((tok.expiresAt - Date.now()) / 1000) : 0 } });
    }
    if (tok.policy !== 'transit') return errors(res, 403, 'permission denied');

    const base = `/v1/${mount}`;
    if (req.method === 'GET' && path === `${base}/keys/${keyName}`) {
      const keys: Record<string, number> = {};
      versions.forEach((v, i) => {
        if (i + 1 >= minDecryption) keys[String(i + 1)] = v.created;
      });
      return send(res, 200, {
        data: {
          name: keyName, type: 'aes256-gcm96', derived: false, exportable: false, deletion_allowed: false,
          latest_version: versions.length, min_decryption_version: minDecryption, min_encryption_version: 0,
          supports_encryption: true, supports_decryption: true, supports_derivation: true, supports_signing: false, keys,
        },
      });
    }
    if (req.method === 'POST' && path === `${base}/encrypt/${keyName}`) {
      if (typeof body.plaintext !== 'string') return errors(res, 400, 'missing plaintext to encrypt');
      const v = s.honourKeyVersion && body.key_version ? Number(body.key_version) : versions.length;
      if (!Number.isInteger(v) || v < 1 || v > versions.length) return errors(res, 400, 'invalid key version');
      return send(res, 200, { data: { ciphertext: encryptWith(v, Buffer.from(body.plaintext, 'base64')), key_version: v } });
    }
    if (req.method === 'POST' && path === `${base}/decrypt/${keyName}`) {
      const m = /^vault:v(\d+):(.*)$/.exec(String(body.ciphertext ?? ''));
      if (!m) return errors(res, 400, 'invalid ciphertext: no prefix');
      const v = Number(m[1]);
      if (v < minDecryption) return errors(res, 400, 'ciphertext or signature version is disallowed by policy (too old)');
      if (v > versions.length) return errors(res, 400, 'invalid ciphertext: key version not found');
      const ct = Buffer.from(m[2]!, 'base64');
      try {
        const d = createDecipheriv('aes-256-gcm', versions[v - 1]!.key, ct.subarray(0, 12));
        d.setAuthTag(ct.subarray(ct.length - 16));
        const pt = Buffer.concat([d.update(ct.subarray(12, ct.length - 16)), d.final()]);
        return send(res, 200, { data: { plaintext: pt.toString('base64') } });
      } catch {
        return errors(res, 400, 'cipher: message authentication failed');
      }
    }
    return errors(res, 404, `no handler for route "${path}". route entry not found.`);
  };

  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks).toString('utf8');
      const slow = s.slow;
      if (!slow || !(req.url ?? '').startsWith(slow.pathPrefix)) return handle(req, res, raw);
      const t = setTimeout(() => {
        slowTimers.delete(t);
        // The client may have given up and closed the connection meanwhile.
        if (!res.destroyed && !req.socket.destroyed) handle(req, res, raw);
      }, slow.ms);
      slowTimers.add(t);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as AddressInfo).port;

  const s: VaultStandin = {
    url: `http://127.0.0.1:${port}`,
    mount,
    key: keyName,
    requests,
    tokens,
    revoked,
    addToken: (policy, o = {}) => mkToken(policy, o.ttlSeconds ?? 0, o.maxTtlSeconds ?? 0, o.renewable ?? false),
    rotate() {
      versions.push(newVersion());
      return versions.length;
    },
    setMinDecryptionVersion(v) {
      minDecryption = v;
    },
    recreate() {
      versions = [newVersion()];
      minDecryption = 1;
    },
    mode: 'ok',
    slow: undefined,
    approle: { roleId: 'role-1234', secretId: `secret-${randomBytes(12).toString('hex')}`, ttlSeconds: 60, maxTtlSeconds: 0, renewable: true, policy: 'transit' },
    kubernetes: { role: 'kms', jwt: `eyJ${randomBytes(30).toString('base64url')}`, ttlSeconds: 60, maxTtlSeconds: 0 },
    honourKeyVersion: true,
    count: (prefix) => requests.filter((r) => r.path.startsWith(prefix)).length,
    async close() {
      for (const t of slowTimers) clearTimeout(t);
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
  return s;
}
