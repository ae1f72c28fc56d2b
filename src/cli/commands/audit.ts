import type { Command } from 'commander';
import type { VerifyResult } from '../../audit/chain.js';
import { checkpointHash, ZERO_PREV, type WitnessFailure } from '../../audit/checkpoint.js';
import type { WitnessInput, WitnessVerifyResult } from '../../audit/checkpoint-verify.js';
import { KeyhavenError } from '../../errors.js';
import type { AuditQuery, AuditRow } from '../../storage/store.js';
import type { ApiClient, ConnectionFlags } from '../client.js';
import { parseTimeFlag } from '../duration.js';
import { printable, printData, type OutputFormat } from '../output.js';
import { connOptions, namingFlags, positiveInt, SERVER_HELP, withClient } from '../remote-command.js';
import { actsLocally, storeOptions, withStore, type StoreFlags } from '../store-command.js';

// Every read of the server's audit log is itself audited: paging and polling
// add records of their own. Export keeps them (the export must stay one
// unbroken chain); tail hides them by request id, or following would feed on
// itself.

type AuditFlags = StoreFlags & ConnectionFlags;

interface Filters {
  after?: string;
  since?: string;
  until?: string;
  principal?: string;
  key?: string;
  operation?: string;
}

const MODE_HELP = `
Where an audit command reads:
  --data-dir DIR (or --root-key-file) given   the embedded key store in DIR
  --server URL given                          the key server (auditor role)
  $KEYHAVEN_DATA_DIR set                      the embedded key store in that folder
  otherwise                                   the key server
${SERVER_HELP}`;

function auditOptions(c: Command): Command {
  const help = { dataDir: 'read the embedded key store in this folder instead of the key server', rootKeyFile: 'root key file (default <data-dir>/root.key)' };
  return connOptions(storeOptions(c, help), { output: false }).addHelpText('after', MODE_HELP);
}

function filterOptions(c: Command): Command {
  return c
    .option('--since <time>', 'records at or after this time: a duration back from now (1h, 1h30m, 7d) or ISO 8601 (2026-01-31T00:00:00Z)')
    .option('--until <time>', 'records at or before this time: a duration back from now or ISO 8601')
    .option('--principal <who>', 'records by this principal, e.g. user:alice or app:cluster-a')
    .option('--key <name>', 'records about this key')
    .option('--operation <op>', 'records of this operation, e.g. key.rotate or crypto.encrypt');
}

/** The filters as the store and server take them: --since/--until resolved to ISO 8601 UTC once, at start. */
function filtersOf(flags: Filters, now: number = Date.now()): Filters {
  const since = flags.since === undefined ? undefined : parseTimeFlag('--since', flags.since, now);
  const until = flags.until === undefined ? undefined : parseTimeFlag('--until', flags.until, now);
  return { since, until, principal: flags.principal, key: flags.key, operation: flags.operation };
}

/** Server query fields by the flag that sets them, for its refusals. */
const AUDIT_FLAGS = { since: '--since', until: '--until', limit: '--lines', after: '--after', principal: '--principal', key: '--key', operation: '--operation' };

function afterSeq(v: string | undefined): number {
  if (v === undefined) return 0;
  if (!/^\d{1,15}$/.test(v)) throw new KeyhavenError('invalid_argument', `--after must be a record number, not ${JSON.stringify(v)}`);
  return Number(v);
}

interface Page {
  rows: AuditRow[];
  lines: string[];
  /** The request id of the read itself (server): its own record joins the log. */
  requestId?: string;
  /** The server's clock when it answered (the Date header). */
  date?: string;
}

/** One page of records after `after` matching `f`, oldest first. */
type PageReader = (after: number, limit: number, f: Filters) => Promise<Page>;

function serverPages(c: ApiClient): PageReader {
  return async (after, limit, f) => {
    const query = { after, limit, since: f.since, until: f.until, principal: f.principal, key: f.key, operation: f.operation };
    const r = await namingFlags(AUDIT_FLAGS, () => c.call<string>('GET', '/v1/audit', { query, text: true }));
    const lines = r.body.split('\n').filter((l) => l.length > 0);
    return { rows: lines.map((l) => JSON.parse(l) as AuditRow), lines, requestId: r.requestId, date: r.date };
  };
}

function localPages(query: (q: AuditQuery) => Promise<AuditRow[]>): PageReader {
  return async (after, limit, f) => {
    const rows = await query({ afterSeq: after, limit, since: f.since, until: f.until, actor: f.principal, keyName: f.key, operation: f.operation });
    return { rows, lines: rows.map((r) => JSON.stringify(r)) };
  };
}

const EXPORT_PAGE = 10_000;

/** Pages through the log until a short page: records added by the export's own reads end up on a full page at most. */
async function exportAll(read: PageReader, after: number, f: Filters): Promise<number> {
  let n = 0;
  for (;;) {
    const page = await read(after, EXPORT_PAGE, f);
    if (page.lines.length) process.stdout.write(page.lines.join('\n') + '\n');
    n += page.rows.length;
    if (page.rows.length < EXPORT_PAGE) return n;
    after = page.rows[page.rows.length - 1]!.seq;
  }
}

const TAIL_HEADER = ['SEQ', 'TIME', 'PRINCIPAL', 'OPERATION', 'KEY', 'RESULT', 'DETAILS'];

// The exact time, not an age: audit lines are matched against other logs, and
// -f keeps lines on screen long after an age would have gone stale.
function rowCells(r: AuditRow): string[] {
  const key = r.key_name ? `${r.key_name}${r.key_version !== null ? `@v${r.key_version}` : ''}` : '-';
  return [String(r.seq), r.time, r.actor, r.operation, key, r.result, r.details ?? ''].map(printable);
}

/** Cells padded to the given widths (the last left as is); a wider cell pushes its line only. */
function padded(cells: readonly string[], widths: readonly number[]): string {
  return cells.map((c, i) => (i < cells.length - 1 ? c.padEnd(widths[i] ?? 0) : c)).join('  ').trimEnd() + '\n';
}

/** A record for -o json/yaml: its details (stored as JSON text for the hash chain) as an object. */
function auditRecordView(r: AuditRow): Omit<AuditRow, 'details'> & { details: unknown } {
  if (r.details === null) return { ...r, details: null };
  try {
    return { ...r, details: JSON.parse(r.details) as unknown };
  } catch {
    return { ...r, details: r.details };
  }
}

/**
 * The highest seq in a server's log, in three requests: a read's own record
 * lands at the end of the log, and it is found by request id among the
 * caller's recent audit.read records (the actor index makes that cheap).
 */
async function serverLastSeq(c: ApiClient, read: PageReader, own: Set<string>): Promise<number> {
  const me = await c.call<{ name: string; kind: string }>('GET', '/v1/auth/whoami');
  if (me.requestId) own.add(me.requestId);
  const probe = await read(0, 1, {});
  if (probe.requestId) own.add(probe.requestId);
  if (probe.rows.length === 0) return 0;
  if (probe.requestId && probe.date) {
    const f: Filters = { principal: `${me.body.kind}:${me.body.name}`, operation: 'audit.read', since: new Date(Date.parse(probe.date) - 60_000).toISOString() };
    let after = 0;
    for (let pages = 0; pages < 10; pages++) {
      const p = await read(after, EXPORT_PAGE, f);
      if (p.requestId) own.add(p.requestId);
      const mine = p.rows.find((r) => r.request_id === probe.requestId);
      if (mine) return mine.seq;
      if (p.rows.length < EXPORT_PAGE) break;
      after = p.rows[p.rows.length - 1]!.seq;
    }
  }
  return searchLastSeq(read, own);
}

/** The highest seq by binary search with one-record reads (the embedded store; a server without a Date header). */
async function searchLastSeq(read: PageReader, own: Set<string>): Promise<number> {
  const exists = async (after: number) => {
    const p = await read(after, 1, {});
    if (p.requestId) own.add(p.requestId);
    return p.rows.length > 0;
  };
  if (!(await exists(0))) return 0;
  let lo = 0;
  let hi = 1;
  while (await exists(hi)) {
    lo = hi;
    hi *= 2;
  }
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (await exists(mid)) lo = mid;
    else hi = mid;
  }
  return hi;
}

type EndFinder = (read: PageReader, own: Set<string>) => Promise<number>;

async function tail(read: PageReader, findEnd: EndFinder, f: Filters, n: number, follow: boolean, output: OutputFormat): Promise<number> {
  const own = new Set<string>();
  let widths: number[] | undefined;
  const print = (rows: AuditRow[]) => {
    const shown = rows.filter((r) => r.request_id === null || !own.delete(r.request_id));
    if (output === 'json') {
      for (const r of shown) process.stdout.write(`${JSON.stringify(auditRecordView(r))}\n`);
      return;
    }
    if (output === 'yaml') {
      for (const r of shown) {
        process.stdout.write('---\n');
        printData(auditRecordView(r), 'yaml');
      }
      return;
    }
    const cells = shown.map(rowCells);
    if (widths === undefined) {
      // The first batch sets the columns; followed records keep them.
      widths = TAIL_HEADER.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
      process.stdout.write(padded(TAIL_HEADER, widths));
    }
    for (const c of cells) process.stdout.write(padded(c, widths));
  };
  // Reads all matching records after `from`; returns them and the last seq seen.
  const readFrom = async (from: number) => {
    const rows: AuditRow[] = [];
    let after = from;
    for (;;) {
      const p = await read(after, EXPORT_PAGE, f);
      if (p.requestId) own.add(p.requestId);
      rows.push(...p.rows);
      if (p.rows.length) after = p.rows[p.rows.length - 1]!.seq;
      if (p.rows.length < EXPORT_PAGE) return { rows, after };
    }
  };
  const end = await findEnd(read, own);
  // Widens a window back from the end until it holds n matching records (filters may be sparse).
  let span = Math.max(n * 2, 64);
  let got: { rows: AuditRow[]; after: number };
  for (;;) {
    const from = Math.max(0, end - span);
    got = await readFrom(from);
    const mine = got.rows.filter((r) => r.request_id === null || !own.has(r.request_id));
    if (mine.length >= n || from === 0) {
      got.rows = mine.slice(-n);
      break;
    }
    span *= 8;
  }
  print(got.rows);
  let after = Math.max(got.after, end);
  if (!follow) return 0;

  let stop = false;
  let wake: (() => void) | undefined;
  const onSignal = () => {
    stop = true;
    wake?.();
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    while (!stop) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 1000);
        wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      if (stop) break;
      const next = await readFrom(after);
      print(next.rows);
      after = next.after;
    }
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  return 0;
}

function reportVerify(r: VerifyResult, output: OutputFormat, extra: Record<string, unknown>, okNote: string): number {
  if (output !== 'text') printData({ ...r, ...extra }, output);
  else if (r.ok) process.stdout.write(`audit chain intact: ${r.records} records${okNote ? ` ${okNote}` : ''}\n`);
  else process.stdout.write(`audit chain BROKEN at record ${r.firstBroken!.seq}: ${r.firstBroken!.reason} (${r.records} records verified before it)\n`);
  return r.ok ? 0 : 1;
}

function reportWitness(r: WitnessVerifyResult, output: OutputFormat, extra: Record<string, unknown>, witnessPath: string, by: string): number {
  if (output !== 'text') {
    printData({ ...r, ...extra }, output);
    return r.ok ? 0 : 1;
  }
  const w = r.witness;
  if (r.ok) {
    const reach = w.newest ? `; the log reaches the newest checkpoint, record ${w.newest.seq} of ${w.newest.time}` : '';
    process.stdout.write(`audit chain intact: ${r.records} records (hash chain, signed head and ${w.checkpoints} checkpoints${w.records ? ` and ${w.records} copied records` : ''} from ${witnessPath}, checked by ${by}${reach})\n`);
    return 0;
  }
  process.stdout.write(`audit chain BROKEN at record ${r.firstBroken!.seq}: ${r.firstBroken!.reason} (${r.records} records verified; witness ${witnessPath}, checked by ${by})\n`);
  for (const f of w.failures) process.stdout.write(`  ${f.problem}: ${f.reason}\n`);
  if (w.failureCount > w.failures.length) process.stdout.write(`  … and ${w.failureCount - w.failures.length} more\n`);
  return 1;
}

const sourceOf = (at: string) => at.slice(0, Math.max(0, at.lastIndexOf(':')));
const WITNESS_BATCH = 1000;

/**
 * Sends the witness's checkpoints to the server in batches (it checks the
 * signatures and the chain) and merges the answers. Links between batches are
 * checked here: a hash needs no key.
 */
async function verifyWitnessOnline(c: ApiClient, w: WitnessInput): Promise<WitnessVerifyResult> {
  const failures: WitnessFailure[] = (w.malformed ?? []).map((m) => ({ at: m.at, seq: 0, problem: 'signature', reason: `the checkpoint at ${m.at} is malformed (${m.value}); not trusted` }));
  const seen = new Set<string>();
  const started = new Set<string>();
  let records = 0;
  let broken: { seq: number; reason: string } | undefined;
  let newest: WitnessVerifyResult['witness']['newest'];
  let count = failures.length;
  for (let i = 0; i < w.checkpoints.length; i += WITNESS_BATCH) {
    const batch = w.checkpoints.slice(i, i + WITNESS_BATCH);
    const inBatch = new Set<string>();
    for (const { at, value } of batch) {
      const src = sourceOf(at);
      if (i > 0 && !inBatch.has(src) && started.has(src) && value.prev !== ZERO_PREV && !seen.has(value.prev)) {
        failures.push({ at, seq: value.seq, problem: 'link', reason: `checkpoint at ${at} (record ${value.seq}) names a previous checkpoint missing from the witness (a witness line was removed or edited)` });
        count += 1;
      }
      inBatch.add(src);
      started.add(src);
      seen.add(checkpointHash(value));
    }
    const r = (await c.call<WitnessVerifyResult>('POST', '/v1/audit/verify', { body: { checkpoints: batch.map((e) => e.value), at: batch.map((e) => e.at) } })).body;
    records = Math.max(records, r.records);
    if (!r.ok) broken ??= r.firstBroken;
    failures.push(...r.witness.failures);
    count += r.witness.failureCount;
    if (r.witness.newest && (!newest || r.witness.newest.seq > newest.seq)) newest = r.witness.newest;
  }
  failures.sort((a, b) => a.seq - b.seq);
  const witness = { checkpoints: w.checkpoints.length, records: 0, ...(newest ? { newest } : {}), failures: failures.slice(0, 100), failureCount: count };
  if (!broken && failures.length) broken = { seq: failures[0]!.seq, reason: failures[0]!.reason };
  return broken ? { ok: false, records, firstBroken: broken, witness } : { ok: true, records, witness };
}

export function registerAudit(program: Command, run: (fn: () => Promise<number>) => void): void {
  const audit = program.command('audit').description('Read, export and verify the audit log (key server, embedded store, a database copy or an export file)');

  auditOptions(
    audit
      .command('verify')
      .description('Check the hash chain (and its signed head where the root key is at hand); report the first edited, deleted or reordered record')
      .option('--db <file>', 'verify a SQLite database offline, opened read-only; with --root-key-file (a keyfile-sealed server\'s key) also its signed head')
      .option('--file <export.jsonl>', 'verify a file written by "keyhaven audit export"')
      .option('--witness <file|dir>', 'also check the chain against signed checkpoints kept outside the database (the audit.checkpoint file, an audit sink file or syslog archive, or a folder of them); with --server or with --db and --root-key-file'),
  )
    .addHelpText(
      'after',
      `
Exit status 1 when verification fails; the message names the first broken record.

Without --witness the database can only vouch for itself: an edit, a deleted
or reordered record, a missing signed head or records cut below the head are
found, but someone able to write the database can roll it back to an older
state (head included) unnoticed. With --witness the log must also reach and
match every checkpoint in the witness: a rollback, a wipe, a cut tail or a
forged tail is found as long as the witness itself was out of reach.`,
    )
    .action((flags: AuditFlags & { db?: string; file?: string; witness?: string }) =>
      run(async () => {
        if ([flags.db, flags.file, flags.dataDir, flags.server].filter((v) => v !== undefined).length > 1) {
          throw new KeyhavenError('invalid_argument', 'give one of --db, --file, --data-dir or --server');
        }
        if (flags.witness !== undefined && (flags.file !== undefined || (flags.db === undefined && actsLocally(flags)))) {
          throw new KeyhavenError('invalid_argument', '--witness applies to the key server (--server) or a copy of its database (--db with --root-key-file); an export file or an embedded store has no checkpoints');
        }
        if (flags.file !== undefined) {
          if (flags.rootKeyFile !== undefined) throw new KeyhavenError('invalid_argument', '--root-key-file does not apply to --file: an export carries no signed head');
          const { verifyExportFile } = await import('../audit-offline.js');
          const r = await verifyExportFile(flags.file);
          const note = `(records ${r.firstSeq} to ${r.lastSeq} of ${flags.file} link up; last hash ${r.lastHash}.\nThis checks the file against itself: compare that hash with record ${r.lastSeq} in the live log)`;
          return reportVerify(r, flags.output, { source: 'file', checked: 'chain' }, note);
        }
        if (flags.db !== undefined) {
          const { verifyDatabase, readWitness } = await import('../audit-offline.js');
          if (flags.witness !== undefined) {
            if (flags.rootKeyFile === undefined) throw new KeyhavenError('invalid_argument', '--witness needs --root-key-file: checkpoints are signed with a key derived from the root key');
            const w = await readWitness(flags.witness);
            const { headChecked: _, ...res } = await verifyDatabase(flags.db, flags.rootKeyFile, w);
            return reportWitness(res as WitnessVerifyResult, flags.output, { source: 'db', checked: 'chain+head+witness' }, flags.witness, 'this machine');
          }
          const r = await verifyDatabase(flags.db, flags.rootKeyFile);
          const { headChecked, ...res } = r;
          const note = headChecked
            ? '(hash chain and signed head)'
            : '(hash chain only: without --root-key-file the head\'s signature is not checked, so records appended or a chain rewritten by someone without the root key would go unnoticed; a missing head or records cut below it are still found)';
          return reportVerify(res, flags.output, { source: 'db', checked: headChecked ? 'chain+head' : 'chain' }, note);
        }
        if (actsLocally(flags)) {
          return withStore(flags, async (es) => reportVerify(await es.audit.verify(), flags.output, {}, ''));
        }
        if (flags.witness !== undefined) {
          const { readWitness } = await import('../audit-offline.js');
          const w = await readWitness(flags.witness);
          return withClient(flags, async (c) => reportWitness(await verifyWitnessOnline(c, w), flags.output, { source: 'server', checked: 'chain+head+witness' }, flags.witness!, c.connection.server));
        }
        return withClient(flags, async (c) => {
          const r = (await c.call<VerifyResult>('GET', '/v1/audit/verify')).body;
          return reportVerify(r, flags.output, { source: 'server', checked: 'chain+head' }, `(hash chain and signed head, checked by ${c.connection.server})`);
        });
      }),
    );

  filterOptions(auditOptions(audit.command('export').description('Print audit records as JSON lines, oldest first (the format audit verify --file reads)')))
    .option('--after <seq>', 'only records after this sequence number', '0')
    .addHelpText('after', '\nAn export without filters is one unbroken chain that "audit verify --file" can check; a filtered export is not.')
    .action((flags: AuditFlags & Filters) =>
      run(async () => {
        const after = afterSeq(flags.after);
        const f = filtersOf(flags);
        if (actsLocally(flags)) return withStore(flags, async (es) => (await exportAll(localPages((q) => es.store.queryAudit(q)), after, f), 0));
        return withClient(flags, async (c) => (await exportAll(serverPages(c), after, f), 0));
      }),
    );

  filterOptions(
    auditOptions(
      audit
        .command('tail')
        .description('Print the last records; with -f keep printing new ones (every second) until interrupted')
        .option('-n, --lines <n>', 'how many records', '20')
        .option('-f, --follow', 'keep polling for new records until SIGINT'),
    ),
  )
    .addHelpText(
      'after',
      '\nExamples: keyhaven audit tail --since 1h; keyhaven audit tail -f --operation key.rotate.\n' +
        'Text is a table with a header row; -o json prints one JSON line per record (details an object), -o yaml one document per record.\n' +
        'Durations and times: --since 1h30m means records from the last 90 minutes; --since 2026-01-31T00:00:00Z works too. The reads tail makes are audited too; their records are not shown.',
    )
    .action((flags: AuditFlags & Filters & { lines: string; follow?: boolean }) =>
      run(async () => {
        const n = positiveInt('--lines', flags.lines);
        const f = filtersOf(flags);
        if (actsLocally(flags)) return withStore(flags, (es) => tail(localPages((q) => es.store.queryAudit(q)), searchLastSeq, f, n, flags.follow === true, flags.output));
        return withClient(flags, (c) => tail(serverPages(c), (read, own) => serverLastSeq(c, read, own), f, n, flags.follow === true, flags.output));
      }),
    );
}
