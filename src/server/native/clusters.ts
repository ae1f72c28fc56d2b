import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { KeyhavenError } from '../../errors.js';
import { formatKeyId, parseKeyId } from '../../keys/key-id.js';
import type { RouteDeps } from '../route-deps.js';
import { principalOf, requireGrant } from '../pipeline/context.js';
import { errorResponse, keyNameParam, principalNameParam } from '../schemas.js';

// The KMS plugin's remote provider probes its key here on every health
// check, and reports which cluster node uses which key version; operators
// read those reports before retiring old versions.

/** A string check that stops at the first failure, so an oversized value gets one precise message. */
export const bounded = (min: number, max: number) =>
  z.string().min(min, { error: `must have at least ${min} character${min === 1 ? '' : 's'}`, abort: true }).max(max, { error: `must have at most ${max} characters`, abort: true });

export const clusterName = bounded(1, 63).regex(/^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$/, 'must be a cluster name: lower-case letters, digits, "." or "-", starting and ending with a letter or digit');
const nodeName = bounded(1, 253).regex(/^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$/, 'must be a host name: letters, digits, "." or "-", starting and ending with a letter or digit');
const printable = (max: number) => bounded(1, max).regex(/^[\x21-\x7e]+$/, 'must be printable ASCII without spaces');
export const isoTime = bounded(1, 64).pipe(z.iso.datetime({ offset: true, error: 'must be an ISO 8601 date-time such as 2026-01-31T12:00:00Z' }));

const statusBody = z
  .strictObject({
    cluster: clusterName.optional().describe('the cluster the plugin serves; with it (and node) the report is recorded'),
    node: nodeName.optional().describe('the plugin host\'s name; required with cluster'),
    pluginVersion: printable(64).optional(),
    keyId: printable(1024).optional().describe('the key_id the plugin reports to its apiserver'),
    lastSuccess: isoTime.optional().describe('the plugin\'s last successful Status'),
  })
  .refine((b) => b.cluster === undefined || b.node !== undefined, { error: 'is required when cluster is given', path: ['node'] })
  .optional();

const statusAnswer = z.object({
  keyId: z.string().describe('kh1:<store id>:<key ref>:<version>:<version tag> of the current version'),
  name: z.string(),
  version: z.number(),
  minDecryptionVersion: z.number(),
  state: z.literal('enabled'),
  liveKeyIds: z.array(z.string()).describe('the key_ids of every version that can still decrypt (not destroyed, not below minDecryptionVersion)'),
});

const clusterInfo = z.object({
  app: z.string(),
  cluster: z.string(),
  node: z.string(),
  key: z.string(),
  keyId: z.string(),
  keyVersion: z.number(),
  pluginVersion: z.string(),
  lastSuccess: z.string().nullable(),
  lastSeen: z.string(),
  firstSeen: z.string(),
  source: z.string(),
});

export function registerClusterRoutes(app: FastifyInstance, { core }: RouteDeps): void {
  const r = app.withTypeProvider<ZodTypeProvider>();

  r.post('/v1/keys/:name/status', {
    config: { op: 'plugin.status', access: { apps: 'granted' } },
    schema: {
      tags: ['crypto'],
      summary: 'Self-test the key\'s current version (encrypt and decrypt) for a KMS plugin holding the encrypt and decrypt grants, and record its cluster report',
      params: keyNameParam,
      body: statusBody,
      response: { 200: statusAnswer, 403: errorResponse, 409: errorResponse, 410: errorResponse },
    },
  }, async (req) => {
    const s = core.services();
    const name = req.params.name;
    // A plugin needs both: without decrypt its Status must fail, not keep serving cached KEKs.
    await requireGrant(s, req, name, 'encrypt');
    await requireGrant(s, req, name, 'decrypt');
    // Read from storage, not the cache: another server sharing the database
    // may have disabled or rotated the key, and the plugin must hear it now.
    const info = await s.keys.refresh(name);
    if (info.state === 'pending_destruction' || info.state === 'destroyed') {
      throw new KeyhavenError('key_destroyed', `key "${name}" is ${info.state === 'destroyed' ? 'destroyed' : 'scheduled for destruction'}`);
    }
    // Refuses a disabled key (key_disabled), as encrypt does.
    const rt = await s.keys.roundTrip(name, new Set([name]));
    const keyId = formatKeyId(s.storeId, rt.keyId, rt.version, rt.versionTag);
    req.auditNote.keyVersion = rt.version;

    const b = req.body ?? {};
    if (b.cluster !== undefined && b.node !== undefined) {
      let version = rt.version;
      if (b.keyId !== undefined) {
        try {
          version = parseKeyId(b.keyId).version;
        } catch {
          // another provider's key_id: keep the current version
        }
      }
      const now = new Date().toISOString();
      // Kept while the node reports the same key and version: a retire check needs to know when it moved on.
      const before = (await core.store.listPluginReports({ appId: principalOf(req).id, keyName: name })).find((x) => x.cluster === b.cluster && x.node === b.node);
      const since = before !== undefined && before.key_version === version ? before.version_since : now;
      await core.store.upsertPluginReport({
        app_id: principalOf(req).id,
        cluster: b.cluster,
        node: b.node,
        key_name: name,
        key_id: b.keyId ?? keyId,
        key_version: version,
        plugin_version: b.pluginVersion ?? '',
        last_success: b.lastSuccess === undefined ? null : new Date(b.lastSuccess).toISOString(),
        last_seen: now,
        first_seen: now,
        source: req.ip,
        version_since: since,
      });
      req.auditNote.details.reported = true;
    }
    // Every key_id Decrypt may still be given, so a plugin can refuse any other at once.
    const liveKeyIds = [...s.keys.liveVersionTags(name)].map(([v, tag]) => formatKeyId(s.storeId, rt.keyId, v, tag));
    return { keyId, name, version: rt.version, minDecryptionVersion: info.minDecryptionVersion, state: 'enabled' as const, liveKeyIds };
  });

  r.get('/v1/clusters', {
    config: { op: 'cluster.list', access: { roles: ['security-admin', 'key-admin', 'auditor'] } },
    schema: {
      tags: ['clusters'],
      summary: 'What each cluster node\'s KMS plugin last reported: which key and version it writes with',
      querystring: z.strictObject({
        key: keyNameParam.shape.name.optional().describe('only plugins using this key'),
        app: principalNameParam.shape.name.optional().describe('only plugins of this app'),
      }),
      response: { 200: z.object({ clusters: z.array(clusterInfo) }), 404: errorResponse },
    },
  }, async (req) => {
    const s = core.services();
    const { key, app: appName } = req.query;
    // An unknown name is an error, not an empty list: a typo must not read as "no cluster uses this key".
    if (key !== undefined) await s.keys.get(key);
    const apps = await core.store.listPrincipals('app');
    let appId: string | undefined;
    if (appName !== undefined) {
      appId = apps.find((a) => a.name === appName)?.id;
      if (appId === undefined) throw new KeyhavenError('not_found', `app "${appName}" does not exist`);
    }
    const names = new Map(apps.map((a) => [a.id, a.name]));
    const rows = await core.store.listPluginReports({ appId, keyName: key });
    const clusters = rows
      .map((c) => ({
        app: names.get(c.app_id) ?? c.app_id,
        cluster: c.cluster,
        node: c.node,
        key: c.key_name,
        keyId: c.key_id,
        keyVersion: c.key_version,
        pluginVersion: c.plugin_version,
        lastSuccess: c.last_success,
        lastSeen: c.last_seen,
        firstSeen: c.first_seen,
        source: c.source,
      }))
      // The store orders by app id; operators read by app name.
      .sort((x, y) => (x.app < y.app ? -1 : x.app > y.app ? 1 : 0));
    req.auditNote.details.clusters = clusters.length;
    return { clusters };
  });
}
