import type { Command } from 'commander';
import { KeyhavenError } from '../../errors.js';
import { printJson } from '../output.js';
import { storeOptions, withStore, type StoreFlags } from '../store-command.js';

export function registerAudit(program: Command, run: (fn: () => Promise<number>) => void): void {
  const audit = program.command('audit').description('Read and verify the audit log of the embedded key store');
  storeOptions(audit.command('verify').description('Check the hash chain and its signed head; report the first edited, deleted or reordered record')).action(
    (flags: StoreFlags) =>
      run(() =>
        withStore(flags, async (es) => {
          const r = await es.audit.verify();
          if (flags.output === 'json') printJson(r);
          else if (r.ok) process.stdout.write(`audit chain intact: ${r.records} records\n`);
          else process.stdout.write(`audit chain BROKEN at record ${r.firstBroken!.seq}: ${r.firstBroken!.reason} (${r.records} records verified before it)\n`);
          return r.ok ? 0 : 1;
        }),
      ),
  );
  storeOptions(audit.command('export').description('Print audit records as JSON lines'))
    .option('--after <seq>', 'only records after this sequence number', '0')
    .action((flags: StoreFlags & { after: string }) =>
      run(async () => {
        if (!/^\d{1,15}$/.test(flags.after)) throw new KeyhavenError('invalid_argument', `--after must be a record number, not ${JSON.stringify(flags.after)}`);
        return withStore(flags, async (es) => {
          let after = Number(flags.after);
          for (;;) {
            const page = await es.store.readAudit(after, 1000);
            if (page.length === 0) break;
            process.stdout.write(page.map((r) => JSON.stringify(r)).join('\n') + '\n');
            after = page[page.length - 1]!.seq;
          }
          return 0;
        });
      }),
    );
}
