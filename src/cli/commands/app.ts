import type { Command } from 'commander';
import { printData, formatTable, relativeTime } from '../output.js';
import { commaList, connOptions, reportApprovalFiled, seg, SERVER_HELP, withClient, type ApprovalView, type RemoteFlags } from '../remote-command.js';

export interface PrincipalView {
  name: string;
  kind: 'user' | 'app';
  roles: string[];
  state: string;
  description: string | null;
  certFingerprint: string | null;
  lockedUntil: string | null;
  createdAt: string;
  breakGlass?: true;
  grants?: Array<{ key: string; operations: string[]; createdAt: string; createdBy: string }>;
  clusters?: Array<{ cluster: string; node: string; key: string; keyVersion: number; keyId: string; pluginVersion: string; lastSuccess: string | null; lastSeen: string }>;
}

function printApiKey(app: string, apiKey: string): void {
  process.stdout.write(`API key for app "${app}" (shown once; store it now):\n${apiKey}\n`);
}

export function registerApp(program: Command, run: (fn: () => Promise<number>) => void): void {
  const app = program.command('app').description('Manage apps (workloads such as a cluster\'s KMS plugin; security-admin) and their key grants (key-admin)').addHelpText('after', SERVER_HELP);

  connOptions(
    app
      .command('create <name>')
      .description('Create an app; its API key is printed once')
      .option('--description <text>', 'what the app is, e.g. "prod cluster eu-1"')
      .option('--cert-fingerprint <hex>', 'SHA-256 fingerprint (hex) of a client certificate the app may use instead of its API key (mTLS)')
      .option('--break-glass', 'a break-glass app for reading backups (keyhaven k8s recover): it decrypts only inside an open, audited recovery and never encrypts'),
  ).action((name: string, flags: RemoteFlags & { description?: string; certFingerprint?: string; breakGlass?: boolean }) =>
    run(() =>
      withClient(flags, async (c) => {
        const body = {
          name,
          ...(flags.description !== undefined ? { description: flags.description } : {}),
          // Accepts the colon-separated form openssl prints.
          ...(flags.certFingerprint !== undefined ? { certFingerprint: flags.certFingerprint.replace(/:/g, '').toLowerCase() } : {}),
          ...(flags.breakGlass === true ? { breakGlass: true } : {}),
        };
        const r = await c.call<{ app: PrincipalView; apiKey: string }>('POST', '/v1/apps', { body });
        if (flags.output !== 'text') printData(r.body, flags.output);
        else {
          process.stdout.write(`app "${r.body.app.name}" created${r.body.app.breakGlass ? ' (break-glass: decrypts only inside an open recovery)' : ''}\n`);
          printApiKey(r.body.app.name, r.body.apiKey);
        }
        return 0;
      }),
    ),
  );

  connOptions(app.command('list').description('List apps, their grants, and the cluster nodes their KMS plugins reported from')).action((flags: RemoteFlags) =>
    run(() =>
      withClient(flags, async (c) => {
        const { apps } = (await c.call<{ apps: PrincipalView[] }>('GET', '/v1/apps')).body;
        if (flags.output !== 'text') printData({ apps }, flags.output);
        else if (apps.length === 0) process.stdout.write('no apps\n');
        else {
          const rows = [['NAME', 'STATE', 'GRANTS', 'CERT', 'DESCRIPTION']];
          for (const a of apps) {
            const grants = (a.grants ?? []).map((g) => `${g.key}:${g.operations.join('+')}`).join(' ') || '-';
            rows.push([a.name, a.state, grants, a.certFingerprint ? `${a.certFingerprint.slice(0, 16)}…` : '-', a.description ?? '']);
          }
          // Each app's line, then one indented line per cluster node its plugins reported from.
          const lines = formatTable(rows).split('\n');
          const out = [lines[0]!];
          apps.forEach((a, i) => {
            out.push(lines[i + 1]!);
            for (const c of a.clusters ?? []) out.push(`    cluster ${c.cluster}  node ${c.node}  key ${c.key} v${c.keyVersion}  last seen ${relativeTime(c.lastSeen)}`);
          });
          process.stdout.write(`${out.join('\n')}\n`);
        }
        return 0;
      }),
    ),
  );

  connOptions(
    app
      .command('grant <app> <key>')
      .description('Grant an app crypto operations on a key, replacing its earlier grant on that key (key-admin; may need approval)')
      .requiredOption('--ops <list>', 'comma list of encrypt, decrypt, rewrap, datakey'),
  ).action((appName: string, keyName: string, flags: RemoteFlags & { ops: string }) =>
    run(() =>
      withClient(flags, async (c) => {
        const r = await c.call<{ key: string; operations: string[] } | { approval: ApprovalView }>('PUT', `/v1/apps/${seg(appName)}/grants/${seg(keyName)}`, {
          body: { operations: commaList(flags.ops) },
        });
        if (r.status === 202) return reportApprovalFiled(r.body as { approval: ApprovalView }, flags.output);
        const g = r.body as { key: string; operations: string[] };
        if (flags.output !== 'text') printData(g, flags.output);
        else process.stdout.write(`app "${appName}" may now ${g.operations.join(', ')} with key "${g.key}"\n`);
        return 0;
      }),
    ),
  );

  connOptions(app.command('revoke <app> <key>').description('Revoke an app\'s grant on a key (key-admin; never delayed)')).action((appName: string, keyName: string, flags: RemoteFlags) =>
    run(() =>
      withClient(flags, async (c) => {
        await c.call('DELETE', `/v1/apps/${seg(appName)}/grants/${seg(keyName)}`);
        if (flags.output !== 'text') printData({ app: appName, key: keyName, revoked: true }, flags.output);
        else process.stdout.write(`app "${appName}" may no longer use key "${keyName}"\n`);
        return 0;
      }),
    ),
  );

  connOptions(
    app
      .command('rotate-key <app>')
      .description('Issue a new API key for an app (printed once); the old one stops working then. For an app holding grants a key-admin approves first (and under a quorum policy): you collect the key once approved, the old key works until then'),
  ).action((appName: string, flags: RemoteFlags) =>
    run(() =>
      withClient(flags, async (c) => {
        const r = await c.call<{ apiKey: string } | { approval: ApprovalView }>('POST', `/v1/apps/${seg(appName)}/rotate-key`, { body: {} });
        if (r.status === 202) {
          const filed = r.body as { approval: ApprovalView };
          reportApprovalFiled(filed, flags.output);
          if (flags.output === 'text') process.stdout.write(`once approved, collect the new key (once) with: keyhaven approval collect ${filed.approval.id}\n`);
          return 0;
        }
        const { apiKey } = r.body as { apiKey: string };
        if (flags.output !== 'text') printData({ app: appName, apiKey }, flags.output);
        else printApiKey(appName, apiKey);
        return 0;
      }),
    ),
  );
}
