import type { Command } from 'commander';
import { KeyhavenError } from '../../errors.js';
import { formatTable, printJson } from '../output.js';
import { promptSecret, readStdinSecret } from '../prompt.js';
import { commaList, connOptions, reportApprovalFiled, seg, SERVER_HELP, withClient, type ApprovalView, type RemoteFlags } from '../remote-command.js';
import type { PrincipalView } from './app.js';

const ROLES_HELP = 'comma list of security-admin, key-admin, auditor';

async function newPassword(name: string, fromStdin: boolean | undefined): Promise<string> {
  if (fromStdin) return readStdinSecret('password');
  const noTty = 'no terminal to ask for the password: pipe it in with --password-stdin';
  const a = await promptSecret(`password for new user ${name} (at least 12 characters): `, noTty);
  const b = await promptSecret('again: ', noTty);
  if (a !== b) throw new KeyhavenError('invalid_argument', 'the two passwords differ');
  return a;
}

export function registerUser(program: Command, run: (fn: () => Promise<number>) => void): void {
  const user = program.command('user').description('Manage users and their roles (security-admin)').addHelpText('after', SERVER_HELP);

  connOptions(
    user
      .command('create <name>')
      .description('Create a user; admin roles may need approval (the account is made at once, the roles once approved)')
      .requiredOption('--roles <list>', ROLES_HELP)
      .option('--password-stdin', 'read the new password from stdin instead of prompting'),
  ).action((name: string, flags: RemoteFlags & { roles: string; passwordStdin?: boolean }) =>
    run(() =>
      withClient(flags, async (c) => {
        const password = await newPassword(name, flags.passwordStdin);
        const r = await c.call<PrincipalView | { approval: ApprovalView; user: PrincipalView }>('POST', '/v1/users', { body: { name, password, roles: commaList(flags.roles) } });
        if (r.status === 202) {
          if (flags.output === 'text') process.stdout.write(`user "${name}" created without admin roles for now\n`);
          return reportApprovalFiled(r.body as { approval: ApprovalView }, flags.output);
        }
        const u = r.body as PrincipalView;
        if (flags.output === 'json') printJson(u);
        else process.stdout.write(`user "${u.name}" created with roles: ${u.roles.join(', ') || 'none'}\n`);
        return 0;
      }),
    ),
  );

  connOptions(user.command('list').description('List users and their roles')).action((flags: RemoteFlags) =>
    run(() =>
      withClient(flags, async (c) => {
        const { users } = (await c.call<{ users: PrincipalView[] }>('GET', '/v1/users')).body;
        if (flags.output === 'json') printJson(users);
        else {
          const rows = [['NAME', 'ROLES', 'STATE', 'LOCKED UNTIL', 'CREATED']];
          for (const u of users) rows.push([u.name, u.roles.join(',') || '-', u.state, u.lockedUntil ?? '-', u.createdAt]);
          process.stdout.write(formatTable(rows));
        }
        return 0;
      }),
    ),
  );

  connOptions(
    user
      .command('role <name>')
      .description('Replace a user\'s roles (never your own); adding or removing an admin role may need approval')
      .requiredOption('--roles <list>', `${ROLES_HELP}; --roles '' removes every role`),
  ).action((name: string, flags: RemoteFlags & { roles: string }) =>
    run(() =>
      withClient(flags, async (c) => {
        const r = await c.call<PrincipalView | { approval: ApprovalView }>('PUT', `/v1/users/${seg(name)}/roles`, { body: { roles: commaList(flags.roles) } });
        if (r.status === 202) return reportApprovalFiled(r.body as { approval: ApprovalView }, flags.output);
        const u = r.body as PrincipalView;
        if (flags.output === 'json') printJson(u);
        else process.stdout.write(`user "${u.name}" now has roles: ${u.roles.join(', ') || 'none'}\n`);
        return 0;
      }),
    ),
  );

  // Sign-in throttling: lift the locks a flood of wrong passwords left on a name.
  connOptions(
    user
      .command('unlock <name>')
      .description('Clear a user\'s sign-in failure counters and locks from every source address (security-admin)')
      .addHelpText(
        'after',
        '\nWrong passwords lock a name only for the address they came from (auth.maxFailedLogins, lockBase, lockMax in\nserver.yaml), so the right password still works from elsewhere. Use this when a flood also came from the\nuser\'s own address. The change is audited as user.unlock.',
      ),
  ).action((name: string, flags: RemoteFlags) =>
    run(() =>
      withClient(flags, async (c) => {
        const r = (await c.call<{ name: string; cleared: number }>('POST', `/v1/users/${seg(name)}/unlock`, { body: {} })).body;
        if (flags.output === 'json') printJson(r);
        else process.stdout.write(`user "${r.name}" unlocked (${r.cleared} sign-in counter${r.cleared === 1 ? '' : 's'} cleared)\n`);
        return 0;
      }),
    ),
  );
}
