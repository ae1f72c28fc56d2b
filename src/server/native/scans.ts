import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { actorName } from '../../access/access.js';
import { KeyhavenError } from '../../errors.js';
import { formatKeyId } from '../../keys/key-id.js';
import { lookupKeyIds, type KeyIdStatus } from '../../keys/key-id-lookup.js';
import type { ScanReportRow } from '../../storage/store.js';
import type { RouteDeps } from '../route-deps.js';
import { canSeeKey, principalOf } from '../pipeline/context.js';
import { errorResponse, keyNameParam } from '../schemas.js';
import { bounded, clusterName, isoTime } from './clusters.js';

// What `keyhaven k8s scan` learns about a cluster's etcd, and what the key
// server concludes from it: which key versions still hold objects, and
// whether a version can be retired without losing any.

const MAX_COUNT = Number.MAX_SAFE_INTEGER;
/** A scan dated further ahead of the server's clock is refused: it would count as made after every later move. */
const MAX_FUTURE_MS = 5 * 60_000;
/**
 * After a node's plugin reports a new version, its apiserver may go on
 * writing with the old key_id for up to 3 minutes (a Status answer extends the
 * write key that long), so only a scan made after that shows what it left.
 */
const SETTLE_MS = 3 * 60_000;
const count = z.number().int('must be a whole number').min(0, 'must not be negative').max(MAX_COUNT);
const label = (max: number) => bounded(1, max).regex(/^[\x21-\x7e]+$/, 'must be printable ASCII without spaces');

const resolveBody = z.strictObject({
  keyIds: z.array(bounded(1, 1024)).max(1000, { error: 'must have at most 1000 entries' }),
});

const resolved = z.object({
  keyId: z.string(),
  known: z.boolean().describe('false for a key_id of another store, one never issued, or (for apps) a key without a grant'),
  key: z.string().optional(),
  version: z.number().optional(),
  state: z.enum(['active', 'retired', 'destroyed']).optional().describe('the version: retired = below the key\'s minDecryptionVersion'),
  keyState: z.enum(['enabled', 'disabled', 'pending_destruction', 'destroyed']).optional(),
  current: z.boolean().optional().describe('the key\'s current version'),
  flags: z.array(z.string()).describe('why data under this version is at risk: key-disabled, below-min-decryption, pending-destruction, destroyed; empty when it decrypts normally'),
});

const scanReportBody = z
  .strictObject({
    scannedAt: isoTime,
    source: bounded(1, 200).regex(/^[\x20-\x7e]+$/, 'must be printable ASCII').describe('where the scan read from, e.g. "etcd https://10.0.0.1:2379" or "snapshot nightly.db"'),
    objects: count.describe('objects scanned'),
    plaintext: count.describe('objects stored without encryption'),
    byKeyId: z.array(z.strictObject({ keyId: bounded(1, 1024), count })).max(10000, { error: 'must have at most 10000 entries' }).describe('KMS v2 objects per key_id'),
    byForm: z
      .array(z.strictObject({ form: label(64), provider: label(253).optional(), count }))
      .max(200, { error: 'must have at most 200 entries' })
      .describe('objects per storage form (identity, aescbc, kms-v2, ...) and provider name'),
  })
  .refine((b) => b.plaintext <= b.objects, { error: 'cannot exceed objects', path: ['plaintext'] })
  .refine((b) => new Set(b.byKeyId.map((e) => e.keyId)).size === b.byKeyId.length, { error: 'lists a key_id twice', path: ['byKeyId'] });

const scanReport = z.object({
  cluster: z.string(),
  scannedAt: z.string(),
  source: z.string(),
  objects: z.number(),
  plaintext: z.number(),
  byKeyId: z.array(z.object({ keyId: z.string(), count: z.number() })),
  byForm: z.array(z.object({ form: z.string(), provider: z.string().optional(), count: z.number() })),
  reporter: z.string(),
  receivedAt: z.string(),
});

const retireCheck = z.object({
  key: z.string(),
  version: z.number(),
  keyId: z.string(),
  safe: z.boolean(),
  reasons: z.array(z.string()),
  clusters: z.array(z.object({ cluster: z.string(), node: z.string(), keyVersion: z.number(), lastSeen: z.string() })).describe('cluster nodes whose plugin still reports this version as current'),
  objects: z.array(z.object({ cluster: z.string(), scannedAt: z.string(), count: z.number() })).describe('latest scan reports holding objects under this version'),
  unscanned: z.array(z.string()).describe('clusters that used this key with no scan report made at least 3 minutes after they last used this version'),
  unreportedApps: z.array(z.string()).describe('apps (not break-glass) holding a decrypt grant on this key whose plugin never reported it: which version they use is unknown'),
});

function reportView(r: ScanReportRow) {
  return {
    cluster: r.cluster,
    scannedAt: r.scanned_at,
    source: r.source,
    objects: r.objects,
    plaintext: r.plaintext,
    byKeyId: JSON.parse(r.by_key_id) as { keyId: string; count: number }[],
    byForm: JSON.parse(r.by_form) as { form: string; provider?: string; count: number }[],
    reporter: r.reporter,
    receivedAt: r.received_at,
  };
}

export function registerScanRoutes(app: FastifyInstance, { core }: RouteDeps): void {
  const r = app.withTypeProvider<ZodTypeProvider>();

  r.post('/v1/key-ids/resolve', {
    config: { op: 'key-id.resolve', access: { roles: ['key-admin', 'auditor'], apps: 'granted' } },
    schema: {
      tags: ['clusters'],
      summary: 'Which key and version each KMS v2 key_id names, and that version\'s state (apps learn only about keys they hold a grant on)',
      body: resolveBody,
      response: { 200: z.object({ results: z.array(resolved) }) },
    },
  }, async (req) => {
    const s = core.services();
    const p = principalOf(req);
    const keys = await s.keys.list();
    const idOf = new Map(keys.map((k) => [k.name, k.id]));
    const results: KeyIdStatus[] = [];
    let known = 0;
    for (const r of lookupKeyIds(s.storeId, keys, req.body.keyIds)) {
      // The visibleKey rule: an app hears nothing about keys it holds no grant on.
      if (r.known && !(await canSeeKey(s, p, idOf.get(r.key!)!))) {
        results.push({ keyId: r.keyId, known: false, flags: [] });
        continue;
      }
      if (r.known) known += 1;
      results.push(r);
    }
    req.auditNote.details.keyIds = results.length;
    req.auditNote.details.known = known;
    return { results: results.map((r) => ({ ...r, flags: [...r.flags] })) };
  });

  r.put('/v1/clusters/:cluster/scan-report', {
    config: { op: 'cluster.scan-report', access: { roles: ['key-admin'], apps: 'granted' } },
    schema: {
      tags: ['clusters'],
      summary: 'Record the result of scanning a cluster\'s etcd (keyhaven k8s scan); the latest report per cluster is kept',
      params: z.strictObject({ cluster: clusterName }),
      body: scanReportBody,
      response: { 200: scanReport, 400: errorResponse, 403: errorResponse },
    },
  }, async (req) => {
    const b = req.body;
    const p = principalOf(req);
    const cluster = req.params.cluster;
    // The latest report decides the retire check for a cluster: an app may
    // report only a cluster its own plugin serves; a key-admin, any.
    if (p.kind === 'app' && !(await core.store.listPluginReports({ appId: p.id })).some((x) => x.cluster === cluster)) {
      throw new KeyhavenError('permission_denied', `app "${p.name}" runs no KMS plugin that reports cluster "${cluster}": only that cluster's plugin app or a key-admin may report its scan`);
    }
    const now = Date.now();
    const scannedAt = Date.parse(b.scannedAt);
    if (scannedAt > now + MAX_FUTURE_MS) {
      throw new KeyhavenError('invalid_argument', `scannedAt ${b.scannedAt} is more than 5 minutes after the server's time (${new Date(now).toISOString()}): check the scanning host's clock`);
    }
    const row: ScanReportRow = {
      cluster,
      scanned_at: new Date(scannedAt).toISOString(),
      source: b.source,
      objects: b.objects,
      plaintext: b.plaintext,
      by_key_id: JSON.stringify(b.byKeyId.map((e) => ({ keyId: e.keyId, count: e.count }))),
      by_form: JSON.stringify(b.byForm.map((e) => ({ form: e.form, ...(e.provider !== undefined ? { provider: e.provider } : {}), count: e.count }))),
      reporter: actorName(p),
      received_at: new Date(now).toISOString(),
    };
    await core.store.putScanReport(row);
    Object.assign(req.auditNote.details, { cluster: row.cluster, objects: row.objects, plaintext: row.plaintext, keyIds: b.byKeyId.length });
    return reportView(row);
  });

  r.get('/v1/clusters/scan-reports', {
    config: { op: 'cluster.scan-reports', access: { roles: ['key-admin', 'auditor', 'security-admin'] } },
    schema: { tags: ['clusters'], summary: 'The latest scan report of each cluster', response: { 200: z.object({ reports: z.array(scanReport) }) } },
  }, async () => ({ reports: (await core.store.listScanReports()).map(reportView) }));

  r.get('/v1/keys/:name/versions/:version/retire-check', {
    config: { op: 'key.retire-check', access: { roles: ['key-admin', 'auditor'] } },
    schema: {
      tags: ['keys'],
      summary: 'Whether a key version can be retired (minDecryptionVersion raised past it) without leaving objects no cluster can read',
      params: keyNameParam.extend({ version: z.coerce.number().int('must be a version number').min(1, 'must be a version number').max(0xffffffff) }),
      response: { 200: retireCheck, 404: errorResponse },
    },
  }, async (req) => {
    const s = core.services();
    const { name, version } = req.params;
    const k = await s.keys.get(name);
    const v = k.versions.find((x) => x.version === version);
    if (!v) throw new KeyhavenError('not_found', `key "${name}" has no version ${version} (versions 1 to ${k.currentVersion})`);
    req.auditNote.keyVersion = version;
    const keyId = formatKeyId(s.storeId, k.id, version, v.tag);
    const reasons: string[] = [];
    if (version === k.currentVersion) reasons.push(`version ${version} is the key's current version: new objects are written under it (rotate first)`);

    // Plugin reports of this key, by cluster.
    const reports = await core.store.listPluginReports({ keyName: name });
    const clusters = reports.filter((x) => x.key_version === version).map((x) => ({ cluster: x.cluster, node: x.node, keyVersion: x.key_version, lastSeen: x.last_seen }));
    for (const c of clusters) reasons.push(`cluster ${c.cluster} node ${c.node} still reports version ${version} as current (last seen ${c.lastSeen})`);

    const scans = new Map((await core.store.listScanReports()).map((x) => [x.cluster, x]));
    const objects: { cluster: string; scannedAt: string; count: number }[] = [];
    for (const scan of scans.values()) {
      const n = (JSON.parse(scan.by_key_id) as { keyId: string; count: number }[]).find((e) => e.keyId === keyId)?.count ?? 0;
      if (n > 0) {
        objects.push({ cluster: scan.cluster, scannedAt: scan.scanned_at, count: n });
        reasons.push(`the latest scan of cluster ${scan.cluster} (${scan.scanned_at}) found ${n} object${n === 1 ? '' : 's'} under this version`);
      }
      // A KMS v1 value holds no key_id: its DEK is wrapped by whatever version
      // was current, which a scan cannot read. Any of them leaves every version in doubt.
      const v1 = (JSON.parse(scan.by_form) as { form: string; count: number }[]).filter((e) => e.form === 'kms-v1').reduce((sum, e) => sum + e.count, 0);
      if (v1 > 0) {
        reasons.push(`the latest scan of cluster ${scan.cluster} (${scan.scanned_at}) found ${v1} KMS v1 value${v1 === 1 ? '' : 's'} whose key version a scan cannot read; move them to KMS v2 first`);
      }
    }

    // A cluster that moved on may still hold objects written before: only a
    // scan made at least SETTLE_MS after its last node moved to another
    // version shows it holds none.
    const lastUse = new Map<string, number>();
    for (const x of reports) {
      const at = Date.parse(x.key_version === version ? x.last_seen : (x.version_since ?? x.first_seen));
      const cur = lastUse.get(x.cluster);
      if (cur === undefined || at > cur) lastUse.set(x.cluster, at);
    }
    const unscanned: string[] = [];
    for (const [cluster, at] of lastUse) {
      const scan = scans.get(cluster);
      // The server's receipt time bounds a scan's own date: a scanner's clock running ahead does not make it later.
      const scanned = scan === undefined ? undefined : Math.min(Date.parse(scan.scanned_at), Date.parse(scan.received_at));
      if (scanned !== undefined && scanned >= at + SETTLE_MS) continue;
      unscanned.push(cluster);
      const moved = new Date(at).toISOString();
      reasons.push(scan === undefined
        ? `cluster ${cluster} used key "${name}" and has never been scanned: unknown whether it holds objects under version ${version} (run keyhaven k8s scan)`
        : scanned! <= at
          ? `cluster ${cluster} was last scanned at ${scan.scanned_at}, before it stopped using version ${version} (${moved}): scan it again`
          : `cluster ${cluster} was last scanned at ${scan.scanned_at}, less than 3 minutes after it stopped using version ${version} (${moved}); its apiserver may write with the old key_id for up to 3 minutes: scan it again after ${new Date(at + SETTLE_MS).toISOString()}`);
    }

    // Apps may use the key through any API (Vault Transit, DSM) without a
    // plugin report: the check cannot know which versions their data is under.
    const reporting = new Set(reports.map((x) => x.app_id));
    const apps = new Map((await core.store.listPrincipals('app')).map((a) => [a.id, a]));
    const unreportedApps: string[] = [];
    for (const g of await core.store.listGrants({ keyId: k.id })) {
      const a = apps.get(g.principal_id);
      if (a === undefined || a.break_glass === 1 || reporting.has(a.id)) continue;
      if (!(JSON.parse(g.operations) as string[]).includes('decrypt')) continue;
      unreportedApps.push(a.name);
    }
    unreportedApps.sort();
    for (const a of unreportedApps) reasons.push(`app ${a} can decrypt with this key but has never reported which version it uses`);

    if (reports.length === 0 && objects.length === 0) {
      reasons.push(`no cluster has reported using key "${name}": unknown where its ciphertexts are, so not safe`);
    }
    const safe = reasons.length === 0;
    if (safe) reasons.push(`no cluster reports version ${version}, every cluster that used key "${name}" was scanned at least 3 minutes after it moved on, with no object under it, and every app that can decrypt with it reports its version`);
    req.auditNote.details.safe = safe;
    return { key: name, version, keyId, safe, reasons, clusters, objects, unscanned, unreportedApps };
  });
}
