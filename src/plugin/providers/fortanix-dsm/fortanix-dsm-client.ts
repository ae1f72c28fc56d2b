import { KeyhavenError, type ErrorCode } from '../../../errors.js';
import { createKeyServerClient, type CallOptions, type HttpMethod, type KeyServerClientOptions } from '../../key-server-client.js';

/**
 * A DSM REST client with session handling on top of the plugin's key server
 * client (failover, circuit breaker, deadline, TLS pinning). The app's API key
 * goes out once per session, as HTTP Basic to POST /sys/v1/session/auth; every
 * other call carries the session's Bearer token. The session is renewed at two
 * thirds of its `expires_in`, and a call refused with 401 (the session ended
 * early: DSM restarted, the session was terminated) opens one new session and
 * is tried once more.
 */

/** The HTTP client's own settings, plus DSM's; apiKey is base64 of "app-id:secret". */
export interface DsmClientOptions extends Pick<KeyServerClientOptions, 'tls' | 'apiKey' | 'timeoutMs' | 'attemptTimeoutMs' | 'backoffMinMs' | 'backoffMaxMs'> {
  readonly endpoints: readonly string[];
  /** Clock for the session's renewal (tests move it); the HTTP client keeps the real one. */
  readonly now?: () => number;
  readonly onAttempt?: KeyServerClientOptions['onAttempt'];
  readonly onServerState?: KeyServerClientOptions['onServerState'];
  readonly onSession?: (event: { expiresInS: number; renewed: boolean }) => void;
}

export interface DsmClient {
  request<T>(method: HttpMethod, operation: string, path: string, body: unknown, opts?: CallOptions): Promise<T>;
  /** Ends the session on DSM (best effort) and closes the connections. */
  close(): Promise<void>;
}

interface Session {
  readonly token: string;
  /** Renew from here on. */
  readonly renewAt: number;
  /** DSM stops accepting the token here (counted from when the request was sent). */
  readonly expiresAt: number;
}

const TOKEN = /^[\x21-\x7e]{1,8192}$/;
// Session renewals that fail for these reasons keep the old token while it lasts: DSM is busy, not refusing.
const KEEP_ON: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['unavailable', 'too_many_attempts', 'internal']);

/** DSM answers errors as plain text (sometimes JSON with `message`): status code first, then the words. */
export function dsmErrorCode(status: number, message: string): ErrorCode {
  if (status === 401) return 'unauthenticated';
  if (status === 429) return 'too_many_attempts';
  if (status >= 500) return 'unavailable';
  // DSM refuses a disabled or deactivated object with 400 or 403; keyhaven's DSM API with 409.
  if (/\b(disabled|deactivated)\b/i.test(message)) return 'key_disabled';
  if (status === 403) return 'permission_denied';
  if (status === 404) return 'not_found';
  if (status === 409) return 'failed_precondition';
  if (status === 410) return 'key_destroyed';
  return 'invalid_argument';
}

export function createDsmClient(opts: DsmClientOptions): DsmClient {
  const now = opts.now ?? Date.now;
  let session: Session | undefined;
  let opening: Promise<Session> | undefined;
  let apiKeyInUse = opts.apiKey(false);

  // A secret a misbehaving server echoes must not reach a log or a gRPC status.
  const scrub = (text: string): string => {
    let out = text;
    for (const s of [apiKeyInUse, session?.token]) if (s && s.length >= 8) out = out.split(s).join('[redacted]');
    return out;
  };
  const errorOf = (status: number, body: unknown, text: string): { code: ErrorCode; message: string } => {
    const m = body && typeof body === 'object' && typeof (body as { message?: unknown }).message === 'string' ? (body as { message: string }).message : typeof body === 'string' ? body : text;
    const message = scrub(m).replace(/[\x00-\x1f\x7f]+/g, ' ').trim().slice(0, 200) || `HTTP ${status}`;
    return { code: dsmErrorCode(status, message), message: `HTTP ${status}: ${message}` };
  };
  const common = {
    servers: opts.endpoints,
    tls: opts.tls,
    cluster: '',
    timeoutMs: opts.timeoutMs,
    attemptTimeoutMs: opts.attemptTimeoutMs,
    backoffMinMs: opts.backoffMinMs,
    backoffMaxMs: opts.backoffMaxMs,
    errorOf,
    ...(opts.onAttempt ? { onAttempt: opts.onAttempt } : {}),
    ...(opts.onServerState ? { onServerState: opts.onServerState } : {}),
  };
  // Two clients, because the credential differs: the API key (Basic) for the session call, the token (Bearer) for the rest.
  const auth = createKeyServerClient({
    ...common,
    apiKey: (reload) => (apiKeyInUse = reload ? opts.apiKey(true) : apiKeyInUse),
    headers: (apiKey) => ({ authorization: `Basic ${apiKey}` }),
  });
  const crypto = createKeyServerClient({
    ...common,
    // The token changes under the client: read at each attempt, not cached by it.
    apiKey: () => 'session',
    headers: () => ({ authorization: `Bearer ${session?.token ?? ''}` }),
  });

  async function open(deadlineAt: number): Promise<Session> {
    const sentAt = now();
    let res: { access_token?: unknown; expires_in?: unknown };
    try {
      res = await auth.request('POST', 'session', '/sys/v1/session/auth', undefined, { deadlineAt });
    } catch (e) {
      if (e instanceof KeyhavenError && (e.code === 'unauthenticated' || e.code === 'permission_denied')) {
        throw new KeyhavenError(e.code, `DSM refused the app's API key (check provider.apiKeyFile/apiKeyEnv, and that the app is enabled): ${e.message}`);
      }
      throw e;
    }
    const token = res?.access_token;
    const expiresIn = res?.expires_in;
    if (typeof token !== 'string' || !TOKEN.test(token) || typeof expiresIn !== 'number' || !Number.isFinite(expiresIn) || expiresIn <= 0) {
      throw new KeyhavenError('unavailable', 'DSM answered /sys/v1/session/auth without a usable access_token and expires_in');
    }
    const renewed = session !== undefined;
    session = { token, renewAt: sentAt + (expiresIn * 1000 * 2) / 3, expiresAt: sentAt + expiresIn * 1000 };
    opts.onSession?.({ expiresInS: expiresIn, renewed });
    return session;
  }

  /** The session to use; `stale` is one DSM just refused: open another unless a concurrent call already has. */
  async function ensure(deadlineAt: number, stale?: Session): Promise<Session> {
    const t = now();
    if (session && session !== stale && t < session.renewAt) return session;
    opening ??= open(deadlineAt).finally(() => {
      opening = undefined;
    });
    try {
      return await opening;
    } catch (e) {
      // A renewal DSM could not serve: the current token is still good until it expires.
      if (!stale && session && t < session.expiresAt && e instanceof KeyhavenError && KEEP_ON.has(e.code)) return session;
      throw e;
    }
  }

  return {
    async request<T>(method: HttpMethod, operation: string, path: string, body: unknown, callOpts: CallOptions = {}): Promise<T> {
      // Deadlines run on the real clock, as the HTTP client's do.
      const deadlineAt = Math.min(Date.now() + opts.timeoutMs, callOpts.deadlineAt ?? Infinity);
      const s = await ensure(deadlineAt);
      try {
        return await crypto.request<T>(method, operation, path, body, { ...callOpts, deadlineAt });
      } catch (e) {
        if (!(e instanceof KeyhavenError) || e.code !== 'unauthenticated') throw e;
      }
      // The session ended before its time: one new session, one more try.
      await ensure(deadlineAt, s);
      try {
        return await crypto.request<T>(method, operation, path, body, { ...callOpts, deadlineAt });
      } catch (e) {
        if (e instanceof KeyhavenError && e.code === 'unauthenticated') {
          throw new KeyhavenError('unauthenticated', `DSM refused a session it had just opened: ${e.message}`);
        }
        throw e;
      }
    },
    async close() {
      if (session && now() < session.expiresAt) {
        await crypto.request('POST', 'session-terminate', '/sys/v1/session/terminate', undefined, { deadlineAt: Date.now() + 500 }).catch(() => {});
      }
      session = undefined;
      await Promise.all([auth.close(), crypto.close()]);
    },
  };
}
