import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Command } from 'commander';
import { DEFAULT_KEY_NAME } from '../../config/plugin-config.js';
import { KeyhavenError } from '../../errors.js';
import { openEmbeddedStore } from '../../keys/embedded-store.js';
import { localActor } from '../actor.js';
import { defaultDataDir } from '../data-dir.js';
import { printData } from '../output.js';
import { storeOptions, type StoreFlags } from '../store-command.js';

/** Creates the store if absent and makes sure the key exists; idempotent. */
async function ensureStore(dataDir: string, keyName: string, rootKeyFile?: string): Promise<{ created: boolean; keyCreated: boolean }> {
  const created = !existsSync(join(dataDir, 'keyhaven.db'));
  const es = await openEmbeddedStore({ dataDir, rootKeyFile, create: true });
  try {
    try {
      await es.keys.get(keyName);
      return { created, keyCreated: false };
    } catch (e) {
      if (!(e instanceof KeyhavenError && e.code === 'not_found')) throw e;
    }
    await es.keys.create(keyName, localActor());
    return { created, keyCreated: true };
  } finally {
    await es.close();
  }
}

export function registerInit(program: Command, run: (fn: () => Promise<number>) => void): void {
  storeOptions(program.command('init').description('Create an embedded key store: root key file (0600), database and a first key'))
    .option('--key <name>', 'name of the first key', DEFAULT_KEY_NAME)
    .action((flags: StoreFlags & { key: string }) =>
      run(async () => {
        const dataDir = flags.dataDir ?? defaultDataDir();
        const r = await ensureStore(dataDir, flags.key, flags.rootKeyFile);
        if (flags.output !== 'text') printData({ dataDir, ...r, key: flags.key }, flags.output);
        else {
          process.stdout.write(`${r.created ? 'created' : 'found existing'} key store in ${dataDir}\n`);
          process.stdout.write(`key "${flags.key}" ${r.keyCreated ? 'created' : 'already exists'}\n`);
          if (r.created) process.stdout.write('back up root.key and keyhaven.db separately: losing root.key loses every key (docs/backup.md)\n');
        }
        return 0;
      }),
    );
}
