import type { Command } from 'commander';
import { KeyhavenError } from '../../errors.js';
import { parseDurationFlag } from '../duration.js';
import { formatTable, printData } from '../output.js';
import { commaList, connOptions, namingFlags, reportApprovalFiled, SERVER_HELP, withClient, type ApprovalView, type RemoteFlags } from '../remote-command.js';

interface Policy {
  required: number;
  operations: string[];
  ttlS: number;
}

const OPERATIONS = ['key.destroy', 'key.disable', 'key.policy', 'app.grant', 'app.rotate-key', 'admin.add', 'admin.remove', 'quorum.set', 'recovery.start'];

function printPolicy(p: Policy, flags: RemoteFlags): void {
  if (flags.output !== 'text') return printData(p, flags.output);
  if (p.required === 0) process.stdout.write('no quorum: guarded operations act at once\n');
  else process.stdout.write(`${p.required} approval${p.required === 1 ? '' : 's'} from other admins, requests expire after ${p.ttlS} s\n`);
  process.stdout.write(formatTable([['OPERATION', 'GUARDED'], ...OPERATIONS.map((o) => [o, p.required > 0 && p.operations.includes(o) ? 'yes' : 'no'])]));
}

export function registerQuorum(program: Command, run: (fn: () => Promise<number>) => void): void {
  const quorum = program.command('quorum').description('Show or change the quorum (M-of-N approval) policy').addHelpText('after', SERVER_HELP);

  connOptions(quorum.command('show').description('Show the quorum policy')).action((flags: RemoteFlags) =>
    run(() =>
      withClient(flags, async (c) => {
        printPolicy((await c.call<Policy>('GET', '/v1/sys/quorum')).body, flags);
        return 0;
      }),
    ),
  );

  connOptions(
    quorum
      .command('set')
      .description('Change the policy (security-admin); once a quorum applies to quorum.set, this itself needs approval')
      .requiredOption('--required <n>', 'approvals needed from admins other than the requester (0 turns approvals off)')
      .option('--operations <list>', `comma list of guarded operations (default all: ${OPERATIONS.join(',')})`)
      .option('--ttl <duration>', 'how long a request stays open, e.g. 24h or 1h30m (a bare number is seconds)', '24h'),
  ).action((flags: RemoteFlags & { required: string; operations?: string; ttl: string }) =>
    run(() =>
      withClient(flags, async (c) => {
        if (!/^\d{1,2}$/.test(flags.required)) throw new KeyhavenError('invalid_argument', `--required must be a number from 0 to 16, not ${JSON.stringify(flags.required)}`);
        // A bare number stays seconds, as before durations were taken.
        const ttlMs = /^\d{1,8}$/.test(flags.ttl) ? Number(flags.ttl) * 1000 : parseDurationFlag('--ttl', flags.ttl, { minMs: 1000 });
        if (ttlMs % 1000 !== 0) throw new KeyhavenError('invalid_argument', `--ttl must be whole seconds, not ${JSON.stringify(flags.ttl)}`);
        const body = { required: Number(flags.required), operations: flags.operations === undefined ? OPERATIONS : commaList(flags.operations), ttlS: ttlMs / 1000 };
        const r = await namingFlags({ required: '--required', operations: '--operations', ttlS: '--ttl' }, () => c.call<Policy | { approval: ApprovalView }>('PUT', '/v1/sys/quorum', { body }));
        if (r.status === 202) return reportApprovalFiled(r.body as { approval: ApprovalView }, flags.output);
        printPolicy(r.body as Policy, flags);
        return 0;
      }),
    ),
  );
}
