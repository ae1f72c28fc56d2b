import { readFileSync } from 'node:fs';
import { assertOwnerOnly } from '../../config/secret-file.js';
import { KeyhavenError } from '../../errors.js';
import type { Logger } from '../../log/logger.js';
import type { TlsOptions } from '../key-server-client.js';
import type { PluginMetrics } from '../metrics.js';

// What the HTTP-based providers (keyhaven, vault, fortanix-dsm) share when
// they set up createKeyServerClient: config files read at start, and the
// metrics and log lines of server attempts and failover.

/** Reads a file the config names; a credential file must not be readable by group or others. */
export function readConfigFile(path: string, what: string, secret: boolean): Buffer {
  try {
    if (secret) assertOwnerOnly(path, { what });
    return readFileSync(path);
  } catch (e) {
    if (e instanceof KeyhavenError) throw e;
    throw new KeyhavenError('config_invalid', `cannot read ${what} ${path}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
}

/** The config's `tls:` block with its files read (the client key must be mode 0600). */
export function readTlsFiles(tls: { ca?: string | undefined; pinSha256?: string[] | undefined; clientCert?: string | undefined; clientKey?: string | undefined; serverName?: string | undefined }): TlsOptions {
  return {
    ...(tls.ca ? { ca: readConfigFile(tls.ca, 'CA bundle', false) } : {}),
    ...(tls.pinSha256 ? { pinSha256: tls.pinSha256 } : {}),
    ...(tls.clientCert ? { clientCert: readConfigFile(tls.clientCert, 'client certificate', false), clientKey: readConfigFile(tls.clientKey!, 'client key', true) } : {}),
    ...(tls.serverName ? { serverName: tls.serverName } : {}),
  };
}

/** The client's deadline and back-off, from a provider's `timeout`, `attemptTimeout` and `backoff` fields. */
export function deadlineOptions(p: { readonly timeout: number; readonly attemptTimeout: number; readonly backoff: { readonly min: number; readonly max: number } }) {
  return { timeoutMs: p.timeout, attemptTimeoutMs: p.attemptTimeout, backoffMinMs: p.backoff.min, backoffMaxMs: p.backoff.max };
}

export interface ServerStateWording {
  /** Log message when a failing server answers again. */
  readonly up: string;
  /** Log message when a server starts failing. */
  readonly down: string;
  /** Applied to the failure reason before it is logged (it may quote a server's answer). */
  readonly scrubReason?: (reason: string) => string;
}

/**
 * Marks every server up in metrics.serverUp and returns the client callbacks that count
 * attempts in metrics.serverCalls and track and log each server's state.
 */
export function observedClientOptions(ctx: { readonly logger: Logger; readonly metrics: PluginMetrics }, servers: readonly string[], wording: ServerStateWording) {
  const { logger, metrics } = ctx;
  for (const s of servers) metrics.serverUp.set({ server: s }, 1);
  // Label children looked up once per (server, operation, result): prom-client hashes the labels on every inc() otherwise.
  const counters = new Map<string, { inc(): void }>();
  return {
    onAttempt: (server: string, operation: string, result: string) => {
      const k = `${server}\u0000${operation}\u0000${result}`;
      let c = counters.get(k);
      if (!c) {
        c = metrics.serverCalls.labels({ server, operation, result });
        counters.set(k, c);
      }
      c.inc();
    },
    onServerState: (server: string, up: boolean, reason?: string) => {
      metrics.serverUp.set({ server }, up ? 1 : 0);
      if (up) logger.info({ server }, wording.up);
      else logger.warn({ server, reason: reason && wording.scrubReason ? wording.scrubReason(reason) : reason }, wording.down);
    },
  };
}
