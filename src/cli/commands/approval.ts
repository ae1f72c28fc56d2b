import type { Command } from 'commander';
import { KeyhavenError, ERROR_CODES, type ErrorCode } from '../../errors.js';
import { formatTable, printData, relativeTime } from '../output.js';
import { connOptions, seg, SERVER_HELP, withClient, type ApprovalView, type RemoteFlags } from '../remote-command.js';

const STATES = ['pending', 'approved', 'executed', 'failed', 'denied', 'expired'];

function paramsText(p: Record<string, unknown>): string {
  return Object.entries(p)
    .map(([k, v]) => `${k}=${Array.isArray(v) ? v.join('+') : typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v)}`)
    .join(' ');
}

/** The outcome of a decision; an approved request that failed to execute is a failure of this command. */
function report(a: ApprovalView, flags: RemoteFlags, verb: string): number {
  const failed = a.state === 'failed';
  const errCode = (a.result as { error?: unknown } | null)?.error;
  if (flags.output !== 'text') printData(a, flags.output);
  else if (a.state === 'pending') process.stdout.write(`approval request ${a.id} ${verb}: ${a.approvals.length} of ${a.required} approvals\n`);
  else if (!failed) {
    process.stdout.write(`approval request ${a.id} ${verb}: ${a.state} (${a.operation} ${paramsText(a.params)})\n`);
    // A rotated app key waits on the server for its requester alone.
    if (a.state === 'executed' && (a.result as { collect?: unknown } | null)?.collect) process.stdout.write(`${a.requester} collects the new API key with: keyhaven approval collect ${a.id}\n`);
  }
  if (!failed) return 0;
  const code: ErrorCode = typeof errCode === 'string' && (ERROR_CODES as readonly string[]).includes(errCode) ? (errCode as ErrorCode) : 'internal';
  throw new KeyhavenError(code, `approval request ${a.id} was approved but ${a.operation} failed: ${String(errCode ?? 'unknown error')}`);
}

export function registerApproval(program: Command, run: (fn: () => Promise<number>) => void): void {
  const approval = program.command('approval').description('List and decide approval requests for operations under a quorum policy').addHelpText('after', SERVER_HELP);

  connOptions(approval.command('list').description('List approval requests').option('--state <state>', `only requests in this state: ${STATES.join(', ')}`)).action(
    (flags: RemoteFlags & { state?: string }) =>
      run(() =>
        withClient(flags, async (c) => {
          if (flags.state !== undefined && !STATES.includes(flags.state)) throw new KeyhavenError('invalid_argument', `--state must be one of ${STATES.join(', ')}`);
          const { approvals } = (await c.call<{ approvals: ApprovalView[] }>('GET', '/v1/approvals', { query: { state: flags.state } })).body;
          if (flags.output !== 'text') printData({ approvals }, flags.output);
          else if (approvals.length === 0) process.stdout.write(`no${flags.state ? ` ${flags.state}` : ''} approval requests\n`);
          else {
            const rows = [['ID', 'STATE', 'OPERATION', 'PARAMS', 'REQUESTER', 'APPROVALS', 'EXPIRES']];
            for (const a of approvals) rows.push([a.id, a.state, a.operation, paramsText(a.params), a.requester, `${a.approvals.length}/${a.required}`, relativeTime(a.expiresAt)]);
            process.stdout.write(formatTable(rows));
          }
          return 0;
        }),
      ),
  );

  connOptions(approval.command('show <id>').description('Show one approval request')).action((id: string, flags: RemoteFlags) =>
    run(() =>
      withClient(flags, async (c) => {
        const a = (await c.call<ApprovalView>('GET', `/v1/approvals/${seg(id)}`)).body;
        if (flags.output !== 'text') printData(a, flags.output);
        else {
          const lines = [
            `id:         ${a.id}`,
            `operation:  ${a.operation} ${paramsText(a.params)}`,
            `requester:  ${a.requester}`,
            ...(a.approverRoles?.length ? [`approvers:  ${a.approverRoles.join(' or ')} (not the requester${a.operation === 'admin.add' || a.operation === 'user.reset-password' ? ', nor the user it is about' : ''})`] : []),
            `state:      ${a.state}`,
            `approvals:  ${a.approvals.length} of ${a.required}${a.approvals.length ? ` (${a.approvals.map((x) => `${x.name} at ${x.at}`).join(', ')})` : ''}`,
            `created:    ${a.createdAt}`,
            `expires:    ${a.expiresAt}`,
            ...(a.decidedAt ? [`decided:    ${a.decidedAt}`] : []),
            ...(a.result !== null && a.result !== undefined ? [`result:     ${JSON.stringify(a.result)}`] : []),
          ];
          process.stdout.write(lines.join('\n') + '\n');
        }
        return 0;
      }),
    ),
  );

  connOptions(approval.command('approve <id>').description('Approve a request (not your own); the last approval needed carries it out')).action(
    (id: string, flags: RemoteFlags) =>
      run(() => withClient(flags, async (c) => report((await c.call<ApprovalView>('POST', `/v1/approvals/${seg(id)}/approve`, { body: {} })).body, flags, 'approved'))),
  );

  connOptions(approval.command('collect <id>').description('Collect, once, the new API key of an approved app rotate-key you requested')).action(
    (id: string, flags: RemoteFlags) =>
      run(() =>
        withClient(flags, async (c) => {
          const { apiKey } = (await c.call<{ apiKey: string }>('POST', `/v1/approvals/${seg(id)}/collect`, { body: {} })).body;
          if (flags.output !== 'text') printData({ approval: id, apiKey }, flags.output);
          else process.stdout.write(`new API key from approval request ${id} (shown once; store it now):\n${apiKey}\n`);
          return 0;
        }),
      ),
  );

  connOptions(approval.command('deny <id>').description('Deny a pending request (its requester may withdraw it the same way)')).action((id: string, flags: RemoteFlags) =>
    run(() => withClient(flags, async (c) => report((await c.call<ApprovalView>('POST', `/v1/approvals/${seg(id)}/deny`, { body: {} })).body, flags, 'denied'))),
  );
}
