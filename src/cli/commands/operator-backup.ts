import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Command } from 'commander';
import { KeyhavenError } from '../../errors.js';
import type { SealRecord } from '../../seal/seal.js';
import type { RestoreCheckResult, RootKeySource } from '../backup.js';
import { printData, type OutputFormat } from '../output.js';
import { canPrompt, promptSecret, readStdin } from '../prompt.js';
import { parseOutput } from '../store-command.js';

// `operator backup` and `operator restore-check` act on files, not on a
// server: they run on the machine holding the database (or the copy).

const DB_FILE = 'keyhaven.db';
const ROOT_KEY_FILE = 'root.key';

const BACKUP_HELP = `
The copy is taken with SQLite's online backup API while the server (or plugin) keeps
serving: one consistent snapshot, WAL included, written as a single file of mode 0600.
An existing DEST is never overwritten. The copy holds sealed key material and the audit
log, not the root key: keep it apart from the seal material (key file, shares, HSM).
A PostgreSQL store is backed up with pg_dump or point-in-time recovery: see docs/backup.md.
Check every backup with: keyhaven operator restore-check DEST --root-key-file FILE`;

const CHECK_HELP = `
COPY is a database file or a folder holding keyhaven.db. The copy is opened read-only and
never written. The root key comes from, in this order:
  --root-key-file FILE        a key-file seal (or the plugin's embedded store)
  --share-file FILE           shamir: files holding shares, one per line (repeat the flag)
  --shares                    shamir: shares asked for on the terminal, or read from stdin
  --config FILE               the server config's seal section (key file path, shamir, or
                              seal.pkcs11: module, token, PIN file and key label)
  COPY/root.key               when COPY is a folder holding one
Checks, in order: the file (a SQLite file not cut short), the store, the root key, the
barrier canary (the root key opens this store), the audit chain and its signed head, and
one key version's material. Exit 0 only when every check passes.`;

interface BackupFlags {
  config?: string;
  db?: string;
  dataDir?: string;
  output: OutputFormat;
}

interface CheckFlags {
  config?: string;
  rootKeyFile?: string;
  shareFile?: string[];
  shares?: boolean;
  pkcs11?: boolean;
  output: OutputFormat;
}

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

async function loadConfig(path: string) {
  const { loadServerConfig } = await import('../../config/server-config.js');
  return loadServerConfig(path);
}

/** The SQLite file a backup reads: exactly one of --config, --db, --data-dir. */
async function sourceDb(flags: BackupFlags): Promise<string> {
  const given = [flags.config, flags.db, flags.dataDir].filter((v) => v !== undefined).length;
  if (given !== 1) throw new KeyhavenError('invalid_argument', 'give exactly one of --config (a server config), --db (a SQLite file) or --data-dir (the embedded store folder)');
  if (flags.db !== undefined) return flags.db;
  if (flags.dataDir !== undefined) return join(flags.dataDir, DB_FILE);
  const cfg = await loadConfig(flags.config!);
  if ('postgres' in cfg.storage) {
    throw new KeyhavenError(
      'failed_precondition',
      `${flags.config} stores its data in PostgreSQL: back it up with pg_dump or point-in-time recovery (see docs/backup.md, "PostgreSQL"); keep the dump with the seal material's records, never in one place with the seal material itself`,
    );
  }
  return cfg.storage.sqlite.path;
}

function shareLines(text: string): string[] {
  return text
    .split(/\r?\n/)
    .map((s) => s.trim())
    .filter(Boolean);
}

function readShareFile(path: string): string[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new KeyhavenError('config_invalid', `cannot read the share file ${path}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  const lines = shareLines(text);
  if (lines.length === 0) throw new KeyhavenError('invalid_argument', `the share file ${path} holds no share`);
  return lines;
}

/** Shares typed at the terminal (as many as the copy's record needs), or stdin lines. */
async function askShares(record: SealRecord | undefined): Promise<string[]> {
  if (!canPrompt()) return shareLines(await readStdin('unseal shares'));
  const threshold = typeof record?.threshold === 'number' ? record.threshold : 1;
  const out: string[] = [];
  for (let i = 1; i <= threshold; i++) out.push(await promptSecret(`unseal share (${i} of ${threshold}): `, ''));
  return out;
}

/**
 * Decides, before anything is opened, where the root key comes from; a
 * contradictory or missing choice is a usage error (exit 2). What is slow or
 * interactive (prompting, the HSM) happens once the copy has been read.
 */
async function rootKeyPlan(flags: CheckFlags, copyIsDir: string | undefined): Promise<{ source: (r: SealRecord | undefined) => Promise<RootKeySource>; close: () => Promise<void> }> {
  const shamir = flags.shareFile !== undefined || flags.shares === true;
  const chosen = [flags.rootKeyFile !== undefined, shamir, flags.pkcs11 === true].filter(Boolean).length;
  if (chosen > 1) throw new KeyhavenError('invalid_argument', 'give one way to recover the root key: --root-key-file, --share-file/--shares, or --pkcs11 (with --config)');
  if (flags.shareFile !== undefined && flags.shares) throw new KeyhavenError('invalid_argument', '--share-file and --shares are two sources of shares; give one');
  const none = { close: async () => {} };
  if (flags.rootKeyFile !== undefined) return { ...none, source: async () => ({ keyFile: flags.rootKeyFile! }) };
  const { shamirSeal } = await import('../../seal/shamir.js');
  if (flags.shareFile !== undefined) {
    const shares = flags.shareFile.flatMap(readShareFile);
    return { ...none, source: async () => ({ seal: shamirSeal(), shares }) };
  }
  if (flags.shares) return { ...none, source: async (r) => ({ seal: shamirSeal(), shares: await askShares(r) }) };
  if (flags.config !== undefined) {
    const cfg = await loadConfig(flags.config);
    if (flags.pkcs11 && !('pkcs11' in cfg.seal)) throw new KeyhavenError('invalid_argument', `--pkcs11 needs a config whose seal is pkcs11; ${flags.config} has another seal`);
    if ('keyfile' in cfg.seal) {
      const keyFile = cfg.seal.keyfile.path;
      return { ...none, source: async () => ({ keyFile }) };
    }
    if ('shamir' in cfg.seal) return { ...none, source: async (r) => ({ seal: shamirSeal(), shares: await askShares(r) }) };
    const { sealFromConfig } = await import('../../server/run-server.js');
    const seal = sealFromConfig(cfg.seal);
    return { source: async () => ({ seal }), close: () => seal.close() };
  }
  if (flags.pkcs11) throw new KeyhavenError('invalid_argument', '--pkcs11 needs --config: the HSM module, token, PIN and key label come from its seal.pkcs11 section');
  if (copyIsDir !== undefined) {
    const keyFile = join(copyIsDir, ROOT_KEY_FILE);
    return { ...none, source: async () => ({ keyFile }) };
  }
  throw new KeyhavenError('invalid_argument', 'say how to recover the root key: --root-key-file, --share-file or --shares (shamir), or --config (its seal section, pkcs11 included)');
}

function checkText(r: RestoreCheckResult): string {
  const lines = [`restore check of ${r.path}`];
  for (const s of r.steps) lines.push(`  ${s.ok ? 'ok  ' : 'FAIL'}  ${s.name.padEnd(9)} ${s.detail}`);
  lines.push(r.ok ? 'restore check passed: this copy restores with the seal material given' : 'restore check FAILED');
  return lines.join('\n') + '\n';
}

export function registerBackup(op: Command, run: (fn: () => Promise<number>) => void): void {
  op.command('backup <dest>')
    .description('Write a consistent online copy of a SQLite key store (server or embedded) to DEST, mode 0600')
    .option('--config <file>', 'the server config: back up its storage.sqlite.path')
    .option('--db <file>', 'the SQLite database file to back up')
    .option('--data-dir <dir>', 'the embedded (plugin) store folder: back up <dir>/keyhaven.db')
    .option('-o, --output <format>', 'text, json or yaml', parseOutput, 'text' as OutputFormat)
    .addHelpText('after', BACKUP_HELP)
    .action((dest: string, flags: BackupFlags) =>
      run(async () => {
        const src = await sourceDb(flags);
        const { backupSqlite } = await import('../backup.js');
        const r = await backupSqlite(src, dest);
        if (flags.output !== 'text') printData({ source: src, ...r }, flags.output);
        else process.stdout.write(`backed up ${src} to ${r.path} (${r.bytes} bytes, ${r.pages} pages, mode 0600)\ncheck it with: keyhaven operator restore-check ${r.path} --root-key-file FILE (or --share-file / --config)\n`);
        return 0;
      }),
    );

  op.command('restore-check <copy>')
    .description('Prove a backup restores: open it read-only, unseal it, verify the audit chain, decrypt the canary and a key; exit non-zero on any failure')
    .option('--config <file>', "a server config: its seal section recovers the root key (key file, shamir, pkcs11)")
    .option('--root-key-file <file>', 'the root key file (key-file seal, or the embedded store)')
    .option('--share-file <file>', 'shamir: a file holding unseal shares, one per line (repeatable)', (v: string, prev: string[] | undefined) => [...(prev ?? []), v])
    .option('--shares', 'shamir: ask for the unseal shares (not echoed), or read them from stdin one per line')
    .option('--pkcs11', "recover the root key through the HSM named in --config's seal.pkcs11")
    .option('-o, --output <format>', 'text, json or yaml', parseOutput, 'text' as OutputFormat)
    .addHelpText('after', CHECK_HELP)
    .action((copy: string, flags: CheckFlags) =>
      run(async () => {
        const dir = isDir(copy) ? copy : undefined;
        const file = dir !== undefined ? join(dir, DB_FILE) : copy;
        const plan = await rootKeyPlan(flags, dir);
        const { restoreCheck } = await import('../backup.js');
        let r: RestoreCheckResult;
        try {
          r = await restoreCheck(file, plan.source);
        } finally {
          await plan.close();
        }
        if (flags.output !== 'text') printData(r, flags.output);
        else process.stdout.write(checkText(r));
        if (r.ok) return 0;
        const failed = r.steps[r.steps.length - 1]!;
        throw new KeyhavenError('integrity', `restore check failed (${failed.name}): ${failed.detail}`);
      }),
    );
}
