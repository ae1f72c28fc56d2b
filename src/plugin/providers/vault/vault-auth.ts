import { KeyhavenError } from '../../../errors.js';
import { isTransient } from '../../runtime/error-class.js';

/**
 * The Vault token the plugin sends, and how it stays valid:
 * - tokenFile: someone else (Vault Agent, an operator) keeps the file fresh;
 *   the plugin reads it again when Vault refuses the token.
 * - approle / kubernetes: the plugin logs in itself (POST /v1/auth/<mount>/login),
 *   renews the token (POST /v1/auth/token/renew-self) at about 2/3 of its
 *   lease, and logs in again when renewal fails, the token is not renewable,
 *   or its max TTL is near. A login token it replaces is revoked
 *   (POST /v1/auth/token/revoke-self, best effort), so logins do not pile up
 *   live tokens. The token never reaches a log or an error.
 */

export type VaultAuthMethod =
  | { readonly kind: 'token'; readonly tokenFile: string }
  | { readonly kind: 'approle'; readonly mount: string; readonly roleId?: string; readonly roleIdFile?: string; readonly secretIdFile: string }
  | { readonly kind: 'kubernetes'; readonly mount: string; readonly role: string; readonly jwtFile: string };

export interface VaultAuthDeps {
  readonly method: VaultAuthMethod;
  /** Reads a file holding a credential; refuses one that group or others may read. */
  readonly readSecretFile: (path: string, what: string) => Buffer;
  /** Reads a file whose mode the plugin does not police (the kubelet's projected service account token). */
  readonly readFile: (path: string, what: string) => Buffer;
  /** POST /v1/auth/<mount>/login without a token; resolves the JSON answer. */
  readonly login: (mount: string, body: Record<string, string>, deadlineAt?: number) => Promise<unknown>;
  /** POST /v1/auth/token/renew-self with the current token. */
  readonly renewSelf: (deadlineAt?: number) => Promise<unknown>;
  /** POST /v1/auth/token/revoke-self with `token` (not the current one): a replaced login token. */
  readonly revokeSelf?: (token: string) => Promise<unknown>;
  readonly now?: () => number;
  readonly setTimer?: (fn: () => void, ms: number) => { unref?(): void };
  readonly clearTimer?: (t: unknown) => void;
  /** Things worth a log line; never carries the token. */
  readonly onEvent?: (event: VaultAuthEvent) => void;
}

export type VaultAuthEvent =
  | { readonly type: 'login'; readonly method: string; readonly leaseSeconds: number; readonly renewable: boolean; readonly reason: string }
  | { readonly type: 'login_failed'; readonly method: string; readonly code: string; readonly message: string; readonly retryInMs?: number }
  | { readonly type: 'renewed'; readonly leaseSeconds: number }
  | { readonly type: 'renew_failed'; readonly code: string; readonly message: string }
  | { readonly type: 'revoked' }
  | { readonly type: 'revoke_failed'; readonly code: string; readonly message: string }
  | { readonly type: 'token_reloaded'; readonly file: string };

export interface VaultAuth {
  /** A token file costs nothing to read again; a login costs Vault a new token (and a limited secret ID a use). */
  readonly kind: VaultAuthMethod['kind'];
  /** The token to send now, logging in first when there is none yet. */
  token(deadlineAt?: number): Promise<string>;
  /** The token in use, if any (what the request headers carry). */
  current(): string | undefined;
  /**
   * Vault refused `stale`: read the token file again, or log in again (at most
   * every 2 s). Resolves true when another token is now in use. Callers with
   * a login method ask only once Vault has said the token is dead (lookup-self).
   */
  refresh(stale: string, deadlineAt?: number): Promise<boolean>;
  /** True when the token in use came from a login (or file read) newer than `since`. */
  freshSince(since: number): boolean;
  /** For messages: "token file /etc/x", "AppRole login at auth/approle". */
  describe(): string;
  close(): void;
}

// A Vault token: service (hvs./s.), batch (hvb./b.) or an opaque string from another Vault-compatible server.
const TOKEN = /^[\x21-\x7e]{1,8192}$/;
// Refusals are not worth a new login more often than this (a policy denial would otherwise turn every call into a login).
const MIN_REFRESH_INTERVAL_MS = 2000;
// Re-login after a failure: 1 s doubling to at most this.
const MAX_RETRY_MS = 60_000;

function describe(m: VaultAuthMethod): string {
  if (m.kind === 'token') return `token file ${m.tokenFile}`;
  if (m.kind === 'approle') return `AppRole login at auth/${m.mount}`;
  return `Kubernetes login at auth/${m.mount} (role ${m.role})`;
}

function oneLine(buf: Buffer, what: string): string {
  const v = buf.toString('utf8').trim();
  if (!TOKEN.test(v)) throw new KeyhavenError('config_invalid', `${what} does not hold one line of printable characters`);
  return v;
}

interface LoginAuth {
  readonly token: string;
  readonly leaseSeconds: number;
  readonly renewable: boolean;
}

function readAuth(res: unknown, what: string, keep?: string): LoginAuth {
  const a = (res as { auth?: { client_token?: unknown; lease_duration?: unknown; renewable?: unknown } } | undefined)?.auth;
  // A renewal keeps the token; some Vault-compatible servers leave client_token empty in its answer.
  const t = keep !== undefined && (a?.client_token === undefined || a.client_token === '') ? keep : a?.client_token;
  if (!a || typeof t !== 'string' || !TOKEN.test(t)) throw new KeyhavenError('unavailable', `Vault answered the ${what} without a token`);
  const lease = typeof a.lease_duration === 'number' && Number.isFinite(a.lease_duration) && a.lease_duration >= 0 ? Math.floor(a.lease_duration) : 0;
  return { token: t, leaseSeconds: lease, renewable: a.renewable === true };
}

export function createVaultAuth(deps: VaultAuthDeps): VaultAuth {
  const m = deps.method;
  const now = deps.now ?? Date.now;
  const setTimer = deps.setTimer ?? ((fn, ms) => setTimeout(fn, ms));
  const clearTimer = deps.clearTimer ?? ((t) => clearTimeout(t as NodeJS.Timeout));
  const emit = (e: VaultAuthEvent) => deps.onEvent?.(e);

  let token: string | undefined;
  let obtainedAt = 0;
  // When the current login token stops working, by its lease (Infinity: no expiry).
  let expiresAt = Infinity;
  // The lease the last login granted: a renewal that gives less means the max TTL is near.
  let loginLeaseSeconds = 0;
  let lastRefreshAt = -Infinity;
  let pending: Promise<void> | undefined;
  let timer: unknown;
  let retryMs = 1000;
  let closed = false;

  const readTokenFile = (): string => oneLine(deps.readSecretFile((m as { tokenFile: string }).tokenFile, 'Vault token file'), `Vault token file ${(m as { tokenFile: string }).tokenFile}`);

  const loginBody = (): Record<string, string> => {
    if (m.kind === 'approle') {
      const roleId = m.roleId ?? oneLine(deps.readFile(m.roleIdFile!, 'AppRole role ID file'), `AppRole role ID file ${m.roleIdFile}`);
      const secretId = oneLine(deps.readSecretFile(m.secretIdFile, 'AppRole secret ID file'), `AppRole secret ID file ${m.secretIdFile}`);
      return { role_id: roleId, secret_id: secretId };
    }
    const k = m as Extract<VaultAuthMethod, { kind: 'kubernetes' }>;
    // Read at every login: the kubelet rotates projected tokens.
    return { role: k.role, jwt: oneLine(deps.readFile(k.jwtFile, 'service account token file'), `service account token file ${k.jwtFile}`) };
  };

  const schedule = (ms: number, fn: () => void) => {
    if (closed) return;
    if (timer !== undefined) clearTimer(timer);
    const t = setTimer(() => {
      timer = undefined;
      fn();
    }, Math.max(ms, 0));
    t.unref?.();
    timer = t;
  };

  const scheduleAfterLease = (leaseSeconds: number, renewable: boolean) => {
    if (leaseSeconds <= 0) return; // never expires (a root or periodic-less token): nothing to keep alive
    const at = (leaseSeconds * 1000 * 2) / 3;
    // A renewal capped below what the login granted: the max TTL is near, so the next step is a new login.
    const nearMax = leaseSeconds < loginLeaseSeconds / 2;
    schedule(at, () => void (renewable && !nearMax ? renew() : relogin('lease ending')).catch(() => {}));
  };

  async function doLogin(reason: string, deadlineAt?: number): Promise<void> {
    const what = m.kind === 'approle' ? 'AppRole login' : 'Kubernetes login';
    let res: unknown;
    try {
      res = await deps.login(m.kind === 'token' ? '' : m.mount, loginBody(), deadlineAt);
    } catch (e) {
      const err = e instanceof KeyhavenError ? e : new KeyhavenError('unavailable', `${what} failed`, { cause: e });
      // A refused login (bad secret ID, JWT, role) is the caller's fault; only Vault's own trouble is worth riding out.
      const out = isTransient(err.code) || err.code === 'config_invalid' ? err : new KeyhavenError('unauthenticated', `Vault refused the ${describe(m)}: ${err.message.replace(/^(?:Vault at|key server) \S+ refused [^:]+: /, '')}`);
      throw out;
    }
    const a = readAuth(res, what);
    const replaced = token;
    token = a.token;
    obtainedAt = now();
    loginLeaseSeconds = a.leaseSeconds;
    expiresAt = a.leaseSeconds > 0 ? obtainedAt + a.leaseSeconds * 1000 : Infinity;
    retryMs = 1000;
    emit({ type: 'login', method: describe(m), leaseSeconds: a.leaseSeconds, renewable: a.renewable, reason });
    scheduleAfterLease(a.leaseSeconds, a.renewable);
    if (replaced !== undefined && replaced !== token) revoke(replaced);
  }

  /** Best effort, in the background: a dead token's revocation fails, and that is fine. */
  function revoke(old: string): void {
    if (!deps.revokeSelf) return;
    deps.revokeSelf(old).then(
      () => emit({ type: 'revoked' }),
      (e: unknown) => {
        const err = e instanceof KeyhavenError ? e : new KeyhavenError('unavailable', 'token revocation failed');
        emit({ type: 'revoke_failed', code: err.code, message: err.message });
      },
    );
  }

  /** One login or file read at a time; callers share it. */
  const single = (fn: () => Promise<void>): Promise<void> =>
    (pending ??= fn().finally(() => {
      pending = undefined;
    }));

  /** A login, and on failure a later retry; run inside single(). */
  async function loginOrRetry(reason: string, deadlineAt?: number): Promise<void> {
    try {
      await doLogin(reason, deadlineAt);
    } catch (e) {
      const err = e as KeyhavenError;
      // Keep the token in use while it lasts, and try again later.
      const wait = Math.min(retryMs, MAX_RETRY_MS, Number.isFinite(expiresAt) ? Math.max((expiresAt - now()) / 3, 1000) : MAX_RETRY_MS);
      retryMs = Math.min(retryMs * 2, MAX_RETRY_MS);
      emit({ type: 'login_failed', method: describe(m), code: err.code, message: err.message, ...(token ? { retryInMs: Math.round(wait) } : {}) });
      if (token) schedule(wait, () => void relogin('retry after a failed login').catch(() => {}));
      throw err;
    }
  }

  const relogin = (reason: string, deadlineAt?: number): Promise<void> => single(() => loginOrRetry(reason, deadlineAt));

  // In the same single flight as logins: a renewal answered after a new login
  // would otherwise put the old token back and replace the login's timer.
  const renew = (): Promise<void> =>
    single(async () => {
      const renewing = token;
      let a: LoginAuth;
      try {
        a = readAuth(await deps.renewSelf(), 'token renewal', renewing);
        // A lease of 0 from a renewal means "ends now" (the max TTL), not "never ends" as at login.
        if (a.leaseSeconds <= 0 && loginLeaseSeconds > 0) throw new KeyhavenError('unavailable', 'the token reached its max TTL');
      } catch (e) {
        if (token !== renewing) return;
        const err = e instanceof KeyhavenError ? e : new KeyhavenError('unavailable', 'token renewal failed', { cause: e });
        emit({ type: 'renew_failed', code: err.code, message: err.message });
        await loginOrRetry('renewal failed');
        return;
      }
      // Another token took over meanwhile: this answer is about one no longer in use.
      if (token !== renewing) return;
      // renew-self keeps the token; some servers hand back the same one, which is fine.
      token = a.token;
      expiresAt = a.leaseSeconds > 0 ? now() + a.leaseSeconds * 1000 : Infinity;
      emit({ type: 'renewed', leaseSeconds: a.leaseSeconds });
      scheduleAfterLease(a.leaseSeconds, a.renewable);
    });

  const reloadFile = (): Promise<void> =>
    single(async () => {
      const fresh = readTokenFile();
      if (fresh !== token) {
        token = fresh;
        obtainedAt = now();
        if (lastRefreshAt > -Infinity) emit({ type: 'token_reloaded', file: (m as { tokenFile: string }).tokenFile });
      }
    });

  /** Waits for the login or renewal in flight, but not past the caller's deadline. */
  async function settled(deadlineAt?: number): Promise<void> {
    const p = pending;
    if (!p) return;
    const left = deadlineAt === undefined ? Infinity : deadlineAt - now();
    if (!Number.isFinite(left)) return void (await p.catch(() => {}));
    let t: NodeJS.Timeout | undefined;
    await Promise.race([p.catch(() => {}), new Promise<void>((r) => (t = setTimeout(r, Math.max(left, 0))))]);
    clearTimeout(t);
  }

  return {
    kind: m.kind,
    async token(deadlineAt) {
      if (token === undefined) {
        if (m.kind === 'token') await reloadFile();
        else await relogin('start', deadlineAt);
      }
      return token!;
    },
    current: () => token,
    async refresh(stale, deadlineAt) {
      // Join the login or renewal in flight (another caller's refresh, the renewal timer). No await
      // when there is none: concurrent callers must find the login the first one starts.
      while (pending && (deadlineAt === undefined || now() < deadlineAt)) await settled(deadlineAt);
      if (token !== undefined && token !== stale) return true;
      // Past the deadline with the login or renewal still running: the call is over anyway.
      if (pending) return false;
      if (now() - lastRefreshAt < MIN_REFRESH_INTERVAL_MS) return false;
      lastRefreshAt = now();
      if (m.kind === 'token') await reloadFile();
      else await relogin('Vault refused the token', deadlineAt);
      return token !== undefined && token !== stale;
    },
    freshSince: (since) => obtainedAt >= since,
    describe: () => describe(m),
    close() {
      closed = true;
      if (timer !== undefined) clearTimer(timer);
      timer = undefined;
    },
  };
}
