import { type Kysely, type Migration, type MigrationProvider } from 'kysely';

export type SqlDialect = 'sqlite' | 'postgres';

// Migrations live in code (not files) so a bundled or compiled keyhaven always
// carries exactly the schema it expects. Append only; never edit a shipped one.
// Column types differ per dialect only where SQL does (bytes, 64-bit ints).
function migrations(dialect: SqlDialect): Record<string, Migration> {
  const bytes = dialect === 'postgres' ? 'bytea' : 'blob';
  const seqType = dialect === 'postgres' ? 'bigint' : 'integer';
  return {
  '0001_initial': {
    async up(db: Kysely<any>) {
      await db.schema
        .createTable('meta')
        .addColumn('name', 'text', (c) => c.primaryKey())
        .addColumn('value', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('barrier')
        .addColumn('path', 'text', (c) => c.primaryKey())
        .addColumn('value', bytes, (c) => c.notNull())
        .addColumn('updated_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('keys')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull().unique())
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('current_version', 'integer', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('updated_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('key_versions')
        .addColumn('key_id', 'text', (c) => c.notNull().references('keys.id'))
        .addColumn('version', 'integer', (c) => c.notNull())
        .addColumn('tag', 'text', (c) => c.notNull())
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('destroyed_at', 'text')
        .addPrimaryKeyConstraint('key_versions_pk', ['key_id', 'version'])
        .execute();
      await db.schema
        .createTable('audit')
        .addColumn('seq', seqType, (c) => c.primaryKey())
        .addColumn('time', 'text', (c) => c.notNull())
        .addColumn('actor', 'text', (c) => c.notNull())
        .addColumn('operation', 'text', (c) => c.notNull())
        .addColumn('key_name', 'text')
        .addColumn('key_version', 'integer')
        .addColumn('result', 'text', (c) => c.notNull())
        .addColumn('request_id', 'text')
        .addColumn('details', 'text')
        .addColumn('prev_hash', 'text', (c) => c.notNull())
        .addColumn('hash', 'text', (c) => c.notNull())
        .execute();
      // No index on time: every request writes a record, and seq already
      // orders records by time for range scans.
    },
  },
  '0002_server': {
    async up(db: Kysely<any>) {
      await db.schema.alterTable('keys').addColumn('rotation_period_s', 'integer').execute();
      await db.schema.alterTable('keys').addColumn('next_rotation_at', 'text').execute();
      await db.schema.alterTable('keys').addColumn('min_decryption_version', 'integer', (c) => c.notNull().defaultTo(1)).execute();
      await db.schema.alterTable('keys').addColumn('destroy_at', 'text').execute();
      await db.schema
        .createTable('principals')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull().unique())
        .addColumn('kind', 'text', (c) => c.notNull())
        .addColumn('roles', 'text', (c) => c.notNull())
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('failed_logins', 'integer', (c) => c.notNull().defaultTo(0))
        .addColumn('locked_until', 'text')
        .addColumn('cert_fingerprint', 'text', (c) => c.unique())
        .addColumn('description', 'text')
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('updated_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('credentials')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('principal_id', 'text', (c) => c.notNull().references('principals.id'))
        .addColumn('kind', 'text', (c) => c.notNull())
        .addColumn('hash', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('expires_at', 'text')
        .addColumn('revoked_at', 'text')
        .execute();
      await db.schema.createIndex('credentials_principal').on('credentials').column('principal_id').execute();
      await db.schema
        .createTable('grants')
        .addColumn('principal_id', 'text', (c) => c.notNull().references('principals.id'))
        .addColumn('key_id', 'text', (c) => c.notNull().references('keys.id'))
        .addColumn('operations', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('created_by', 'text', (c) => c.notNull())
        .addPrimaryKeyConstraint('grants_pk', ['principal_id', 'key_id'])
        .execute();
      await db.schema
        .createTable('approvals')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('operation', 'text', (c) => c.notNull())
        .addColumn('params', 'text', (c) => c.notNull())
        .addColumn('requester_id', 'text', (c) => c.notNull())
        .addColumn('requester_name', 'text', (c) => c.notNull())
        .addColumn('required', 'integer', (c) => c.notNull())
        .addColumn('approvals', 'text', (c) => c.notNull())
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('expires_at', 'text', (c) => c.notNull())
        .addColumn('decided_at', 'text')
        .addColumn('result', 'text')
        .execute();
      // Audit queries filter by principal, key and operation.
      await db.schema.createIndex('audit_actor').on('audit').columns(['actor', 'seq']).execute();
      await db.schema.createIndex('audit_key').on('audit').columns(['key_name', 'seq']).execute();
    },
  },
  '0003_plugin_clusters': {
    async up(db: Kysely<any>) {
      await db.schema
        .createTable('plugin_clusters')
        .addColumn('app_id', 'text', (c) => c.notNull().references('principals.id').onDelete('cascade'))
        .addColumn('cluster', 'text', (c) => c.notNull())
        .addColumn('node', 'text', (c) => c.notNull())
        .addColumn('key_name', 'text', (c) => c.notNull())
        .addColumn('key_id', 'text', (c) => c.notNull())
        // A plugin may report any version a key_id can carry (up to 2^32 - 1), beyond PostgreSQL's integer.
        .addColumn('key_version', seqType, (c) => c.notNull())
        .addColumn('plugin_version', 'text', (c) => c.notNull())
        .addColumn('last_success', 'text')
        .addColumn('last_seen', 'text', (c) => c.notNull())
        .addColumn('first_seen', 'text', (c) => c.notNull())
        .addColumn('source', 'text', (c) => c.notNull())
        .addPrimaryKeyConstraint('plugin_clusters_pk', ['app_id', 'cluster', 'node'])
        .execute();
      await db.schema.createIndex('plugin_clusters_key').on('plugin_clusters').column('key_name').execute();
    },
  },
  '0004_vault_compat': {
    async up(db: Kysely<any>) {
      // Vault Transit key settings. 0 = any version up to the latest (Vault's default).
      await db.schema.alterTable('keys').addColumn('min_encryption_version', 'integer', (c) => c.notNull().defaultTo(0)).execute();
      // 0/1 rather than boolean: SQLite has no boolean type and both dialects then read a number.
      await db.schema.alterTable('keys').addColumn('deletion_allowed', 'integer', (c) => c.notNull().defaultTo(0)).execute();
    },
  },
  '0005_login_throttle': {
    async up(db: Kysely<any>) {
      // Failed sign-ins per (account name, source address), shared by every
      // server on the database. The name is the one tried, existing or not.
      await db.schema
        .createTable('login_throttle')
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('source', 'text', (c) => c.notNull())
        .addColumn('failures', 'integer', (c) => c.notNull())
        .addColumn('locked_until', 'text')
        .addColumn('expires_at', 'text', (c) => c.notNull())
        .addColumn('updated_at', 'text', (c) => c.notNull())
        .addPrimaryKeyConstraint('login_throttle_pk', ['name', 'source'])
        .execute();
      await db.schema.createIndex('login_throttle_expires').on('login_throttle').column('expires_at').execute();
    },
  },
  '0006_recovery': {
    async up(db: Kysely<any>) {
      await db.schema.alterTable('principals').addColumn('break_glass', 'integer', (c) => c.notNull().defaultTo(0)).execute();
      // When a node moved to the version it reports: a retire check needs a scan made after a cluster stopped using a version.
      await db.schema.alterTable('plugin_clusters').addColumn('version_since', 'text').execute();
      // The latest report per cluster only: a scan is repeated, not accumulated.
      await db.schema
        .createTable('scan_reports')
        .addColumn('cluster', 'text', (c) => c.primaryKey())
        .addColumn('scanned_at', 'text', (c) => c.notNull())
        .addColumn('source', 'text', (c) => c.notNull())
        .addColumn('objects', seqType, (c) => c.notNull())
        .addColumn('plaintext', seqType, (c) => c.notNull())
        .addColumn('by_key_id', 'text', (c) => c.notNull())
        .addColumn('by_form', 'text', (c) => c.notNull())
        .addColumn('reporter', 'text', (c) => c.notNull())
        .addColumn('received_at', 'text', (c) => c.notNull())
        .execute();
      // No foreign key to principals: a recovery stays on record after its app is deleted.
      await db.schema
        .createTable('recoveries')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('app_id', 'text', (c) => c.notNull())
        .addColumn('app_name', 'text', (c) => c.notNull())
        .addColumn('reason', 'text', (c) => c.notNull())
        .addColumn('cluster', 'text')
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('approval_id', 'text')
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('opened_at', 'text')
        .addColumn('expires_at', 'text')
        .addColumn('closed_at', 'text')
        .addColumn('closed_by', 'text')
        .addColumn('objects', seqType)
        .addColumn('failed', seqType)
        .execute();
    },
  },
  '0007_app_key_issuers': {
    async up(db: Kysely<any>) {
      // Who made an app and who issued its current API key: neither may approve
      // that app's recovery (they hold, or held, its credentials).
      await db.schema.alterTable('principals').addColumn('created_by', 'text').execute();
      await db.schema.alterTable('principals').addColumn('key_issued_by', 'text').execute();
    },
  },
  };
}

export function migrationProviderFor(dialect: SqlDialect): MigrationProvider {
  return { getMigrations: async () => migrations(dialect) };
}
