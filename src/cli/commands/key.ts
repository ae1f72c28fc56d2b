import type { Command } from 'commander';
import { KeyhavenError } from '../../errors.js';
import type { KeyInfo } from '../../keys/key-store.js';
import { localActor } from '../actor.js';
import { formatKeyTable, printJson, type OutputFormat } from '../output.js';
import { storeOptions, withStore, type StoreFlags } from '../store-command.js';

function show(k: KeyInfo, output: OutputFormat, verb?: string): void {
  if (output === 'json') return printJson(k);
  if (verb) process.stdout.write(`key "${k.name}" ${verb}: current version ${k.currentVersion}, ${k.state}\n`);
  else {
    process.stdout.write(`name:     ${k.name}\nstate:    ${k.state}\ncurrent:  ${k.currentVersion}\ncreated:  ${k.createdAt}\nupdated:  ${k.updatedAt}\nversions:\n`);
    for (const v of k.versions) process.stdout.write(`  ${v.version}  ${v.state}  created ${v.createdAt}${v.destroyedAt ? `  destroyed ${v.destroyedAt}` : ''}\n`);
  }
}

export function registerKey(program: Command, run: (fn: () => Promise<number>) => void): void {
  const key = program.command('key').description('Manage keys in the embedded key store');
  const common = storeOptions;

  common(key.command('list').description('List keys and their versions')).action((flags: StoreFlags) =>
    run(() =>
      withStore(flags, async (es) => {
        const keys = await es.keys.list();
        if (flags.output === 'json') printJson(keys);
        else process.stdout.write(formatKeyTable(keys));
        return 0;
      }),
    ),
  );

  common(key.command('show <name>').description('Show one key (metadata only; key material is never exported)')).action((name: string, flags: StoreFlags) =>
    run(() => withStore(flags, async (es) => (show(await es.keys.get(name), flags.output), 0))),
  );

  common(key.command('create <name>').description('Create a new AES-256 key')).action((name: string, flags: StoreFlags) =>
    run(() => withStore(flags, async (es) => (show(await es.keys.create(name, localActor()), flags.output, 'created'), 0))),
  );

  common(key.command('rotate <name>').description('Add a new version; new encryptions use it, old versions still decrypt')).action((name: string, flags: StoreFlags) =>
    run(() => withStore(flags, async (es) => (show(await es.keys.rotate(name, localActor()), flags.output, 'rotated'), 0))),
  );

  common(key.command('disable <name>').description('Refuse all use of the key (plugin Status fails, so the apiserver stops writing)')).action((name: string, flags: StoreFlags) =>
    run(() => withStore(flags, async (es) => (show(await es.keys.setEnabled(name, false, localActor()), flags.output, 'disabled'), 0))),
  );

  common(key.command('enable <name>').description('Allow use of a disabled key again')).action((name: string, flags: StoreFlags) =>
    run(() => withStore(flags, async (es) => (show(await es.keys.setEnabled(name, true, localActor()), flags.output, 'enabled'), 0))),
  );

  common(
    key
      .command('destroy-version <name> <version>')
      .description('Erase one old version for good: its ciphertexts can never be decrypted again')
      .option('--yes', 'confirm: data under this version becomes unreadable'),
  ).action((name: string, version: string, flags: StoreFlags & { yes?: boolean }) =>
    run(async () => {
      if (!/^[1-9]\d{0,9}$/.test(version)) throw new KeyhavenError('invalid_argument', `version must be a positive integer, not ${JSON.stringify(version)}`);
      if (!flags.yes) throw new KeyhavenError('invalid_argument', 'destroying a key version is irreversible; re-run with --yes once every ciphertext under it has been re-encrypted');
      return withStore(flags, async (es) => (show(await es.keys.destroyVersion(name, Number(version), localActor()), flags.output, `version ${version} destroyed`), 0));
    }),
  );
}
