import { resolve } from 'node:path';

/** The embedded store's folder: --data-dir, else $KEYHAVEN_DATA_DIR, else ./.keyhaven. */
export function defaultDataDir(): string {
  return resolve(process.env.KEYHAVEN_DATA_DIR || '.keyhaven');
}
