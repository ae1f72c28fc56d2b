import { Agent, request } from 'undici';

// undici in a module of its own, loaded by gateway.ts with a dynamic import on
// the first connection, as the CLI does (src/cli/http-agent.ts says why): a
// command that never reads etcd skips its load time, and a static import here
// gives the same named exports whether dist/src or the bundle runs.

export interface AgentTls {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
}

/** `socketPath`: a unix socket to connect to instead of the URL's host and port. */
export function createAgent(tls: AgentTls, timeoutMs: number, socketPath?: string): Agent {
  return new Agent({
    connect: { timeout: timeoutMs, ...tls, ...(socketPath ? { socketPath } : {}) },
    headersTimeout: timeoutMs,
    bodyTimeout: timeoutMs,
    // One connection is enough: pages are read one after another.
    connections: 1,
  });
}

export { request };
