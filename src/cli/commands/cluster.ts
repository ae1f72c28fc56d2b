import type { Command } from 'commander';
import { formatTable, printData, relativeTime } from '../output.js';
import { connOptions, SERVER_HELP, withClient, type RemoteFlags } from '../remote-command.js';

/** One cluster node's plugin report (GET /v1/clusters). */
export interface ClusterView {
  app: string;
  cluster: string;
  node: string;
  key: string;
  keyId: string;
  keyVersion: number;
  pluginVersion: string;
  lastSuccess: string | null;
  lastSeen: string;
  firstSeen: string;
  source: string;
}

const CLUSTER_HELP = `
Each KMS plugin using the key server reports its cluster, node, key and
key version at most every reportInterval (default 60 s) and whenever its
key_id changes. Before raising a key's minimum decryption version to N, check
that no cluster still writes with an older version:
  keyhaven cluster list --key K
A node whose LAST-SEEN is old has stopped reporting (removed, or down).
${SERVER_HELP}`;

export function registerCluster(program: Command, run: (fn: () => Promise<number>) => void): void {
  const cluster = program
    .command('cluster')
    .description('See which clusters\' KMS plugins use which keys and versions (security-admin, key-admin, auditor)')
    .addHelpText('after', CLUSTER_HELP);

  connOptions(
    cluster
      .command('list')
      .description('List the cluster nodes whose plugins reported, with the key version each writes with')
      .option('--key <name>', 'only plugins using this key')
      .option('--app <name>', 'only plugins of this app')
      .addHelpText('after', CLUSTER_HELP),
  ).action((flags: RemoteFlags & { key?: string; app?: string }) =>
    run(() =>
      withClient(flags, async (c) => {
        const r = await c.call<{ clusters: ClusterView[] }>('GET', '/v1/clusters', { query: { key: flags.key, app: flags.app } });
        if (flags.output !== 'text') printData(r.body, flags.output);
        else if (r.body.clusters.length === 0) process.stdout.write('no cluster has reported\n');
        else {
          const rows = [['APP', 'CLUSTER', 'NODE', 'KEY', 'VERSION', 'PLUGIN', 'LAST-SEEN', 'LAST-SUCCESS']];
          for (const x of r.body.clusters) rows.push([x.app, x.cluster, x.node, x.key, `v${x.keyVersion}`, x.pluginVersion || '-', relativeTime(x.lastSeen), relativeTime(x.lastSuccess)]);
          process.stdout.write(formatTable(rows));
        }
        return 0;
      }),
    ),
  );
}
