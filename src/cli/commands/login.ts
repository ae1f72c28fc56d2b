import type { Command } from 'commander';
import { KeyhavenError } from '../../errors.js';
import { createClient, resolveConnection } from '../client.js';
import { printJson, type OutputFormat } from '../output.js';
import { promptLine, promptSecret, readStdinSecret } from '../prompt.js';
import { connOptions, SERVER_HELP, withClient, type RemoteFlags } from '../remote-command.js';
import { parseOutput } from '../store-command.js';
import { deleteSession, readSession, saveSession } from '../session.js';

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
    .addHelpText('after', `${SERVER_HELP}\n\nThe session is saved to $XDG_CONFIG_HOME/keyhaven/session.json (default ~/.config/keyhaven).`)
    .action((flags: RemoteFlags & { name?: string; passwordStdin?: boolean }) =>
      run(async () => {
        const name = flags.name ?? (await promptLine('user name: ', { secret: false, noTty: 'no terminal to ask for the user name: pass --name' }));
        const password = flags.passwordStdin
          ? await readStdinSecret('password')
          : await promptSecret(`password for ${name}: `, 'no terminal to ask for the password: pipe it in with --password-stdin');
        const conn = resolveConnection(flags, { useSessionToken: false });
        // Logging in never sends an older token along.
        const client = createClient({ server: conn.server, caFile: conn.caFile });
        let res;
        try {
          res = await client.call<LoginResponse>('POST', '/v1/auth/login', { body: { name, password }, auth: false });
        } finally {
          await client.close();
        }
        const b = res.body;
        const path = saveSession({ server: conn.server, token: b.token, expiresAt: b.expiresAt, ...(conn.caFile ? { caFile: conn.caFile } : {}) });
        const view = { server: conn.server, name: b.principal.name, roles: b.principal.roles, expiresAt: b.expiresAt, session: path };
        if (flags.output === 'json') printJson(view);
        else process.stdout.write(`logged in to ${conn.server} as ${view.name} (${view.roles.join(', ') || 'no roles'}); session saved to ${path}, expires ${view.expiresAt}\n`);
        return 0;
      }),
    );

  program
    .command('logout')
    .description('End the saved session on the server and delete it locally')
    .option('--ca-file <file>', 'PEM CA bundle to trust for an https server (default $KEYHAVEN_CACERT)')
    .option('-o, --output <format>', 'text or json', parseOutput, 'text' as OutputFormat)
    .action((flags: { caFile?: string; output: OutputFormat }) =>
      run(async () => {
        const s = readSession();
        let serverEnded = false;
        let warning: string | undefined;
        if (s) {
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
        const removed = deleteSession();
        if (flags.output === 'json') printJson({ loggedOut: removed, serverSessionEnded: serverEnded, ...(s ? { server: s.server } : {}) });
        else if (!removed) process.stdout.write('not logged in\n');
        else {
          if (warning) process.stderr.write(`keyhaven: warning: the server did not end the session: ${warning}\n`);
          process.stdout.write(`logged out of ${s!.server}\n`);
        }
        return 0;
      }),
    );

  connOptions(program.command('whoami').description('Show who the current credentials belong to'))
    .addHelpText('after', SERVER_HELP)
    .action((flags: RemoteFlags) =>
      run(() =>
        withClient(flags, async (c) => {
          const r = await c.call<{ name: string; kind: string; roles: string[] }>('GET', '/v1/auth/whoami');
          if (flags.output === 'json') printJson({ server: c.connection.server, ...r.body });
          else process.stdout.write(`${r.body.kind} ${r.body.name} on ${c.connection.server}${r.body.kind === 'user' ? ` (${r.body.roles.join(', ') || 'no roles'})` : ''}\n`);
          return 0;
        }),
      ),
    );
}
