import { Agent, request } from 'undici';

// The CLI's HTTP client, in a module of its own so client.ts can load it on
// the first request: commands that fail before one (bad usage, local mode)
// skip undici's load time. A static import here (not `import('undici')`)
// gives the same named exports whether dist/src or the bundle runs.
export function createAgent(ca: Buffer | undefined): Agent {
  return new Agent({ connect: { timeout: 10_000, ...(ca ? { ca } : {}) }, headersTimeout: 120_000, bodyTimeout: 120_000 });
}

export { request };
