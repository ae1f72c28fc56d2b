import type { Command } from 'commander';
import { KeyhavenError } from '../../errors.js';
import { openEmbeddedStore } from '../../keys/embedded-store.js';
import { defaultDataDir } from '../data-dir.js';
import { printJson } from '../output.js';

export function registerAudit(program: Command, run: (fn: () => Promise<number>) => void): void {
  const audit = program.command('audit').description('Read and verify the audit log of the embedded key store');
  audit
    .command('verify')
    .description('Check the hash chain; report the first edited, deleted or reordered record')
    .option('--data-dir <dir>', 'embedded key store folder (default $KEYHAVEN_DATA_DIR or ./.keyhaven)')
    .option('--root-key-file <file>', 'root key file (default <data-dir>/root.key)')
    .option('-o, --output <format>', 'text or json', 'text')
    .action((flags: { dataDir?: string; rootKeyFile?: string; output: string }) =>
      run(async () => {
        const es = await openEmbeddedStore({ dataDir: flags.dataDir ?? defaultDataDir(), rootKeyFile: flags.rootKeyFile, create: false });
        try {
          const r = await es.audit.verify();
          if (flags.output === 'json') printJson(r);
          else if (r.ok) process.stdout.write(`audit chain intact: ${r.records} records\n`);
          else process.stdout.write(`audit chain BROKEN at record ${r.firstBroken!.seq}: ${r.firstBroken!.reason} (${r.records} records verified before it)\n`);
          return r.ok ? 0 : 1;
        } finally {
          await es.close();
        }
      }),
    );
  audit
    .command('export')
    .description('Print audit records as JSON lines')
    .option('--data-dir <dir>', 'embedded key store folder (default $KEYHAVEN_DATA_DIR or ./.keyhaven)')
    .option('--root-key-file <file>', 'root key file (default <data-dir>/root.key)')
    .option('--after <seq>', 'only records after this sequence number', '0')
    .action((flags: { dataDir?: string; rootKeyFile?: string; after: string }) =>
      run(async () => {
        const es = await openEmbeddedStore({ dataDir: flags.dataDir ?? defaultDataDir(), rootKeyFile: flags.rootKeyFile, create: false });
        try {
          if (!/^\d{1,15}$/.test(flags.after)) throw new KeyhavenError('invalid_argument', `--after must be a record number, not ${JSON.stringify(flags.after)}`);
          let after = Number(flags.after);
          for (;;) {
            const page = await es.store.readAudit(after, 1000);
            if (page.length === 0) break;
            process.stdout.write(page.map((r) => JSON.stringify(r)).join('\n') + '\n');
            after = page[page.length - 1]!.seq;
          }
          return 0;
        } finally {
          await es.close();
        }
      }),
    );
}
