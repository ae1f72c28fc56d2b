import { openPostgresStore } from './postgres.js';
import { openSqliteStore } from './sqlite.js';
import type { Store } from './store.js';

export type StoreConfig =
  | { readonly sqlite: { readonly path: string; readonly create: boolean } }
  | { readonly postgres: { readonly url: string; readonly poolSize?: number; readonly lockHoldMs?: number; readonly lockWaitMs?: number } };

/** Opens (and migrates) the store a configuration names. */
export async function openStore(cfg: StoreConfig): Promise<Store> {
  if ('sqlite' in cfg) return openSqliteStore(cfg.sqlite);
  return openPostgresStore(cfg.postgres);
}
