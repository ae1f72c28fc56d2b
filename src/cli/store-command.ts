import type { Command } from 'commander';
import { KeyhavenError } from '../errors.js';
import { openEmbeddedStore, type EmbeddedStore } from '../keys/embedded-store.js';
import { defaultDataDir } from './data-dir.js';
import type { OutputFormat } from './output.js';

export interface StoreFlags {
  dataDir?: string;
  rootKeyFile?: string;
  output: OutputFormat;
}

export function parseOutput(v: string): OutputFormat {
  if (v !== 'text' && v !== 'json') throw new KeyhavenError('invalid_argument', `--output must be text or json, not ${JSON.stringify(v)}`);
  return v;
}

/** The options every command acting on the embedded store takes. */
export function storeOptions(c: Command): Command {
  return c
    .option('--data-dir <dir>', 'embedded key store folder (default $KEYHAVEN_DATA_DIR or ./.keyhaven)')
    .option('--root-key-file <file>', 'root key file (default <data-dir>/root.key)')
    .option('-o, --output <format>', 'text or json', parseOutput, 'text' as OutputFormat);
}

// Acts on the store directly: SQLite takes concurrent writers, and a running
// plugin sees the change on its next Status poll.
export async function withStore<T>(flags: StoreFlags, fn: (es: EmbeddedStore) => Promise<T>): Promise<T> {
  const es = await openEmbeddedStore({ dataDir: flags.dataDir ?? defaultDataDir(), rootKeyFile: flags.rootKeyFile, create: false });
  try {
    return await fn(es);
  } finally {
    await es.close();
  }
}
