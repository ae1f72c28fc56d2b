import type { Command } from 'commander';
import { KeyhavenError } from '../../errors.js';
import { formatTable, printData, relativeTime } from '../output.js';
import { promptSecret, readStdinSecret } from '../prompt.js';
import { commaList, connOptions, reportApprovalFiled, seg, SERVER_HELP, withClient, type ApprovalView, type RemoteFlags } from '../remote-command.js';
import type { PrincipalView } from './app.js';

const ROLES_HELP = 'comma list of security-admin, key-admin, auditor';

async function newPassword(name: string, fromStdin: boolean | undefined, what = `password for new user ${name}`): Promise<string> {
  if (fromStdin) return readStdinSecret('password');
  const noTty = 'no terminal to ask for the password: pipe it in with --password-stdin';
  const a = await promptSecret(`${what} (at least 12 characters): `, noTty);
  const b = await promptSecret('again: ', noTty);
  if (a !== b) throw new KeyhavenError('invalid_argument', 'the two passwords differ');
  return a;
}

export function registerUser(program: Command, run: (fn: () => Promise<number>) => void): void {
  const user = program
    .command('user')
    .description('Manage users, their roles and passwords (security-admin; passwd: any user)')
    .addHelpText('after', SERVER_HELP)
    .addHelpText(
      'after',
      '\nSeparation of duties: nobody holds both security-admin and key-admin, and adding an admin role\n' +
        '(security-admin or key-admin) always needs one approval from another admin. Disabling, deleting\n' +
        'a user or changing their password ends their sessions at once (other servers sharing the\n' +
        'database within 2 s).',
    );

  connOptions(
    user
      .command('create <name>')
      .description('Create a user; roles follow the role-change rules: admin roles need another admin\'s approval (the account is made at once, the roles once approved)')
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
        if (flags.output !== 'text') printData(u, flags.output);
        else process.stdout.write(`user "${u.name}" created with roles: ${u.roles.join(', ') || 'none'}\n`);
        return 0;
      }),
    ),
  );

  connOptions(user.command('list').description('List users and their roles')).action((flags: RemoteFlags) =>
    run(() =>
      withClient(flags, async (c) => {
        const { users } = (await c.call<{ users: PrincipalView[] }>('GET', '/v1/users')).body;
        if (flags.output !== 'text') printData({ users }, flags.output);
        else {
          const rows = [['NAME', 'ROLES', 'STATE', 'LOCKED UNTIL', 'CREATED']];
          for (const u of users) rows.push([u.name, u.roles.join(',') || '-', u.state, relativeTime(u.lockedUntil), relativeTime(u.createdAt)]);
          process.stdout.write(formatTable(rows));
        }
        return 0;
      }),
    ),
  );

  connOptions(
    user
      .command('role <name>')
      .description('Replace a user\'s roles (never your own); adding an admin role needs another admin\'s approval, other changes follow the quorum policy')
      .requiredOption('--roles <list>', `${ROLES_HELP}; --roles '' removes every role`),
  ).action((name: string, flags: RemoteFlags & { roles: string }) =>
    run(() =>
      withClient(flags, async (c) => {
        const r = await c.call<PrincipalView | { approval: ApprovalView }>('PUT', `/v1/users/${seg(name)}/roles`, { body: { roles: commaList(flags.roles) } });
        if (r.status === 202) return reportApprovalFiled(r.body as { approval: ApprovalView }, flags.output);
        const u = r.body as PrincipalView;
        if (flags.output !== 'text') printData(u, flags.output);
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
        if (flags.output !== 'text') printData(r, flags.output);
        else process.stdout.write(`user "${r.name}" unlocked (${r.cleared} sign-in counter${r.cleared === 1 ? '' : 's'} cleared)\n`);
        return 0;
      }),
    ),
  );

  const lifecycle = (verb: 'disable' | 'enable', help: string, done: string) =>
    connOptions(user.command(`${verb} <name>`).description(help)).action((name: string, flags: RemoteFlags) =>
      run(() =>
        withClient(flags, async (c) => {
          const u = (await c.call<PrincipalView>('POST', `/v1/users/${seg(name)}/${verb}`, { body: {} })).body;
          if (flags.output !== 'text') printData(u, flags.output);
          else process.stdout.write(`user "${u.name}" ${done}\n`);
          return 0;
        }),
      ),
    );
  lifecycle('disable', 'Disable a user (never yourself, never the last active security-admin); their sessions end at once', 'disabled; their sessions have ended');
  lifecycle('enable', 'Enable a disabled user; they sign in again', 'enabled');

  connOptions(user.command('delete <name>').description('Delete a user and their credentials (never yourself, never the last active security-admin)')).action((name: string, flags: RemoteFlags) =>
    run(() =>
      withClient(flags, async (c) => {
        await c.call('DELETE', `/v1/users/${seg(name)}`);
        if (flags.output !== 'text') printData({ name, deleted: true }, flags.output);
        else process.stdout.write(`user "${name}" deleted\n`);
        return 0;
      }),
    ),
  );

  connOptions(
    user
      .command('passwd')
      .description('Change your own password (asks for the current one and the new one); your other sessions end')
      .option('--password-stdin', 'read the current password, then the new one, as two lines from stdin'),
  ).action((flags: RemoteFlags & { passwordStdin?: boolean }) =>
    run(() =>
      withClient(flags, async (c) => {
        let currentPassword: string;
        let newPass: string;
        if (flags.passwordStdin) {
          const lines = (await readStdinSecret('current and new password')).split(/\r?\n/);
          if (lines.length < 2 || !lines[0] || !lines[1]) throw new KeyhavenError('invalid_argument', 'give the current password and the new one as two lines on stdin');
          [currentPassword, newPass] = [lines[0], lines[1]];
        } else {
          currentPassword = await promptSecret('current password: ', 'no terminal to ask for the passwords: pipe them in with --password-stdin');
          newPass = await newPassword('', false, 'new password');
        }
        await c.call('PUT', '/v1/auth/password', { body: { currentPassword, newPassword: newPass } });
        if (flags.output !== 'text') printData({ ok: true }, flags.output);
        else process.stdout.write('password changed; your other sessions have ended\n');
        return 0;
      }),
    ),
  );

  connOptions(
    user
      .command('reset-password <name>')
      .description('Set another user\'s password (their sessions end); for a user holding an admin role another admin approves first')
      .option('--password-stdin', 'read the new password from stdin instead of prompting'),
  ).action((name: string, flags: RemoteFlags & { passwordStdin?: boolean }) =>
    run(() =>
      withClient(flags, async (c) => {
        const password = await newPassword(name, flags.passwordStdin, `new password for ${name}`);
        const r = await c.call<PrincipalView | { approval: ApprovalView }>('PUT', `/v1/users/${seg(name)}/password`, { body: { password } });
        if (r.status === 202) return reportApprovalFiled(r.body as { approval: ApprovalView }, flags.output);
        if (flags.output !== 'text') printData(r.body, flags.output);
        else process.stdout.write(`password of "${name}" reset; their sessions have ended\n`);
        return 0;
      }),
    ),
  );
}
