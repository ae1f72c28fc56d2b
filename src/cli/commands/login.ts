import type { Command } from 'commander';
import { KeyhavenError } from '../../errors.js';
import { createClient, resolveConnection } from '../client.js';
import { printData, type OutputFormat } from '../output.js';
import { promptLine, promptSecret, readStdinSecret } from '../prompt.js';
import { connOptions, SERVER_HELP, withClient, type RemoteFlags } from '../remote-command.js';
import { parseOutput } from '../store-command.js';
import { checkContextName, contextNameFor, readSessions, saveSession, selectContext, writeSessions, type Context, type Sessions } from '../session.js';
import { formatTable } from '../output.js';

interface LoginResponse {
  token: string;
  expiresAt: string;
  principal: { name: string; kind: string; roles: string[] };
}

export function registerLogin(program: Command, run: (fn: () => Promise<number>) => void): void {
  connOptions(
    program
      .command('login')
      .description('Log in to the key server and save the session (0600) for later commands')
      .option('--name <user>', 'user name (prompted for when absent)')
      .option('--password-stdin', 'read the password from stdin instead of prompting'),
  )
    .addHelpText(
      'after',
      `${SERVER_HELP}\n\nThe session is saved to $XDG_CONFIG_HOME/keyhaven/session.json (default ~/.config/keyhaven)
under a context name: --context NAME, else the context already saved for that
server, else one named after its host and port (127.0.0.1-8200). The context
logged in to becomes the current one (see "keyhaven context").`,
    )
    .action((flags: RemoteFlags & { name?: string; passwordStdin?: boolean }) =>
      run(async () => {
        const name = flags.name ?? (await promptLine('user name: ', { secret: false, noTty: 'no terminal to ask for the user name: pass --name' }));
        const password = flags.passwordStdin
          ? await readStdinSecret('password')
          : await promptSecret(`password for ${name}: `, 'no terminal to ask for the password: pipe it in with --password-stdin');
        // --context here names where to save the login; an existing one supplies its server and CA file.
        const target = flags.context !== undefined ? checkContextName(flags.context) : undefined;
        const existing: Context | undefined = target ? readSessions().contexts[target] : undefined;
        const conn = resolveConnection({ server: flags.server ?? existing?.server, caFile: flags.caFile ?? existing?.caFile }, { useSessionToken: false });
        const contextName = target ?? conn.context ?? contextNameFor(conn.server);
        // Logging in never sends an older token along.
        const client = createClient({ server: conn.server, caFile: conn.caFile });
        let res;
        try {
          res = await client.call<LoginResponse>('POST', '/v1/auth/login', { body: { name, password }, auth: false });
        } finally {
          await client.close();
        }
        const b = res.body;
        const path = saveSession(contextName, { server: conn.server, token: b.token, expiresAt: b.expiresAt, ...(conn.caFile ? { caFile: conn.caFile } : {}) });
        const view = { server: conn.server, context: contextName, name: b.principal.name, roles: b.principal.roles, expiresAt: b.expiresAt, session: path };
        if (flags.output !== 'text') printData(view, flags.output);
        else process.stdout.write(`logged in to ${conn.server} as ${view.name} (${view.roles.join(', ') || 'no roles'}); session saved to ${path} as context ${contextName}, expires ${view.expiresAt}\n`);
        return 0;
      }),
    );

  program
    .command('logout')
    .description('End the saved session on the server and forget its token (the context keeps its server)')
    .option('--context <name>', 'the saved context to log out of (default $KEYHAVEN_CONTEXT, else the current one)')
    .option('--ca-file <file>', 'PEM CA bundle to trust for an https server (default $KEYHAVEN_CACERT)')
    .option('-o, --output <format>', 'text, json or yaml', parseOutput, 'text' as OutputFormat)
    .action((flags: { context?: string; caFile?: string; output: OutputFormat }) =>
      run(async () => {
        const all = readSessions();
        const sel = selectContext(all, flags.context ?? (process.env.KEYHAVEN_CONTEXT || undefined), flags.context !== undefined ? '--context' : 'KEYHAVEN_CONTEXT');
        const s = sel?.context;
        let serverEnded = false;
        let warning: string | undefined;
        if (s?.token) {
          try {
            const client = createClient({ server: s.server, token: s.token, caFile: flags.caFile ?? process.env.KEYHAVEN_CACERT ?? s.caFile });
            try {
              await client.call('POST', '/v1/auth/logout');
              serverEnded = true;
            } finally {
              await client.close();
            }
          } catch (e) {
            // An expired session or an unreachable server: the local copy goes anyway.
            warning = e instanceof KeyhavenError ? e.message : String(e);
          }
        }
        const removed = Boolean(sel && s?.token);
        if (sel && removed) {
          const { token: _t, expiresAt: _e, ...kept } = sel.context;
          writeSessions({ ...all, contexts: { ...all.contexts, [sel.name]: kept } });
        }
        if (flags.output !== 'text') printData({ loggedOut: removed, serverSessionEnded: serverEnded, ...(sel ? { context: sel.name, server: sel.context.server } : {}) }, flags.output);
        else if (!removed) process.stdout.write('not logged in\n');
        else {
          if (warning) process.stderr.write(`keyhaven: warning: the server did not end the session: ${warning}\n`);
          process.stdout.write(`logged out of ${s!.server} (context ${sel!.name})\n`);
        }
        return 0;
      }),
    );

  registerContext(program, run);

  connOptions(program.command('whoami').description('Show who the current credentials belong to'))
    .addHelpText('after', SERVER_HELP)
    .action((flags: RemoteFlags) =>
      run(() =>
        withClient(flags, async (c) => {
          const r = await c.call<{ name: string; kind: string; roles: string[] }>('GET', '/v1/auth/whoami');
          if (flags.output !== 'text') printData({ server: c.connection.server, ...r.body }, flags.output);
          else process.stdout.write(`${r.body.kind} ${r.body.name} on ${c.connection.server}${r.body.kind === 'user' ? ` (${r.body.roles.join(', ') || 'no roles'})` : ''}\n`);
          return 0;
        }),
      ),
    );
}

function loginState(c: Context, now: number): string {
  if (!c.token || !c.expiresAt) return 'logged out';
  return Date.parse(c.expiresAt) <= now ? 'expired' : `until ${c.expiresAt}`;
}

/** Saved servers by name, as kubectl's contexts: list, use, delete, current. */
function registerContext(program: Command, run: (fn: () => Promise<number>) => void): void {
  const ctx = program
    .command('context')
    .description('Saved key servers by name (made by "keyhaven login"): list, switch, delete')
    .addHelpText(
      'after',
      `
Every command that talks to the key server takes --context NAME (or
$KEYHAVEN_CONTEXT) to use a saved server and its login instead of the current
one. --server and $KEYHAVEN_ADDR still pick a server directly; a saved token
is only ever sent to the server it was issued by.

  keyhaven login --server https://keys.prod.example:8200 --context prod
  keyhaven context list
  keyhaven context use prod
  keyhaven key list --context staging`,
    );

  ctx
    .command('list')
    .description('List the saved contexts; * marks the current one')
    .option('-q, --quiet', 'only the names, one a line')
    .option('-o, --output <format>', 'text, json or yaml', parseOutput, 'text' as OutputFormat)
    .action((flags: { quiet?: boolean; output: OutputFormat }) =>
      run(async () => {
        const all = readSessions();
        const now = Date.now();
        const names = Object.keys(all.contexts).sort();
        if (flags.output !== 'text') {
          // A list prints an object holding it, as every list command does (docs/cli.md, Output).
          printData(
            {
              contexts: names.map((n) => {
                const c = all.contexts[n]!;
                return { name: n, current: n === all.current, server: c.server, loggedIn: Boolean(c.token && c.expiresAt && Date.parse(c.expiresAt) > now), ...(c.expiresAt ? { expiresAt: c.expiresAt } : {}), ...(c.caFile ? { caFile: c.caFile } : {}) };
              }),
            },
            flags.output,
          );
        } else if (flags.quiet) {
          for (const n of names) process.stdout.write(`${n}\n`);
        } else if (!names.length) {
          process.stdout.write('no saved contexts: run "keyhaven login --server URL --context NAME"\n');
        } else {
          const rows = names.map((n) => {
            const c = all.contexts[n]!;
            return [n === all.current ? '*' : '', n, c.server, loginState(c, now)];
          });
          process.stdout.write(formatTable([['CURRENT', 'NAME', 'SERVER', 'LOGIN'], ...rows]));
        }
        return 0;
      }),
    );

  // `use NAME` and `delete NAME`: a saved context by name, then an answer in the chosen format.
  const byName = (command: string, description: string, act: (all: Sessions, sel: NonNullable<ReturnType<typeof selectContext>>) => { data: object; text: string }) =>
    ctx
      .command(command)
      .description(description)
      .argument('<name>', 'context name')
      .option('-o, --output <format>', 'text, json or yaml', parseOutput, 'text' as OutputFormat)
      .action((name: string, flags: { output: OutputFormat }) =>
        run(async () => {
          const all = readSessions();
          const { data, text } = act(all, selectContext(all, name, 'the context name')!);
          if (flags.output !== 'text') printData(data, flags.output);
          else process.stdout.write(`${text}\n`);
          return 0;
        }),
      );

  byName('use', 'Make a saved context the current one', (all, sel) => {
    writeSessions({ ...all, current: sel.name });
    return { data: { current: sel.name, server: sel.context.server }, text: `switched to context ${sel.name} (${sel.context.server})` };
  });

  ctx
    .command('current')
    .description('Print the current context name')
    .action(() =>
      run(async () => {
        const all = readSessions();
        if (!all.current) throw new KeyhavenError('not_found', 'no current context: run "keyhaven login" or "keyhaven context use NAME"');
        process.stdout.write(`${all.current}\n`);
        return 0;
      }),
    );

  byName('delete', 'Forget a saved context and its token (run "keyhaven logout --context NAME" first to end the session on the server)', (all, sel) => {
    const { [sel.name]: _gone, ...rest } = all.contexts;
    const current = all.current === sel.name ? undefined : all.current;
    writeSessions({ ...(current ? { current } : {}), contexts: rest });
    return {
      data: { deleted: sel.name, ...(current ? { current } : {}) },
      text: `deleted context ${sel.name}${all.current === sel.name ? '; no current context now (keyhaven context use NAME)' : ''}`,
    };
  });
}
