import { Agent, request } from 'undici';

// HTTP calls from a chosen loopback source address, for the sign-in
// adversary tests: undici Agent `localAddress` binds the client socket
// (`connect.localAddress` is silently ignored); Linux routes all of 127/8 to
// the loopback interface, so the server sees distinct sources.

export interface Res {
  status: number;
  text: string;
  body: any;
  contentType: string;
}

const agents = new Map<string, Agent>();
function agentFor(source: string): Agent {
  let a = agents.get(source);
  if (!a) {
    a = new Agent({ localAddress: source });
    agents.set(source, a);
  }
  return a;
}

export async function call(url: string, method: string, path: string, opts: { from?: string; body?: unknown; token?: string; basic?: string } = {}): Promise<Res> {
  const headers: Record<string, string> = {};
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  if (opts.basic) headers.authorization = `Basic ${Buffer.from(opts.basic).toString('base64')}`;
  if (opts.body !== undefined) headers['content-type'] = 'application/json';
  const r = await request(url + path, {
    method: method as 'GET',
    headers,
    body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
    dispatcher: agentFor(opts.from ?? '127.0.0.1'),
  });
  const text = await r.body.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // plain text (DSM errors)
  }
  return { status: r.statusCode, text, body, contentType: String(r.headers['content-type'] ?? '') };
}

export const loginFrom = (url: string, from: string, name: string, password: string) => call(url, 'POST', '/v1/auth/login', { from, body: { name, password } });

export function detailsOf(r: any): Record<string, unknown> {
  return typeof r.details === 'string' ? JSON.parse(r.details) : (r.details ?? {});
}

export function count<T>(xs: readonly T[], f: (x: T) => boolean): number {
  return xs.filter(f).length;
}

/** Closes every client agent (call from a file's top-level `after`). */
export async function closeAgents(): Promise<void> {
  for (const a of agents.values()) await a.close();
  agents.clear();
}
