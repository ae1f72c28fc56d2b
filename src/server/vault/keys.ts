import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { actorName } from '../../access/access.js';
import { KeyhavenError } from '../../errors.js';
import type { KeyInfo, KeyPolicy } from '../../keys/key-store.js';
import type { RouteDeps } from '../route-deps.js';
import { principalOf, visibleKey } from '../pipeline/context.js';
import { envelope, readBody, sendVaultStatus } from './envelope.js';
import { keyName, vaultKeyView, writeFailed } from './shared.js';
import { guarded } from '../guard.js';

// Transit key management: /v1/transit/keys[/:name[/config|rotate|trim]].
// A Transit key is a keyhaven key (one name space); these routes need the
// key-admin role for changes, like /v1/keys, and audit as the native ones do.

const MIN_AUTO_ROTATE_S = 3600;

function checkAutoRotate(s: number): number | null {
  if (s === 0) return null;
  if (s < MIN_AUTO_ROTATE_S) throw new KeyhavenError('invalid_argument', 'auto rotate period must be 0 to disable or at least an hour');
  return s;
}

export function registerVaultKeyRoutes(app: FastifyInstance, { core }: RouteDeps): void {
  const admin = { roles: ['key-admin'] } as const;
  const readers = { roles: ['key-admin', 'security-admin', 'auditor'] } as const;
  const hide = { hide: true };

  const list = async (req: FastifyRequest, reply: FastifyReply) => {
    const keys = await core.services().keys.list();
    req.auditNote.details.count = keys.length;
    // Vault answers an empty list with 404 and no errors.
    if (keys.length === 0) return sendVaultStatus(req, reply, 404, [], 'not_found');
    return envelope(req, { keys: keys.map((k) => k.name) });
  };
  for (const url of ['/v1/transit/keys', '/v1/transit/keys/']) {
    // GET ?list=true; LIST requests arrive here too, rewritten (compat-vault-list.ts).
    app.get(url, { config: { op: 'transit.keys.list', access: readers }, schema: hide }, async (req, reply) => {
      const q = (req.query as Record<string, unknown>).list;
      if (typeof q === 'string' && /^(?:1|t|T|true|TRUE|True)$/.test(q)) return list(req, reply);
      return sendVaultStatus(req, reply, 405, ['unsupported operation'], 'invalid_argument');
    });
  }

  app.route({
    method: ['POST', 'PUT'],
    url: '/v1/transit/keys/:name',
    config: { op: 'transit.keys.create', access: admin },
    schema: hide,
    handler: async (req) => {
      const warnings: string[] = [];
      const name = keyName(req);
      const b = readBody(req.body, {
        name: 'string',
        type: 'string',
        derived: 'bool',
        convergent_encryption: 'bool',
        exportable: 'bool',
        allow_plaintext_backup: 'bool',
        auto_rotate_period: 'duration',
        key_size: 'int',
        context: 'string',
        managed_key_name: 'string',
        managed_key_id: 'string',
      }, warnings);
      const type = b.type ?? 'aes256-gcm96';
      if (type !== 'aes256-gcm96') throw new KeyhavenError('invalid_argument', `key type ${type.slice(0, 40)} is not supported: keyhaven keys are aes256-gcm96`);
      if (b.derived) throw new KeyhavenError('invalid_argument', 'derived keys are not supported: keyhaven binds "context" as associated data instead (see docs/compat-vault.md)');
      if (b.convergent_encryption) throw new KeyhavenError('invalid_argument', 'convergent encryption is not supported');
      if (b.exportable) throw new KeyhavenError('invalid_argument', 'exportable keys are not supported: key material never leaves keyhaven');
      if (b.allow_plaintext_backup) throw new KeyhavenError('invalid_argument', 'plaintext backups are not supported: key material never leaves keyhaven');
      if (b.key_size) throw new KeyhavenError('invalid_argument', 'key_size is not valid for aes256-gcm96');
      if (b.managed_key_name || b.managed_key_id) throw new KeyhavenError('invalid_argument', 'managed keys are not supported');
      const period = checkAutoRotate(b.auto_rotate_period ?? 0);
      const s = core.services();
      const actor = actorName(principalOf(req));
      let k: KeyInfo;
      try {
        k = await s.keys.create(name, actor, { rotationPeriodS: period });
      } catch (e) {
        // Vault upserts: creating a key that exists answers the key as it is.
        if (!(e instanceof KeyhavenError && e.code === 'already_exists')) throw e;
        k = await s.keys.get(name);
        warnings.push(`key ${name} already existed`);
      }
      req.auditNote.keyVersion = k.currentVersion;
      return envelope(req, vaultKeyView(k), warnings);
    },
  });

  app.get('/v1/transit/keys/:name', { config: { op: 'transit.keys.read', access: { ...readers, apps: 'granted' } }, schema: hide }, async (req, reply) => {
    const name = keyName(req);
    const s = core.services();
    let k: KeyInfo;
    try {
      k = await visibleKey(s, principalOf(req), name, () => new KeyhavenError('permission_denied', `no grant on key "${name}"`));
    } catch (e) {
      // Vault answers a read of a missing key with 404 and no errors.
      if (e instanceof KeyhavenError && e.code === 'not_found') return sendVaultStatus(req, reply, 404, [], 'not_found');
      throw e;
    }
    req.auditNote.keyVersion = k.currentVersion;
    return envelope(req, vaultKeyView(k));
  });

  app.delete('/v1/transit/keys/:name', { config: { op: 'transit.keys.delete', access: admin }, schema: hide }, async (req, reply) => {
    const name = keyName(req);
    const s = core.services();
    const k = await s.keys.get(name).catch(writeFailed(`error deleting policy ${name}: could not delete key; not found`));
    if (!k.deletionAllowed) throw new KeyhavenError('failed_precondition', `error deleting policy ${name}: deletion is not allowed for this policy`);
    // Deleting destroys the material: where a quorum guards key destruction,
    // a key still holding material goes through the native, approved destroy first.
    if (k.state !== 'destroyed' && (await s.quorum.needsApproval('key.destroy'))) {
      throw new KeyhavenError('permission_denied', `deleting key "${name}" needs quorum approval (key.destroy is guarded): destroy it with POST /v1/keys/${name}/destroy and its approvals, then delete it here`);
    }
    await s.keys.delete(name, actorName(principalOf(req)));
    req.auditNote.keyVersion = k.currentVersion;
    return reply.code(204).send();
  });

  app.route({
    method: ['POST', 'PUT'],
    url: '/v1/transit/keys/:name/config',
    config: { op: 'transit.keys.config', access: admin },
    schema: hide,
    handler: async (req, reply) => {
      const warnings: string[] = [];
      const name = keyName(req);
      const b = readBody(req.body, {
        name: 'string',
        min_decryption_version: 'int',
        min_encryption_version: 'int',
        deletion_allowed: 'bool',
        exportable: 'bool',
        allow_plaintext_backup: 'bool',
        auto_rotate_period: 'duration',
      }, warnings);
      if (b.exportable) throw new KeyhavenError('invalid_argument', 'exportable keys are not supported: key material never leaves keyhaven');
      if (b.allow_plaintext_backup) throw new KeyhavenError('invalid_argument', 'plaintext backups are not supported: key material never leaves keyhaven');
      const s = core.services();
      const k = await s.keys.get(name).catch(writeFailed(`no existing key named ${name} could be found`));
      const guardedPart: { rotationPeriodS?: number | null; minDecryptionVersion?: number } = {};
      const plainPart: { minEncryptionVersion?: number; deletionAllowed?: boolean } = {};
      if (b.min_decryption_version !== undefined) {
        let v = b.min_decryption_version;
        if (v < 0) throw new KeyhavenError('invalid_argument', 'min decryption version cannot be negative');
        if (v === 0) {
          v = 1;
          warnings.push('transit key numbering starts at 1; forcing minimum to 1');
        }
        if (v > k.currentVersion) throw new KeyhavenError('invalid_argument', `cannot set min decryption version of ${v}, latest key version is ${k.currentVersion}`);
        if (v !== k.minDecryptionVersion) guardedPart.minDecryptionVersion = v;
      }
      if (b.min_encryption_version !== undefined) {
        const v = b.min_encryption_version;
        if (v < 0) throw new KeyhavenError('invalid_argument', 'min encryption version cannot be negative');
        if (v > k.currentVersion) throw new KeyhavenError('invalid_argument', `cannot set min encryption version of ${v}, latest key version is ${k.currentVersion}`);
        if (v !== k.minEncryptionVersion) plainPart.minEncryptionVersion = v;
      }
      if (b.deletion_allowed !== undefined && b.deletion_allowed !== k.deletionAllowed) plainPart.deletionAllowed = b.deletion_allowed;
      if (b.auto_rotate_period !== undefined) {
        const period = checkAutoRotate(b.auto_rotate_period);
        if (period !== k.rotationPeriodS) guardedPart.rotationPeriodS = period;
      }
      const changes: KeyPolicy = { ...guardedPart, ...plainPart };
      if (Object.keys(changes).length === 0) return envelope(req, vaultKeyView(k), warnings);
      for (const [field, v] of Object.entries(changes)) req.auditNote.details[field] = v === null ? 'off' : (v as number | boolean);

      // Rotation policy and minimum decryption version are key.policy, which a quorum may guard.
      if (Object.keys(guardedPart).length && (await s.quorum.needsApproval('key.policy'))) {
        if (Object.keys(plainPart).length) {
          throw new KeyhavenError('invalid_argument', 'min_decryption_version and auto_rotate_period need quorum approval here; send min_encryption_version and deletion_allowed in a separate request');
        }
        const params: Record<string, unknown> = { key: name, ...guardedPart };
        const out = (await guarded(s, req, reply, 'key.policy', params)) as { approval: { id: string } };
        warnings.push(`this change needs quorum approval: request ${out.approval.id} was filed and takes effect once approved (GET /v1/approvals/${out.approval.id})`);
        return envelope(req, { approval: out.approval }, warnings);
      }
      const updated = await s.keys.setPolicy(name, changes, actorName(principalOf(req)));
      return envelope(req, vaultKeyView(updated), warnings);
    },
  });

  app.route({
    method: ['POST', 'PUT'],
    url: '/v1/transit/keys/:name/rotate',
    config: { op: 'transit.keys.rotate', access: admin },
    schema: hide,
    handler: async (req) => {
      const warnings: string[] = [];
      const name = keyName(req);
      const b = readBody(req.body, { name: 'string', managed_key_name: 'string', managed_key_id: 'string' }, warnings);
      if (b.managed_key_name || b.managed_key_id) throw new KeyhavenError('invalid_argument', 'managed keys are not supported');
      const k = await core.services().keys.rotate(name, actorName(principalOf(req))).catch(writeFailed('key not found'));
      req.auditNote.keyVersion = k.currentVersion;
      return envelope(req, vaultKeyView(k), warnings);
    },
  });

  app.route({
    method: ['POST', 'PUT'],
    url: '/v1/transit/keys/:name/trim',
    config: { op: 'transit.keys.trim', access: admin },
    schema: hide,
    handler: async (req) => {
      const warnings: string[] = [];
      const name = keyName(req);
      const b = readBody(req.body, { name: 'string', min_available_version: 'int' }, warnings);
      const s = core.services();
      await s.keys.get(name).catch(writeFailed('invalid key name'));
      if (b.min_available_version === undefined) throw new KeyhavenError('invalid_argument', 'missing min_available_version');
      req.auditNote.details.minAvailableVersion = b.min_available_version;
      // Trimming destroys versions' material at once: where a quorum guards key
      // destruction it has no approved path here, as delete has none.
      if (await s.quorum.needsApproval('key.destroy')) {
        throw new KeyhavenError('permission_denied', `trimming key "${name}" destroys key versions, which needs quorum approval (key.destroy is guarded); raise min_decryption_version to retire old versions, or destroy the key with POST /v1/keys/${name}/destroy and its approvals`);
      }
      const k = await s.keys.trim(name, b.min_available_version, actorName(principalOf(req)));
      return envelope(req, vaultKeyView(k), warnings);
    },
  });
}
