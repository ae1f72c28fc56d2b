import type { Command } from 'commander';
import { KeyhavenError } from '../../errors.js';
import type { ApiClient } from '../client.js';
import { printData, type OutputFormat } from '../output.js';
import { canPrompt, promptLine, promptSecret, readStdin, readStdinSecret } from '../prompt.js';
import { connOptions, positiveInt, SERVER_HELP, withClient, type RemoteFlags } from '../remote-command.js';
import { registerBackup } from './operator-backup.js';

interface SealStatus {
  initialized: boolean;
  sealed: boolean;
  kind: 'keyfile' | 'shamir' | 'pkcs11';
  threshold?: number;
  shares?: number;
  progress?: number;
  sealedBy?: 'operator';
  initConfirmed?: boolean;
}

interface Credentials {
  name: string;
  password: string;
}

function statusText(server: string, s: SealStatus): string {
  const lines = [`server:       ${server}`, `initialized:  ${s.initialized}`, `sealed:       ${s.sealed}${s.sealedBy === 'operator' ? ' (operator seal: a security-admin unseals)' : ''}`, `seal:         ${s.kind}`];
  if (s.initConfirmed === false) lines.push('confirmed:    false (no user made by init has logged in yet; init may be run again)');
  if (s.kind === 'shamir' && s.threshold !== undefined) {
    lines.push(`shares:       ${s.threshold} of ${s.shares} needed to unseal`);
    if (s.sealed) lines.push(`progress:     ${s.progress ?? 0} of ${s.threshold} entered`);
  }
  return lines.join('\n') + '\n';
}

function unsealText(s: SealStatus): string {
  if (!s.sealed) return 'the server is unsealed\n';
  return `share accepted: ${s.progress ?? 0} of ${s.threshold} entered; the server is still sealed\n`;
}

/** Posts shares one by one until the server unseals (a shamir server); the last status. */
async function postShares(c: ApiClient, shares: readonly string[]): Promise<SealStatus> {
  let last: SealStatus | undefined;
  for (const share of shares) {
    last = (await c.call<SealStatus>('POST', '/v1/sys/unseal', { body: { share }, auth: false })).body;
    if (!last.sealed) break;
  }
  return last!;
}

export function registerOperator(program: Command, run: (fn: () => Promise<number>) => void): void {
  const op = program.command('operator').description('Initialise, seal and unseal the key server; back up its store and check a backup restores').addHelpText('after', SERVER_HELP);

  connOptions(
    op
      .command('init')
      .description('Initialise a new key server: its root key (and unseal shares), the first security-admin and the first key-admin (two different people)')
      .option('--shares <n>', 'unseal shares to make (shamir seal)')
      .option('--threshold <m>', 'shares needed to unseal (shamir seal)')
      .option('--admin <name>', 'name of the first security-admin', 'admin')
      .option('--key-admin <name>', 'name of the first key-admin', 'keyadmin'),
  )
    .addHelpText('after', '\nUntil one of the two users has logged in, the server counts as unconfirmed and init may be run again\n(new root key, shares and passwords): an answer lost to a crash or a dropped connection is not fatal.')
    .action((flags: RemoteFlags & { shares?: string; threshold?: string; admin: string; keyAdmin: string }) =>
    run(() =>
      withClient(flags, async (c) => {
        const body = {
          ...(flags.shares !== undefined ? { shares: positiveInt('--shares', flags.shares) } : {}),
          ...(flags.threshold !== undefined ? { threshold: positiveInt('--threshold', flags.threshold) } : {}),
          adminName: flags.admin,
          keyAdminName: flags.keyAdmin,
        };
        const r = await c.call<{ shares?: string[]; admin: Credentials; keyAdmin: Credentials }>('POST', '/v1/sys/init', { body, auth: false });
        if (flags.output !== 'text') {
          printData(r.body, flags.output);
          return 0;
        }
        const out: string[] = [`keyhaven server at ${c.connection.server} initialised.`, ''];
        out.push('WARNING: everything below is shown once and never again. Store each unseal share');
        out.push('with a different person or place, and each admin password apart from the shares.');
        out.push('The security-admin and the key-admin passwords go to two different people: one');
        out.push('manages identities, the other decides who may use keys; neither alone can decrypt.');
        out.push('');
        const shares = r.body.shares ?? [];
        shares.forEach((s, i) => out.push(`unseal share ${i + 1} of ${shares.length}: ${s}`));
        if (shares.length) {
          const st = (await c.call<SealStatus>('GET', '/v1/sys/seal-status', { auth: false })).body;
          out.push('', `${st.threshold ?? '?'} of these ${shares.length} shares unseal the server. It starts sealed: run keyhaven operator unseal.`, '');
        }
        out.push(`security-admin name:     ${r.body.admin.name}`, `security-admin password: ${r.body.admin.password}`, '');
        out.push(`key-admin name:          ${r.body.keyAdmin.name}`, `key-admin password:      ${r.body.keyAdmin.password}`, '');
        out.push(`log in with: keyhaven login --server ${c.connection.server} --name ${r.body.admin.name}   (or --name ${r.body.keyAdmin.name})`);
        out.push('The first login of either user confirms the initialisation; until then it may be run again.');
        process.stdout.write(out.join('\n') + '\n');
        return 0;
      }),
    ),
  );

  connOptions(
    op
      .command('unseal [share]')
      .description('Enter an unseal share (shamir), or lift the seal of a keyfile/pkcs11 server as a security-admin')
      .option('--share-stdin', 'read the share(s) from stdin, one per line')
      .option('--name <user>', 'keyfile/pkcs11: the security-admin who unseals (the password is prompted for, or read from stdin)')
      .option('--password-stdin', 'keyfile/pkcs11: read the password from stdin instead of prompting'),
  )
    .addHelpText(
      'after',
      [
        '',
        'Prefer the prompt or --share-stdin to a SHARE argument: arguments are visible to other users in ps.',
        'Without SHARE a shamir server\'s share is read from the terminal (not echoed) or, when stdin is not a terminal, from stdin.',
        '',
        'A keyfile or pkcs11 server loads its root key by itself at start only. Once sealed (keyhaven operator seal,',
        'which holds across restarts and for every server sharing the database) a security-admin unseals it: with',
        '--name the password is asked for (not echoed) or read from stdin; without --name the saved session',
        '(keyhaven login) is used, or the name and password are asked for. There is no password flag.',
      ].join('\n'),
    )
    .action((share: string | undefined, flags: RemoteFlags & { shareStdin?: boolean; name?: string; passwordStdin?: boolean }) =>
      run(() =>
        withClient(flags, async (c) => {
          // Asking for the status makes a server that has not yet noticed another server's init (on a shared database) catch up.
          const status = (await c.call<SealStatus>('GET', '/v1/sys/seal-status', { auth: false })).body;
          let after: SealStatus;
          // The server decides, not this client: it reads the store again, and answers with its state
          // (unsealed by then, for a keyfile or pkcs11 server another server initialised) or says why not.
          if (!status.initialized) after = (await c.call<SealStatus>('POST', '/v1/sys/unseal', { body: {}, auth: false })).body;
          else if (!status.sealed) after = status;
          else if (status.kind !== 'shamir') {
            // A security-admin lifts the seal: the saved session, or a name and password.
            if (flags.name === undefined && !flags.passwordStdin && c.connection.token) {
              after = (await c.call<SealStatus>('POST', '/v1/sys/unseal', { body: {} })).body;
            } else {
              const creds = await askCredentials(flags);
              after = (await c.call<SealStatus>('POST', '/v1/sys/unseal', { body: creds, auth: false })).body;
            }
          } else {
            let shares: string[];
            if (share !== undefined && !flags.shareStdin) shares = [share];
            else if (!flags.shareStdin && canPrompt()) shares = [await promptSecret(`unseal share (${(status.progress ?? 0) + 1} of ${status.threshold}): `, '')];
            else shares = (await readStdin('unseal shares')).split(/\r?\n/).map((s) => s.trim()).filter(Boolean);
            if (shares.length === 0 || shares.some((s) => s.length === 0)) throw new KeyhavenError('invalid_argument', 'no unseal share given');
            after = await postShares(c, shares);
          }
          output(flags.output, c.connection.server, after, unsealText(after));
          return 0;
        }),
      ),
    );

  connOptions(op.command('seal').description('Seal the server: it drops the root key from memory and refuses everything until unsealed (security-admin)')).action(
    (flags: RemoteFlags) =>
      run(() =>
        withClient(flags, async (c) => {
          const s = (await c.call<SealStatus>('POST', '/v1/sys/seal')).body;
          output(flags.output, c.connection.server, s, `the server at ${c.connection.server} is sealed; unseal it with keyhaven operator unseal\n`);
          return 0;
        }),
      ),
  );

  connOptions(op.command('status').description('Show whether the server is initialised and sealed, and its seal kind')).action((flags: RemoteFlags) =>
    run(() =>
      withClient(flags, async (c) => {
        const s = (await c.call<SealStatus>('GET', '/v1/sys/seal-status', { auth: false })).body;
        output(flags.output, c.connection.server, s, statusText(c.connection.server, s));
        return 0;
      }),
    ),
  );

  registerBackup(op, run);
}

/** A security-admin's name and password: from --name and the terminal, or stdin for scripts. */
async function askCredentials(flags: { name?: string; passwordStdin?: boolean }): Promise<Credentials> {
  const name = flags.name ?? (await promptLine('security-admin name: ', { secret: false, noTty: 'no terminal to ask for the security-admin name: pass --name (the password then comes from stdin), or log in first' }));
  const password =
    flags.passwordStdin || !canPrompt()
      ? await readStdinSecret('password')
      : await promptSecret(`password for ${name}: `, 'no terminal to ask for the password: pipe it in with --password-stdin');
  return { name, password };
}

function output(format: OutputFormat, server: string, s: SealStatus, text: string): void {
  if (format !== 'text') printData({ server, ...s }, format);
  else process.stdout.write(text);
}
