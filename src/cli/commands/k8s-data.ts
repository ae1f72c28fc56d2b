import { Option, type Command } from 'commander';
import { KeyhavenError } from '../../errors.js';
import { FAIL_ON, scanEtcd, scanFailures, type FailOn, type KeyIdStatus, type ScanResult } from '../../k8s/scan.js';
import { keyPrefix } from '../../k8s/etcd-key.js';
import { prepareOutDir, recoverObjects, type RecoverResult } from '../../k8s/recover.js';
import { checkEtcdFlags, ETCD_HELP, openEtcdFromFlags, type EtcdFlags } from '../k8s-sources.js';
import { formatTable, printable, printData, type OutputFormat } from '../output.js';
import { parseOutput } from '../store-command.js';
import { commaList, connOptions, SERVER_HELP, withClient, type RemoteFlags } from '../remote-command.js';
import { progressBar } from '../progress.js';

interface ScanFlags extends EtcdFlags, RemoteFlags {
  takenAt?: string;
  prefix: string;
  sensitive: string[];
  failOn: FailOn[];
  lookup: boolean;
  dataDir?: string;
  report?: string;
  pageSize: number;
}

const SCAN_HELP = `${ETCD_HELP}

Prints, per resource, how many values are stored in each form: unencrypted
(identity writes values unchanged, so they count here), aescbc, aesgcm,
secretbox (with the key name), KMS v1 and KMS v2 (with the provider name and,
for v2, the key_id). keyhaven's key_ids are mapped to key and version by the
key server (the connection of every server command; an app credential sees
only the keys it is granted) or, with --data-dir, an embedded key store;
--no-lookup skips that. It names the Secrets stored unencrypted and flags
key versions that are disabled, below the key's minimum decryption version,
scheduled for destruction or destroyed. It never prints a value.

--fail-on (exit code 1 when found): plaintext (a sensitive resource stored
unencrypted), retired (objects under a flagged key version), unknown (a KMS
v2 key_id the key server does not know), malformed (a value that claims a
form but does not parse). --report CLUSTER uploads the counts (never a
value or object name) to the key server for "keyhaven key retire-check".
${SERVER_HELP}`;

function failOnList(v: string): FailOn[] {
  const out = commaList(v);
  for (const x of out) if (!(FAIL_ON as readonly string[]).includes(x)) throw new KeyhavenError('invalid_argument', `--fail-on takes ${FAIL_ON.join(', ')}; not ${JSON.stringify(x)}`);
  return out as FailOn[];
}

function takenAtOf(v: string): string {
  const t = Date.parse(v);
  if (!/^\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:\d\d)$/.test(v) || Number.isNaN(t)) {
    throw new KeyhavenError('invalid_argument', `--taken-at must be an ISO 8601 time such as 2026-01-31T02:00:00Z, not ${JSON.stringify(v.slice(0, 40))}`);
  }
  if (t > Date.now() + 60_000) throw new KeyhavenError('invalid_argument', `--taken-at ${v} is in the future`);
  return new Date(t).toISOString();
}

function pageSizeOf(v: string): number {
  if (!/^\d{1,5}$/.test(v) || Number(v) < 1 || Number(v) > 10_000) throw new KeyhavenError('invalid_argument', `--page-size must be 1 to 10000, not ${JSON.stringify(v)}`);
  return Number(v);
}

function prefixOf(v: string): string {
  if (!/^\/[\x21-\x7e]{0,255}$/.test(v)) throw new KeyhavenError('invalid_argument', `--prefix must start with "/" and be printable, not ${JSON.stringify(v)}`);
  return v.replace(/\/+$/, '') || '/';
}

function etcdOptions(c: Command): Command {
  return c
    .option('--etcd <url>', 'a live etcd client URL, https://HOST:2379')
    .option('--cacert <file>', 'CA bundle that signed etcd\'s serving certificate')
    .option('--cert <file>', 'client certificate for etcd')
    .option('--key <file>', 'client key for etcd')
    .option('--snapshot <file>', 'an etcd snapshot file (etcdctl snapshot save) instead of a live etcd')
    .option('--prefix <prefix>', 'the apiserver\'s etcd prefix (--etcd-prefix)', prefixOf, '/registry')
    .addOption(new Option('--page-size <n>', 'keys read per etcd request').argParser(pageSizeOf).default(500));
}

async function lookupFor(flags: ScanFlags): Promise<((ids: readonly string[]) => Promise<readonly KeyIdStatus[]>) | undefined> {
  if (!flags.lookup) return undefined;
  if (flags.dataDir !== undefined) {
    const { openEmbeddedStore } = await import('../../keys/embedded-store.js');
    const { lookupKeyIds } = await import('../../keys/key-id-lookup.js');
    return async (ids) => {
      const s = await openEmbeddedStore({ dataDir: flags.dataDir!, create: false });
      try {
        return lookupKeyIds(s.storeId, await s.keys.list(), ids);
      } finally {
        await s.close();
      }
    };
  }
  return async (ids) =>
    withClient(flags, async (c) => {
      const out: KeyIdStatus[] = [];
      // The server takes up to 1000 per call.
      for (let i = 0; i < ids.length; i += 1000) {
        const r = await c.call<{ results: KeyIdStatus[] }>('POST', '/v1/key-ids/resolve', { body: { keyIds: ids.slice(i, i + 1000) } });
        out.push(...r.body.results.map((x) => ({ ...x, flags: x.flags ?? [] })));
      }
      return out;
    });
}

function printScan(r: ScanResult, failures: readonly string[]): void {
  process.stdout.write(`scanned ${r.objects} value(s) under ${printable(r.prefix)} in ${printable(r.source)}\n\n`);
  const rows = [['RESOURCE', 'FORM', 'PROVIDER/KEY', 'KEYHAVEN KEY', 'COUNT']];
  const byId = new Map(r.keyIds.map((k) => [k.keyId, k]));
  for (const x of r.rows) {
    const k = x.keyId === undefined ? undefined : byId.get(x.keyId);
    const kh = !k ? '-' : k.known ? `${k.key} v${k.version}${k.flags.length ? ` (${k.flags.join(', ')})` : ''}` : k.resolved ? 'not keyhaven\'s' : 'not looked up';
    rows.push([printable(x.resource), x.form, printable(x.detail), printable(kh), String(x.count)]);
  }
  if (rows.length > 1) process.stdout.write(formatTable(rows));
  if (r.plaintext.length > 0) {
    process.stdout.write(`\nstored unencrypted (${r.plaintext.length}):\n`);
    for (const p of r.plaintext) process.stdout.write(`  ${printable(p.resource)} ${printable(p.name)}\n`);
  }
  if (r.malformed.length > 0) {
    process.stdout.write(`\ndo not parse (${r.malformed.length}):\n`);
    for (const m of r.malformed) process.stdout.write(`  ${printable(m.key)}: ${m.form}: ${printable(m.reason)}\n`);
  }
  if (failures.length > 0) {
    process.stdout.write('\nFAILED:\n');
    for (const f of failures) process.stdout.write(`  ${printable(f)}\n`);
  }
}

/** What the key server keeps of a scan: counts only, never a name or value. */
function reportBody(r: ScanResult): unknown {
  const byForm = new Map<string, { form: string; provider?: string; count: number }>();
  for (const x of r.rows) {
    const provider = x.form === 'kms-v1' || x.form === 'kms-v2' ? x.detail : undefined;
    const id = `${x.form}\u0000${provider ?? ''}`;
    const e = byForm.get(id);
    if (e) e.count += x.count;
    else byForm.set(id, { form: x.form, ...(provider !== undefined ? { provider } : {}), count: x.count });
  }
  return {
    scannedAt: r.scannedAt,
    source: r.source.slice(0, 200),
    objects: r.objects,
    plaintext: r.plaintext.length,
    byKeyId: r.keyIds.map((k) => ({ keyId: k.keyId, count: k.count })),
    byForm: [...byForm.values()],
  };
}

interface RecoverFlags extends EtcdFlags {
  prefix: string;
  pageSize: number;
  out: string;
  pluginConfig?: string;
  dataDir?: string;
  keyName?: string;
  reason?: string;
  recovery?: string;
  resource: string[];
  namespace?: string[];
  provider?: string[];
  output: OutputFormat;
}

const RECOVER_HELP = `${ETCD_HELP}

Decrypts KMS v2 and v1 values exactly as kube-apiserver does (the seed or DEK
through the keys below, the per-object key, the etcd key as authenticated
data) and writes each object to --out (created 0700; files 0600): Secrets
and ConfigMaps (and any object stored as JSON) as YAML ready for "kubectl
apply -f", other protobuf-stored kinds as their decrypted stored bytes (.bin). A value that cannot be read is listed with the reason
and the rest still come out (exit code 1 when any failed).

The keys: --plugin-config FILE, any plugin.yaml (the key server, an embedded
store, Vault, Fortanix DSM, AWS KMS, PKCS#11), or --data-dir DIR for an
embedded key store. Through the key server a recovery is its own audited
operation: --reason is required and recorded; with a quorum on
recovery.start, the first run files an approval request and prints its id,
and once approved, run again with --recovery ID.`;

export function registerK8sData(k8s: Command, run: (fn: () => Promise<number>) => void): void {
  connOptions(
    etcdOptions(k8s.command('scan').description('Count how every value in etcd is stored (unencrypted, aescbc, KMS v1/v2 and which key version); never prints a value'))
      .option('--sensitive <resources>', 'resources that must not be stored unencrypted', commaList, ['secrets'])
      .option('--fail-on <conditions>', `exit 1 on: ${FAIL_ON.join(',')}`, failOnList, [] as FailOn[])
      .option('--no-lookup', 'do not ask the key server (or --data-dir) which key version a key_id is')
      .option('--data-dir <dir>', 'map key_ids with this embedded key store instead of the key server')
      .option('--report <cluster>', 'upload the counts to the key server as this cluster\'s latest scan')
      .option('--taken-at <time>', 'with --snapshot: when the snapshot was saved (ISO 8601); required with --report, since a copied file\'s date is later', takenAtOf)
      .addHelpText('after', SCAN_HELP),
  ).action((flags: ScanFlags) =>
    run(async () => {
      // retire-check trusts a report only if it is dated no later than etcd's contents: a snapshot's own time.
      if (flags.snapshot !== undefined && flags.report !== undefined && flags.takenAt === undefined) {
        throw new KeyhavenError('invalid_argument', '--report with --snapshot needs --taken-at TIME, when the snapshot was saved (the file\'s date is when it was last copied, which can be later)');
      }
      if (flags.takenAt !== undefined && flags.snapshot === undefined) throw new KeyhavenError('invalid_argument', '--taken-at goes with --snapshot; a live etcd is read as it is now');
      if (flags.failOn.includes('retired') && !flags.lookup) throw new KeyhavenError('invalid_argument', '--fail-on retired needs a key lookup; drop --no-lookup');
      const lookup = await lookupFor(flags);
      const source = await openEtcdFromFlags(flags);
      let result: ScanResult;
      if (flags.takenAt !== undefined && source.takenAt !== undefined && Date.parse(flags.takenAt) > Date.parse(source.takenAt) + 60_000) {
        await source.close();
        throw new KeyhavenError('invalid_argument', `--taken-at ${flags.takenAt} is after the snapshot file was last written (${source.takenAt})`);
      }
      const bar = progressBar('values', () => source.count(keyPrefix(flags.prefix)));
      try {
        result = await scanEtcd(source, { ...(flags.takenAt ? { at: flags.takenAt } : {}), prefix: flags.prefix, sensitive: flags.sensitive, pageSize: flags.pageSize, ...(lookup ? { lookup } : {}), onProgress: bar.update });
      } finally {
        bar.stop();
        await source.close();
      }
      if (flags.report !== undefined) {
        await withClient(flags, (c) => c.call('PUT', `/v1/clusters/${encodeURIComponent(flags.report!)}/scan-report`, { body: reportBody(result) }));
      }
      const failures = scanFailures(result, flags.failOn);
      if (flags.output !== 'text') printData({ ...result, failures }, flags.output);
      else printScan(result, failures);
      return failures.length > 0 ? 1 : 0;
    }),
  );

  etcdOptions(k8s.command('recover').description('Break glass: decrypt Secrets and ConfigMaps from etcd or a snapshot without kube-apiserver, into YAML files'))
    .requiredOption('--out <dir>', 'a new or empty folder for the recovered objects')
    .option('--plugin-config <file>', 'a plugin.yaml whose provider holds the keys')
    .option('--data-dir <dir>', 'an embedded key store that holds the keys')
    .option('--reason <text>', 'why (recorded in the key server\'s audit log; required through a key server)')
    .option('--recovery <id>', 'an approved recovery (after a quorum approved the request this command filed)')
    .option('--resource <resources>', 'resources to recover', commaList, ['secrets', 'configmaps'])
    .option('--namespace <namespaces>', 'only these namespaces', commaList)
    .option('--provider <names>', 'only values of these KMS provider names (the EncryptionConfiguration names)', commaList)
    .option('-o, --output <format>', 'text, json or yaml', parseOutput, 'text' as OutputFormat)
    .addHelpText('after', RECOVER_HELP)
    .action((flags: RecoverFlags) =>
      run(async () => {
        if ((flags.pluginConfig === undefined) === (flags.dataDir === undefined)) throw new KeyhavenError('invalid_argument', 'give exactly one of --plugin-config FILE or --data-dir DIR');
        // What can be checked before the recovery opens is: a run that cannot start leaves nothing open.
        checkEtcdFlags(flags);
        prepareOutDir(flags.out);
        const { openRecoveryKeys } = await import('../k8s-recovery-keys.js');
        const keys = await openRecoveryKeys(flags);
        if (keys.pending) return keys.pending();
        let result: RecoverResult | undefined;
        try {
          const source = await openEtcdFromFlags(flags);
          const bar = progressBar('values', () => source.count(keyPrefix(flags.prefix)));
          try {
            result = await recoverObjects(source, keys.keys, {
              prefix: flags.prefix,
              pageSize: flags.pageSize,
              outDir: flags.out,
              resources: flags.resource,
              ...(flags.namespace ? { namespaces: flags.namespace } : {}),
              ...(flags.provider ? { providers: flags.provider } : {}),
              onProgress: bar.update,
            });
          } finally {
            bar.stop();
            await source.close();
          }
        } finally {
          // Closed on success and on failure alike: an opened recovery never outlives its run.
          await keys.finish(result ? { objects: result.written + result.raw.length, failed: result.failed.length } : {});
          await keys.close();
        }
        if (flags.output !== 'text') printData(result, flags.output);
        else {
          process.stdout.write(`read ${result.read} value(s) from ${printable(result.source)}; wrote ${result.written} object(s) to ${flags.out}${result.raw.length ? `, ${result.raw.length} as stored bytes (.bin)` : ''}; ${result.unwraps} key unwrap(s)\n`);
          if (result.failed.length > 0) {
            process.stdout.write(`\nnot recovered (${result.failed.length}):\n`);
            for (const f of result.failed) process.stdout.write(`  ${printable(f.key)}: ${printable(f.reason)}\n`);
          }
        }
        return result.failed.length > 0 ? 1 : 0;
      }),
    );
}
