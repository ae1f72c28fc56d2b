import type { Command } from 'commander';
import { KeyhavenError } from '../errors.js';
import { createClient, resolveConnection, type ApiClient, type ConnectionFlags } from './client.js';
import { printData, type OutputFormat } from './output.js';
import { parseOutput } from './store-command.js';

export interface RemoteFlags extends ConnectionFlags {
  output: OutputFormat;
}

export const SERVER_HELP = `
The key server is --server URL, else that of --context NAME, else
$KEYHAVEN_ADDR, else that of $KEYHAVEN_CONTEXT or the current context (see
"keyhaven context"), else http://127.0.0.1:8200. The token is $KEYHAVEN_TOKEN,
else the saved login (sent only to the server that issued it). A private CA:
--ca-file FILE or $KEYHAVEN_CACERT.`;

/** Options of every command that talks to the key server. */
export function connOptions(c: Command, opts: { output?: boolean } = {}): Command {
  c.option('--context <name>', 'saved server and login to use (default $KEYHAVEN_CONTEXT, else the current context)').option('--server <url>', 'key server URL (default $KEYHAVEN_ADDR, the saved login, or http://127.0.0.1:8200)').option(
    '--ca-file <file>',
    'PEM CA bundle to trust for an https server (default $KEYHAVEN_CACERT)',
  );
  if (opts.output !== false) c.option('-o, --output <format>', 'text, json or yaml', parseOutput, 'text' as OutputFormat);
  return c;
}

export async function withClient<T>(flags: ConnectionFlags, fn: (c: ApiClient) => Promise<T>, opts: { useSessionToken?: boolean } = {}): Promise<T> {
  const client = createClient(resolveConnection(flags, opts));
  try {
    return await fn(client);
  } finally {
    await client.close();
  }
}

export interface ApprovalView {
  id: string;
  operation: string;
  params: Record<string, unknown>;
  requester: string;
  required: number;
  /** Roles any of which an approver holds. */
  approverRoles?: string[];
  approvals: Array<{ name: string; at: string }>;
  state: string;
  createdAt: string;
  expiresAt: string;
  decidedAt: string | null;
  result: unknown;
}

/**
 * A guarded operation answered 202: it waits for other admins. That is a
 * success for the caller (exit 0), with the id they pass on.
 */
export function reportApprovalFiled(body: { approval: ApprovalView }, output: OutputFormat): number {
  if (output !== 'text') {
    printData(body, output);
    return 0;
  }
  const a = body.approval;
  const n = a.required - a.approvals.length;
  process.stdout.write(`approval request ${a.id} filed; needs ${n} approval${n === 1 ? '' : 's'} (${a.operation}, expires ${a.expiresAt})\n`);
  const who = a.approverRoles?.length ? `another ${a.approverRoles.join(' or ')}` : 'another admin';
  process.stdout.write(`${who} approves it with: keyhaven approval approve ${a.id}\n`);
  return 0;
}

/** A comma list such as "encrypt,decrypt"; empty entries dropped. */
export function commaList(v: string): string[] {
  return v
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}

export function positiveInt(what: string, v: string): number {
  if (!/^[1-9]\d{0,9}$/.test(v)) throw new KeyhavenError('invalid_argument', `${what} must be a positive integer, not ${JSON.stringify(v)}`);
  return Number(v);
}

/** URL path segment for a name the user typed. */
export function seg(v: string): string {
  return encodeURIComponent(v);
}

/**
 * Runs a server call and, when the server refuses a query or body field
 * ("querystring.since: must be …"), names the flag the user typed instead
 * ("--since: must be …"). Fields the map does not know stay as they are.
 */
export async function namingFlags<T>(fields: Readonly<Record<string, string>>, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (!(e instanceof KeyhavenError) || e.code !== 'invalid_argument') throw e;
    let named = false;
    const message = e.message.replace(/\b(?:querystring|body|params)\.([A-Za-z0-9_]+)(?=[.:])/g, (all, field: string) => {
      const flag = Object.hasOwn(fields, field) ? fields[field] : undefined;
      if (flag === undefined) return all;
      named = true;
      return flag;
    });
    if (!named) throw e;
    throw new KeyhavenError('invalid_argument', message, { cause: e });
  }
}
