import type { Command } from 'commander';
import { KeyhavenError } from '../../errors.js';
import type { KeyInfo } from '../../keys/key-store.js';
import { localActor } from '../actor.js';
import type { ApiClient, ConnectionFlags } from '../client.js';
import { compactDuration, parseDurationFlag } from '../duration.js';
import { formatKeyTable, printData, type OutputFormat } from '../output.js';
import { connOptions, namingFlags, positiveInt, reportApprovalFiled, seg, SERVER_HELP, withClient, type ApprovalView } from '../remote-command.js';
import { actsLocally, storeOptions, withStore, type StoreFlags } from '../store-command.js';

// Two targets, one command: the key server (the default) or the plugin's
// embedded key store folder. The embedded store has no scheduler, so
// rotation periods and scheduled destruction exist only on the server, and
// destroy-version (erasing one version at once) only on the embedded store.

type KeyFlags = StoreFlags & ConnectionFlags;

/** The server's key view (GET /v1/keys/{name}). */
interface KeyView {
  name: string;
  state: string;
  currentVersion: number;
  minDecryptionVersion: number;
  rotationPeriod: string | null;
  nextRotationAt: string | null;
  destroyAt: string | null;
  createdAt: string;
  updatedAt: string;
  versions: Array<{ version: number; state: string; createdAt: string; destroyedAt: string | null }>;
}

/** GET /v1/keys/{name}/versions/{version}/retire-check. */
interface RetireCheck {
  key: string;
  version: number;
  keyId: string;
  safe: boolean;
  reasons: string[];
  clusters: Array<{ cluster: string; node: string; keyVersion: number; lastSeen: string }>;
  objects: Array<{ cluster: string; scannedAt: string; count: number }>;
  unscanned: string[];
  unreportedApps: string[];
}

const MODE_HELP = `
Where a key command acts:
  --data-dir DIR (or --root-key-file) given   the embedded key store in DIR (what the plugin's embedded mode uses)
  --server URL given                          the key server
  $KEYHAVEN_DATA_DIR set                      the embedded key store in that folder
  otherwise                                   the key server
policy, destroy and cancel-destroy need the key server; destroy-version needs the embedded store.
${SERVER_HELP}`;

function keyOptions(c: Command): Command {
  return connOptions(storeOptions(c, { dataDir: 'act on the embedded key store in this folder instead of the key server' }), { output: false });
}

function showLocal(k: KeyInfo, output: OutputFormat, verb?: string): void {
  if (output !== 'text') return printData(k, output);
  if (verb) process.stdout.write(`key "${k.name}" ${verb}: current version ${k.currentVersion}, ${k.state}\n`);
  else {
    process.stdout.write(`name:     ${k.name}\nstate:    ${k.state}\ncurrent:  ${k.currentVersion}\ncreated:  ${k.createdAt}\nupdated:  ${k.updatedAt}\nversions:\n`);
    for (const v of k.versions) process.stdout.write(`  ${v.version}  ${v.state}  created ${v.createdAt}${v.destroyedAt ? `  destroyed ${v.destroyedAt}` : ''}\n`);
  }
}

function showRemote(k: KeyView, output: OutputFormat, verb?: string): void {
  if (output !== 'text') return printData(k, output);
  if (verb) {
    process.stdout.write(`key "${k.name}" ${verb}: current version ${k.currentVersion}, ${k.state}${k.destroyAt ? `, material erased at ${k.destroyAt}` : ''}\n`);
    return;
  }
  const rotation = k.rotationPeriod ? `every ${k.rotationPeriod}${k.nextRotationAt ? `, next at ${k.nextRotationAt}` : ''}` : 'manual';
  const lines = [
    `name:                    ${k.name}`,
    `state:                   ${k.state}`,
    `current version:         ${k.currentVersion}`,
    `min decryption version:  ${k.minDecryptionVersion}`,
    `rotation:                ${rotation}`,
    ...(k.destroyAt ? [`erased at:               ${k.destroyAt}`] : []),
    `created:                 ${k.createdAt}`,
    `updated:                 ${k.updatedAt}`,
    'versions:',
    ...k.versions.map((v) => `  ${v.version}  ${v.state}  created ${v.createdAt}${v.destroyedAt ? `  destroyed ${v.destroyedAt}` : ''}`),
  ];
  process.stdout.write(lines.join('\n') + '\n');
}

/** Runs a key call on the server; a 202 (approval needed) is reported instead of the key. */
/** Body fields by the flag that sets them, for the server's refusals. */
const KEY_FLAGS = { rotationPeriod: '--rotation-period', minDecryptionVersion: '--min-decryption-version', pendingDays: '--pending-days' };

async function remoteKey(c: ApiClient, flags: KeyFlags, method: string, path: string, verb: string, body?: unknown): Promise<number> {
  const r = await namingFlags(KEY_FLAGS, () => c.call<KeyView | { approval: ApprovalView }>(method, path, { body }));
  if (r.status === 202) return reportApprovalFiled(r.body as { approval: ApprovalView }, flags.output);
  showRemote(r.body as KeyView, flags.output, verb);
  return 0;
}

function serverOnly(what: string): KeyhavenError {
  return new KeyhavenError('invalid_argument', `${what} needs the key server (the embedded store has no scheduler); drop --data-dir / unset KEYHAVEN_DATA_DIR`);
}

export function registerKey(program: Command, run: (fn: () => Promise<number>) => void): void {
  const key = program.command('key').description('Manage keys on the key server, or in an embedded key store with --data-dir').addHelpText('after', MODE_HELP);

  /** One subcommand acting on the server or the embedded store. */
  const both = <A extends unknown[]>(
    c: Command,
    local: (flags: KeyFlags, ...args: A) => Promise<number>,
    remote: (c: ApiClient, flags: KeyFlags, ...args: A) => Promise<number>,
  ) =>
    keyOptions(c)
      .addHelpText('after', MODE_HELP)
      .action((...all: unknown[]) => {
        // commander passes the positional arguments, then the options, then the command.
        const flags = all[all.length - 2] as KeyFlags;
        const args = all.slice(0, -2) as A;
        run(() => (actsLocally(flags) ? local(flags, ...args) : withClient(flags, (c) => remote(c, flags, ...args))));
      });

  both(
    key.command('list').description('List keys and their versions'),
    (flags) =>
      withStore(flags, async (es) => {
        const keys = await es.keys.list();
        if (flags.output !== 'text') printData({ keys }, flags.output);
        else process.stdout.write(formatKeyTable(keys));
        return 0;
      }),
    async (c, flags) => {
      const { keys } = (await c.call<{ keys: KeyView[] }>('GET', '/v1/keys')).body;
      if (flags.output !== 'text') printData({ keys }, flags.output);
      else if (keys.length === 0) process.stdout.write('no keys\n');
      else process.stdout.write(formatKeyTable(keys, { header: 'ROTATION', cell: (k) => k.rotationPeriod ?? 'manual' }));
      return 0;
    },
  );

  both(
    key.command('show <name>').description('Show one key (metadata only; key material is never exported)'),
    (flags, name: string) => withStore(flags, async (es) => (showLocal(await es.keys.get(name), flags.output), 0)),
    async (c, flags, name: string) => (showRemote((await c.call<KeyView>('GET', `/v1/keys/${seg(name)}`)).body, flags.output), 0),
  );

  both(
    key
      .command('create <name>')
      .description('Create a new AES-256 key')
      .option('--rotation-period <period>', 'rotate automatically, e.g. 30d, 12h (key server only)'),
    (flags: KeyFlags & { rotationPeriod?: string }, name: string) => {
      if (flags.rotationPeriod !== undefined) return Promise.reject(serverOnly('--rotation-period'));
      return withStore(flags, async (es) => (showLocal(await es.keys.create(name, localActor()), flags.output, 'created'), 0));
    },
    (c, flags: KeyFlags & { rotationPeriod?: string }, name: string) =>
      remoteKey(c, flags, 'POST', '/v1/keys', 'created', { name, ...(flags.rotationPeriod !== undefined ? { rotationPeriod: periodOrNull(flags.rotationPeriod) } : {}) }),
  );

  both(
    key.command('rotate <name>').description('Add a new version; new encryptions use it, old versions still decrypt'),
    (flags, name: string) => withStore(flags, async (es) => (showLocal(await es.keys.rotate(name, localActor()), flags.output, 'rotated'), 0)),
    (c, flags, name: string) => remoteKey(c, flags, 'POST', `/v1/keys/${seg(name)}/rotate`, 'rotated'),
  );

  both(
    key.command('disable <name>').description('Refuse new encryptions with the key (plugin Status fails, so the apiserver stops writing); may need approval'),
    (flags, name: string) => withStore(flags, async (es) => (showLocal(await es.keys.setEnabled(name, false, localActor()), flags.output, 'disabled'), 0)),
    (c, flags, name: string) => remoteKey(c, flags, 'POST', `/v1/keys/${seg(name)}/disable`, 'disabled'),
  );

  both(
    key.command('enable <name>').description('Allow use of a disabled key again (on the server: needs the approvals a disable needs)'),
    (flags, name: string) => withStore(flags, async (es) => (showLocal(await es.keys.setEnabled(name, true, localActor()), flags.output, 'enabled'), 0)),
    (c, flags, name: string) => remoteKey(c, flags, 'POST', `/v1/keys/${seg(name)}/enable`, 'enabled'),
  );

  both<[string]>(
    key
      .command('policy <name>')
      .description('Set automatic rotation and the oldest version that may still decrypt (key server; may need approval)')
      .option('--rotation-period <period>', 'e.g. 30d, 12h, 90m; "off" for manual rotation only')
      .option('--min-decryption-version <n>', 'versions below this no longer decrypt'),
    () => Promise.reject(serverOnly('key policy')),
    (c, flags: KeyFlags & { rotationPeriod?: string; minDecryptionVersion?: string }, name: string) => {
      const body: Record<string, unknown> = {};
      if (flags.rotationPeriod !== undefined) body.rotationPeriod = periodOrNull(flags.rotationPeriod);
      if (flags.minDecryptionVersion !== undefined) body.minDecryptionVersion = positiveInt('--min-decryption-version', flags.minDecryptionVersion);
      if (Object.keys(body).length === 0) throw new KeyhavenError('invalid_argument', 'give --rotation-period and/or --min-decryption-version');
      return remoteKey(c, flags, 'PUT', `/v1/keys/${seg(name)}/policy`, 'policy updated', body);
    },
  );

  both<[string]>(
    key
      .command('destroy <name>')
      .description('Schedule destruction of every version; the key stops working at once, its material is erased after the pending window (key server; may need approval)')
      .option('--pending-days <days>', 'days before the material is erased (default: the server\'s keys.destroyPending)')
      .option('--yes', 'confirm: once the window has passed, data under this key is unreadable for good'),
    () => Promise.reject(serverOnly('key destroy (to erase one old version at once use destroy-version)')),
    (c, flags: KeyFlags & { pendingDays?: string; yes?: boolean }, name: string) => {
      let pendingDays: number | undefined;
      if (flags.pendingDays !== undefined) {
        if (!/^\d{1,3}(\.\d{1,6})?$/.test(flags.pendingDays)) throw new KeyhavenError('invalid_argument', `--pending-days must be a number of days, not ${JSON.stringify(flags.pendingDays)}`);
        pendingDays = Number(flags.pendingDays);
      }
      if (!flags.yes) throw new KeyhavenError('invalid_argument', 'destroying a key is irreversible once the pending window has passed; re-run with --yes');
      return remoteKey(c, flags, 'POST', `/v1/keys/${seg(name)}/destroy`, 'scheduled for destruction', pendingDays !== undefined ? { pendingDays } : {});
    },
  );

  both<[string]>(
    key.command('cancel-destroy <name>').description('Cancel a scheduled destruction; the key comes back disabled (key server; needs the approvals a destroy needs)'),
    () => Promise.reject(serverOnly('key cancel-destroy')),
    (c, flags, name: string) => remoteKey(c, flags, 'POST', `/v1/keys/${seg(name)}/cancel-destroy`, 'destruction cancelled'),
  );

  connOptions(
    key
      .command('retire-check <name>')
      .description('Whether a version can be retired (--min-decryption-version raised past it): no cluster reports it and the latest etcd scans hold no object under it (key server)')
      .requiredOption('--version <n>', 'the key version to check')
      .addHelpText('after', `
Exit status: 0 when the version is safe to retire, 1 when it is not (or when
that is unknown: a cluster never scanned, or scanned before it moved to a newer
version; run keyhaven k8s scan and upload the report first); other codes as
for every command (2 bad input, 3 no such key or version, 5 not allowed).
${SERVER_HELP}`),
  ).action((name: string, flags: ConnectionFlags & { output: OutputFormat; version: string }) =>
    run(() =>
      withClient(flags, async (c) => {
        const version = positiveInt('--version', flags.version);
        const r = (await c.call<RetireCheck>('GET', `/v1/keys/${seg(name)}/versions/${version}/retire-check`)).body;
        if (flags.output !== 'text') printData(r, flags.output);
        else {
          process.stdout.write(`key "${r.key}" version ${r.version}: ${r.safe ? 'safe to retire' : 'NOT safe to retire'}\n`);
          for (const reason of r.reasons) process.stdout.write(`  - ${reason}\n`);
        }
        return r.safe ? 0 : 1;
      }),
    ),
  );

  storeOptions(
    key
      .command('destroy-version <name> <version>')
      .description('Erase one old version for good: its ciphertexts can never be decrypted again (embedded store only)')
      .option('--yes', 'confirm: data under this version becomes unreadable'),
  ).action((name: string, version: string, flags: StoreFlags & { yes?: boolean }) =>
    run(async () => {
      if (!/^[1-9]\d{0,9}$/.test(version)) throw new KeyhavenError('invalid_argument', `version must be a positive integer, not ${JSON.stringify(version)}`);
      if (!flags.yes) throw new KeyhavenError('invalid_argument', 'destroying a key version is irreversible; re-run with --yes once every ciphertext under it has been re-encrypted');
      return withStore(flags, async (es) => (showLocal(await es.keys.destroyVersion(name, Number(version), localActor()), flags.output, `version ${version} destroyed`), 0));
    }),
  );
}

function periodOrNull(v: string): string | null {
  if (v === 'off' || v === 'none') return null;
  const ms = parseDurationFlag('--rotation-period', v, { minMs: 1000 });
  // The server takes one whole unit of at least a second: "1h30m" is sent as "90m".
  if (ms % 1000 !== 0) throw new KeyhavenError('invalid_argument', `--rotation-period must be whole seconds, not ${JSON.stringify(v)}`);
  return compactDuration(ms);
}
