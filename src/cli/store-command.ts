import type { Command } from 'commander';
import { KeyhavenError } from '../errors.js';
import type { EmbeddedStore } from '../keys/embedded-store.js';
import { defaultDataDir } from './data-dir.js';
import type { OutputFormat } from './output.js';

export interface StoreFlags {
  dataDir?: string;
  rootKeyFile?: string;
  output: OutputFormat;
}

export function parseOutput(v: string): OutputFormat {
  if (v !== 'text' && v !== 'json' && v !== 'yaml') throw new KeyhavenError('invalid_argument', `--output must be text, json or yaml, not ${JSON.stringify(v)}`);
  return v;
}

/** The options every command acting on the embedded store takes. */
export function storeOptions(c: Command, help: { dataDir?: string; rootKeyFile?: string } = {}): Command {
  return c
    .option('--data-dir <dir>', help.dataDir ?? 'embedded key store folder (default $KEYHAVEN_DATA_DIR or ./.keyhaven)')
    .option('--root-key-file <file>', help.rootKeyFile ?? 'root key file (default <data-dir>/root.key)')
    .option('-o, --output <format>', 'text, json or yaml', parseOutput, 'text' as OutputFormat);
}

// Acts on the store directly: SQLite takes concurrent writers, and a running
// plugin sees the change on its next Status poll.
export async function withStore<T>(flags: StoreFlags, fn: (es: EmbeddedStore) => Promise<T>): Promise<T> {
  // Loaded on use: commands that talk to the key server never open SQLite.
  const { openEmbeddedStore } = await import('../keys/embedded-store.js');
  const es = await openEmbeddedStore({ dataDir: flags.dataDir ?? defaultDataDir(), rootKeyFile: flags.rootKeyFile, create: false });
  try {
    return await fn(es);
  } finally {
    await es.close();
  }
}

/**
 * Whether a key or audit command acts on the embedded store rather than the
 * key server: an explicit --data-dir/--root-key-file or --server decides, then
 * $KEYHAVEN_DATA_DIR; the server is the default.
 */
export function actsLocally(flags: StoreFlags & { server?: string; context?: string }): boolean {
  const localFlag = flags.dataDir !== undefined || flags.rootKeyFile !== undefined;
  const remoteFlag = flags.server !== undefined ? '--server' : flags.context !== undefined ? '--context' : undefined;
  if (localFlag && remoteFlag) throw new KeyhavenError('invalid_argument', `${remoteFlag} and --data-dir/--root-key-file name different targets; give one`);
  if (localFlag) return true;
  if (remoteFlag) return false;
  return Boolean(process.env.KEYHAVEN_DATA_DIR);
}
