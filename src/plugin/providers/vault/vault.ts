import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { KeyhavenError } from '../../../errors.js';
import type { VaultProviderConfig } from '../../../config/providers/vault.js';
import { createKeyServerClient, type CallOptions, type HttpMethod, type KeyServerClient } from '../../key-server-client.js';
import { MAX_CIPHERTEXT_BYTES, MAX_KEY_ID_BYTES } from '../../limits.js';
import type { KmsProvider } from '../../provider.js';
import type { Clock } from '../../runtime/deadline.js';
import { isTransient } from '../../runtime/error-class.js';
import { createProviderRuntime, type KeyBackend } from '../../runtime/key-backend.js';
import type { ProviderBuildContext } from '../context.js';
import { deadlineOptions, observedClientOptions, readConfigFile, readTlsFiles } from '../http-client-wiring.js';
import { createVaultAuth, type VaultAuth, type VaultAuthEvent, type VaultAuthMethod } from './vault-auth.js';
import { scrubSecrets, vaultErrorOf } from './vault-errors.js';

/**
 * The key provider backed by a Vault (or OpenBao, or keyhaven's own) Transit
 * key. Every Encrypt and Decrypt is one Transit call: the apiserver's seeds
 * are stored as Vault's own `vault:vN:...` ciphertext, so any Vault client
 * can still open them (`vault write transit/decrypt/<key>`), and Vault's
 * rotation, min_decryption_version and audit apply as they are.
 *
 * key_id: vault:[<namespace>/]<mount>/<key>:v<N>[:<tag>], where <tag> is a
 * hash of version N's creation time from the key read: it tells apart a key
 * deleted and created again under the same name, and stays the same on every
 * node and replica of the cluster (unlike an address or a cluster id).
 */

export interface VaultProviderOptions {
  /** Transit and token calls: its headers carry the current token. */
  readonly client: KeyServerClient;
  readonly auth: VaultAuth;
  readonly mount: string;
  readonly key: string;
  readonly namespace?: string;
  /** Encrypt is refused when Vault has not confirmed the key for this long (the Status grace period). */
  readonly staleAfterMs: number;
  /** One call (and one health check) ends within this, refreshing the token included. */
  readonly timeoutMs: number;
  /** The clock of the grace period and of deadlines; the client's must be the same. */
  readonly now?: Clock;
}

interface KeyInfo {
  readonly latest: number;
  readonly minDecryption: number;
  readonly minEncryption: number;
  /** Tag of each version whose creation time the key read gave. */
  readonly tags: ReadonlyMap<number, string>;
  readonly keyId: string;
}

const VAULT_CIPHERTEXT = /^vault:v([1-9][0-9]{0,9}):[A-Za-z0-9+/]+={0,2}$/;
const MAX_PLAINTEXT = 512;
const MAX_VERSION = 2 ** 31 - 1;

export function parseVaultCiphertext(ciphertext: Buffer): { text: string; version: number } {
  if (ciphertext.length === 0) throw new KeyhavenError('invalid_argument', 'ciphertext is empty');
  const text = ciphertext.toString('latin1');
  const m = VAULT_CIPHERTEXT.exec(text);
  if (!m) throw new KeyhavenError('invalid_argument', 'ciphertext is not a Vault Transit ciphertext (vault:v<N>:<base64>); it was not made by the vault provider');
  const version = Number(m[1]);
  if (version > MAX_VERSION) throw new KeyhavenError('invalid_argument', 'ciphertext names a key version out of range');
  return { text, version };
}

/** The creation time Vault reports for one version: a number (symmetric keys) or {creation_time} (asymmetric). */
/** The shared HTTP client speaks of "key servers"; these are Vault addresses. */
function reword(e: unknown): unknown {
  if (!(e instanceof KeyhavenError) || !/key server/.test(e.message)) return e;
  const message = e.message.replace(/every key server is failing/g, 'every Vault address is failing').replace(/\bkey server /g, 'Vault at ').replace(/any key server/g, 'any Vault address');
  return new KeyhavenError(e.code, message, { cause: e.cause });
}

function creationOf(v: unknown): string | undefined {
  if (typeof v === 'number' && Number.isFinite(v)) return String(v);
  const t = (v as { creation_time?: unknown } | null)?.creation_time;
  return typeof t === 'string' && t.length > 0 && t.length <= 64 ? t : undefined;
}

function createVaultProvider(opts: VaultProviderOptions): KmsProvider {
  return createProviderRuntime(createVaultBackend(opts), { graceMs: opts.staleAfterMs, timeoutMs: opts.timeoutMs, ...(opts.now ? { clock: opts.now } : {}) });
}

/** Vault Transit as a KeyBackend; its state is the key as the last good probe read it. */
function createVaultBackend(opts: VaultProviderOptions): KeyBackend<KeyInfo> {
  const { client, auth, mount, key } = opts;
  const now = opts.now ?? Date.now;
  const keyPath = `${mount}/keys/${key}`;
  const label = `${opts.namespace ? `${opts.namespace}/` : ''}${mount}/${key}`;
  const idPrefix = `vault:${label}:v`;
  const enc = encodeURIComponent;
  const mountUrl = `/v1/${mount.split('/').map(enc).join('/')}`;

  let info: KeyInfo | undefined;
  let reading: Promise<KeyInfo> | undefined;

  const tagOf = (version: number, created: string): string =>
    createHash('sha256').update(JSON.stringify([opts.namespace ?? '', mount, key, version, created])).digest('hex').slice(0, 16);

  const keyIdOf = (version: number, tags: ReadonlyMap<number, string>): string => {
    const tag = tags.get(version);
    return `${idPrefix}${version}${tag ? `:${tag}` : ''}`;
  };

  /** Whether Vault still accepts the token in use (GET lookup-self): 'valid', or why the lookup failed. */
  async function lookupSelf(deadlineAt: number): Promise<'valid' | KeyhavenError> {
    try {
      await client.request('GET', 'lookup-self', '/v1/auth/token/lookup-self', undefined, { deadlineAt });
      return 'valid';
    } catch (e) {
      const r = reword(e);
      return r instanceof KeyhavenError ? r : new KeyhavenError('unavailable', 'the Vault token lookup failed');
    }
  }

  /** Classifies a 403 by what lookup-self said: a dead token, or a policy that does not allow the call. */
  function refusal(err: KeyhavenError, what: string, state: 'valid' | KeyhavenError): KeyhavenError {
    const where = `Vault refused ${what}`;
    if (state !== 'valid' && state.code === 'unauthenticated') {
      return new KeyhavenError('unauthenticated', `${where}: the token from ${auth.describe()} is invalid, expired or revoked (${detail(err)})`);
    }
    // Vault's own trouble while telling why: worth riding out like any other.
    if (state !== 'valid' && isTransient(state.code)) {
      return new KeyhavenError(state.code, `${where} (${detail(err)}), and the token lookup that tells a dead token from a missing policy failed: ${state.message}`);
    }
    // A live token, or a lookup that is not allowed or not served: say what is known.
    return new KeyhavenError('permission_denied', `${where}: permission denied for the token from ${auth.describe()} (${detail(err)}); its policy must allow it (see docs/provider-vault.md)`);
  }

  const detail = (err: KeyhavenError) => err.message.replace(/^(?:key server|Vault at) \S+ refused [^:]+: /, '');

  /**
   * One Vault call with the current token. On a 403: a token another call
   * replaced meanwhile gets one try; a token file is read again (it costs
   * nothing, and may hold a token with another policy); a login method logs
   * in again only once lookup-self says the token is dead, since every login
   * is a new token in Vault and a use of a limited secret ID.
   */
  async function call<T>(method: HttpMethod, op: string, path: string, body: unknown, what: string, callOpts: CallOptions = {}): Promise<T> {
    try {
      return await callOnce<T>(method, op, path, body, what, callOpts);
    } catch (e) {
      throw reword(e);
    }
  }

  async function callOnce<T>(method: HttpMethod, op: string, path: string, body: unknown, what: string, callOpts: CallOptions): Promise<T> {
    const deadlineAt = Math.min(callOpts.deadlineAt ?? Infinity, now() + opts.timeoutMs);
    const o: CallOptions = { ...callOpts, deadlineAt };
    let sent = await auth.token(deadlineAt);
    let switched = false;
    let refreshed = false;
    // At most three sends: the first, one with a token another call put in place, one after a refresh.
    for (;;) {
      try {
        return await client.request<T>(method, op, path, body, o);
      } catch (e) {
        if (!(e instanceof KeyhavenError) || e.code !== 'unauthenticated') throw e;
        const current = auth.current();
        if (!switched && current !== undefined && current !== sent) {
          switched = true;
          sent = current;
          continue;
        }
        const state = auth.kind === 'token' && !refreshed ? undefined : await lookupSelf(deadlineAt);
        const dead = state === undefined || (state !== 'valid' && state.code === 'unauthenticated');
        if (!dead || refreshed || !(await auth.refresh(sent, deadlineAt))) throw refusal(e, what, state ?? (await lookupSelf(deadlineAt)));
        refreshed = true;
        sent = auth.current()!;
      }
    }
  }

  async function readKey(deadlineAt: number): Promise<KeyInfo> {
    const res = await call<{ data?: Record<string, unknown> }>('GET', 'read-key', `${mountUrl}/keys/${enc(key)}`, undefined, `the key read of ${keyPath}`, { deadlineAt });
    const d = res?.data;
    const latest = d?.latest_version;
    if (!d || !Number.isInteger(latest) || (latest as number) < 1 || (latest as number) > MAX_VERSION) {
      throw new KeyhavenError('unavailable', `Vault answered the key read of ${keyPath} without a latest_version`);
    }
    if (d.derived === true) throw new KeyhavenError('failed_precondition', `Transit key ${keyPath} is a derived key (every call needs a context); use a key created without derived=true`);
    if (d.supports_encryption === false || d.supports_decryption === false) {
      throw new KeyhavenError('failed_precondition', `Transit key ${keyPath} (type ${String(d.type).slice(0, 32)}) cannot encrypt and decrypt; use an aes256-gcm96 key`);
    }
    const minDecryption = Number.isInteger(d.min_decryption_version) && (d.min_decryption_version as number) > 0 ? (d.min_decryption_version as number) : 1;
    const minEncryption = Number.isInteger(d.min_encryption_version) ? (d.min_encryption_version as number) : 0;
    const tags = new Map<number, string>();
    if (d.keys && typeof d.keys === 'object') {
      for (const [v, c] of Object.entries(d.keys as Record<string, unknown>)) {
        const n = Number(v);
        const created = creationOf(c);
        if (Number.isInteger(n) && n >= 1 && n <= (latest as number) && created) tags.set(n, tagOf(n, created));
      }
    }
    const keyId = keyIdOf(latest as number, tags);
    if (Buffer.byteLength(keyId) > MAX_KEY_ID_BYTES) throw new KeyhavenError('config_invalid', 'namespace, mount and key are too long for a 1024-byte key_id');
    const out = { latest: latest as number, minDecryption, minEncryption, tags, keyId };
    info = out;
    return out;
  }

  /**
   * One key read at a time for Decrypt's checks (a restart storm of Decrypts
   * shares it). It runs to the deadline of the Decrypt that started it, which
   * is no later than that of any Decrypt joining it later.
   */
  const reread = (deadlineAt: number): Promise<KeyInfo> =>
    (reading ??= readKey(deadlineAt).finally(() => {
      reading = undefined;
    }));

  async function transitEncrypt(plaintext: Buffer, version: number | undefined, callOpts: CallOptions): Promise<{ text: string; version: number }> {
    const body = { plaintext: plaintext.toString('base64'), ...(version !== undefined ? { key_version: version } : {}) };
    const res = await call<{ data?: { ciphertext?: unknown } }>('POST', 'encrypt', `${mountUrl}/encrypt/${enc(key)}`, body, `encrypt with ${keyPath}`, callOpts);
    const ct = res?.data?.ciphertext;
    if (typeof ct !== 'string') throw new KeyhavenError('unavailable', `Vault answered encrypt with ${keyPath} without a ciphertext`);
    const parsed = (() => {
      try {
        return parseVaultCiphertext(Buffer.from(ct, 'latin1'));
      } catch {
        throw new KeyhavenError('unavailable', `Vault answered encrypt with ${keyPath} with something that is not a vault:v<N>: ciphertext`);
      }
    })();
    if (Buffer.byteLength(parsed.text) > MAX_CIPHERTEXT_BYTES) throw new KeyhavenError('internal', `Vault's ciphertext exceeds ${MAX_CIPHERTEXT_BYTES} bytes (key type with large ciphertexts?)`);
    return parsed;
  }

  async function transitDecrypt(text: string, callOpts: CallOptions): Promise<Buffer> {
    const res = await call<{ data?: { plaintext?: unknown } }>('POST', 'decrypt', `${mountUrl}/decrypt/${enc(key)}`, { ciphertext: text }, `decrypt with ${keyPath}`, callOpts);
    const pt = res?.data?.plaintext;
    if (typeof pt !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(pt)) throw new KeyhavenError('unavailable', `Vault answered decrypt with ${keyPath} without a plaintext`);
    return Buffer.from(pt, 'base64');
  }

  /** Refuses a ciphertext version (and key_id) this key cannot decrypt any more, or never issued. */
  async function checkVersion(version: number, keyId: string | undefined, deadlineAt: number): Promise<void> {
    let tag: string | undefined;
    if (keyId !== undefined) {
      if (!keyId.startsWith(idPrefix)) throw new KeyhavenError('unknown_key_id', `key_id ${keyId.slice(0, 200)} is not a version of Transit key ${label}`);
      const m = /^([1-9][0-9]{0,9})(?::([0-9a-f]{16}))?$/.exec(keyId.slice(idPrefix.length));
      if (!m) throw new KeyhavenError('unknown_key_id', `key_id ${keyId.slice(0, 200)} is not one the vault provider issues`);
      if (Number(m[1]) !== version) throw new KeyhavenError('invalid_argument', `ciphertext (key version ${version}) does not belong to key_id ${keyId}`);
      tag = m[2];
    }
    let k = info;
    // A version newer than this plugin has seen: another node saw the rotation first.
    if (!k || version > k.latest) k = await reread(deadlineAt).catch(() => info);
    // Without any answer from Vault there is nothing to check against; Vault refuses what it must.
    if (!k) return;
    if (version > k.latest) throw new KeyhavenError('unknown_key_id', `key version ${version} does not exist in Transit key ${label} (latest is ${k.latest})`);
    if (version < k.minDecryption) throw new KeyhavenError('key_disabled', `key version ${version} of Transit key ${label} is below its min_decryption_version ${k.minDecryption}; Vault will not decrypt it`);
    const known = k.tags.get(version);
    if (tag && known && tag !== known) throw new KeyhavenError('unknown_key_id', `key_id ${keyId} was issued by another Transit key of the same name (deleted and created again?)`);
  }

  return {
    kind: 'vault',
    service: 'Vault',
    maxPlaintextBytes: MAX_PLAINTEXT,
    async probe(deadlineAt) {
      const k = await readKey(deadlineAt);
      // A real round trip with the version Status will report.
      const probe = randomBytes(32);
      const c = await transitEncrypt(probe, k.latest, { deadlineAt });
      if (c.version !== k.latest) throw new KeyhavenError('unavailable', `Vault encrypted with version ${c.version} of ${keyPath} when asked for ${k.latest}`);
      const back = await transitDecrypt(c.text, { deadlineAt });
      if (back.length !== probe.length || !timingSafeEqual(back, probe)) throw new KeyhavenError('integrity', `Vault's round trip with ${keyPath} returned other bytes than it was given`);
      return { keyId: k.keyId, state: k };
    },
    // s: the key as the last good probe read it; Encrypt uses its version (the apiserver drops a reply with another key_id than Status's).
    async wrap(plaintext, s, ctx) {
      // KMS v2: the version Status reported, so the reply's key_id equals Status's; v1beta1 has no key_id to match.
      const c = await transitEncrypt(plaintext, ctx.annotations ? s.latest : undefined, { uid: ctx.uid, deadlineAt: ctx.deadlineAt });
      if (ctx.annotations && c.version !== s.latest) {
        throw new KeyhavenError('unavailable', `Vault encrypted with version ${c.version} of ${keyPath} instead of ${s.latest}; the apiserver retries after its next Status`);
      }
      const k = info && info.latest >= c.version ? info : s;
      return { ciphertext: Buffer.from(c.text, 'latin1'), keyId: keyIdOf(c.version, k.tags), keyName: label, keyVersion: c.version };
    },
    async unwrap(ciphertext, keyId, _annotations, ctx) {
      const c = parseVaultCiphertext(ciphertext);
      // One deadline for the whole Decrypt: the key re-read and the decrypt share it, within the apiserver's 3 s.
      await checkVersion(c.version, keyId, ctx.deadlineAt);
      const plaintext = await transitDecrypt(c.text, { uid: ctx.uid, deadlineAt: ctx.deadlineAt });
      return { plaintext, keyId: keyId ?? (info ? keyIdOf(c.version, info.tags) : `${idPrefix}${c.version}`), keyName: label, keyVersion: c.version };
    },
    async close() {
      auth.close();
      await client.close();
    },
  };
}

function authMethodOf(p: VaultProviderConfig): VaultAuthMethod {
  if (p.auth.tokenFile) return { kind: 'token', tokenFile: p.auth.tokenFile };
  if (p.auth.approle) {
    const a = p.auth.approle;
    return { kind: 'approle', mount: a.mount, secretIdFile: a.secretIdFile, ...(a.roleId ? { roleId: a.roleId } : { roleIdFile: a.roleIdFile! }) };
  }
  const k = p.auth.kubernetes!;
  return { kind: 'kubernetes', mount: k.mount, role: k.role, jwtFile: k.jwtFile };
}

function logAuthEvent(ctx: ProviderBuildContext, e: VaultAuthEvent): void {
  const log = ctx.logger;
  if (e.type === 'login') log.info({ method: e.method, leaseSeconds: e.leaseSeconds, renewable: e.renewable, reason: e.reason }, 'logged in to Vault');
  else if (e.type === 'login_failed') log.warn({ method: e.method, err: { code: e.code, message: e.message }, ...(e.retryInMs !== undefined ? { retryInMs: e.retryInMs } : {}) }, 'Vault login failed');
  else if (e.type === 'renewed') log.debug({ leaseSeconds: e.leaseSeconds }, 'Vault token renewed');
  else if (e.type === 'renew_failed') log.warn({ err: { code: e.code, message: e.message } }, 'Vault token renewal failed; logging in again');
  else if (e.type === 'revoked') log.debug('replaced Vault token revoked');
  else if (e.type === 'revoke_failed') log.debug({ err: { code: e.code, message: e.message } }, 'revoking the replaced Vault token failed (it may have expired already)');
  else log.info({ file: e.file }, 'Vault token file changed; using the new token');
}

export async function buildVaultProvider(p: VaultProviderConfig, ctx: ProviderBuildContext): Promise<KmsProvider> {
  const method = authMethodOf(p);
  // A missing or world-readable credential file is a configuration error: refuse to start, as the keyhaven provider does.
  if (method.kind === 'token') readConfigFile(method.tokenFile, 'Vault token file', true);
  if (method.kind === 'approle') {
    readConfigFile(method.secretIdFile, 'AppRole secret ID file', true);
    if (method.roleIdFile) readConfigFile(method.roleIdFile, 'AppRole role ID file', false);
  }
  const tls = readTlsFiles(p.tls);
  const namespace: Record<string, string> = p.namespace ? { 'x-vault-namespace': p.namespace } : {};
  const observed = observedClientOptions(ctx, p.addresses, { up: 'Vault answers again', down: 'Vault address failing; trying the others first', scrubReason: scrubSecrets });
  const common = {
    servers: p.addresses,
    tls,
    cluster: '',
    ...deadlineOptions(p),
    errorOf: vaultErrorOf,
    onAttempt: observed.onAttempt,
  };
  let auth: VaultAuth | undefined;
  const client = createKeyServerClient({
    ...common,
    // The token changes on re-login, outside the client's synchronous reload path: the headers read the live one.
    apiKey: () => 'vault-token',
    headers: () => ({ 'x-vault-token': auth?.current() ?? '', 'x-vault-request': 'true', ...namespace }),
    onServerState: observed.onServerState,
  });
  // Logins carry no token; a client of their own, so the failover state of Transit calls is not mixed with theirs.
  const loginClient = createKeyServerClient({ ...common, apiKey: () => 'none', headers: () => ({ 'x-vault-request': 'true', ...namespace }) });
  // Revocations carry the replaced token, not the current one. The client reads headers per attempt, so
  // revocations run one at a time and its headers read the token being revoked.
  let revoking: string | undefined;
  let revocations: Promise<unknown> = Promise.resolve();
  const revokeClient = createKeyServerClient({ ...common, apiKey: () => 'none', headers: () => ({ 'x-vault-token': revoking ?? '', 'x-vault-request': 'true', ...namespace }) });
  const revokeSelf = (old: string): Promise<unknown> => {
    const run = revocations.then(async () => {
      revoking = old;
      try {
        return await revokeClient.post('revoke', '/v1/auth/token/revoke-self', {});
      } catch (e) {
        throw reword(e);
      } finally {
        revoking = undefined;
      }
    });
    revocations = run.catch(() => {});
    return run;
  };
  auth = createVaultAuth({
    method,
    readSecretFile: (f, what) => readConfigFile(f, what, true),
    // The kubelet projects the service account token 0644 inside the pod; its mode is the kubelet's to set.
    readFile: (f, what) => readConfigFile(f, what, false),
    login: (mount, body, deadlineAt) =>
      loginClient.post('login', `/v1/auth/${mount.split('/').map(encodeURIComponent).join('/')}/login`, body, deadlineAt ? { deadlineAt } : {}).catch((e) => {
        throw reword(e);
      }),
    renewSelf: (deadlineAt) =>
      client.post('renew', '/v1/auth/token/renew-self', {}, deadlineAt ? { deadlineAt } : {}).catch((e) => {
        throw reword(e);
      }),
    revokeSelf,
    onEvent: (e) => logAuthEvent(ctx, e),
  });
  const provider = createVaultProvider({
    client,
    auth,
    mount: p.mount,
    key: p.key,
    ...(p.namespace ? { namespace: p.namespace } : {}),
    staleAfterMs: ctx.cfg.status.gracePeriod,
    timeoutMs: p.timeout,
  });
  return {
    ...provider,
    async close() {
      await provider.close();
      await loginClient.close();
      // A revocation under way finishes (within the client's timeout) before its client closes.
      await revocations;
      await revokeClient.close();
    },
  };
}

