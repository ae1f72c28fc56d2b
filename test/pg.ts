import { randomBytes } from 'node:crypto';
import type { TestContext } from 'node:test';
import pg from 'pg';
import { requireDependency } from './require.js';

// PostgreSQL for tests: each caller gets a database of its own, created
// through the maintenance database and dropped afterwards.
// KEYHAVEN_TEST_PG_URL overrides the server (a URL to its `postgres` database).
const ADMIN_URL = process.env.KEYHAVEN_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

export const POSTGRES_REASON = `PostgreSQL on ${new URL(ADMIN_URL).host}`;

async function admin<T>(fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: ADMIN_URL, connectionTimeoutMillis: 3000 });
  c.on('error', () => {});
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end().catch(() => {});
  }
}

let available: Promise<boolean> | undefined;

/** Whether the test server answers (checked once per process). */
export function postgresAvailable(): Promise<boolean> {
  available ??= admin(async (c) => {
    await c.query('select 1');
    return true;
  }).catch(() => false);
  return available;
}

/** A URL for the given database on the test server. */
function postgresUrl(database: string): string {
  const u = new URL(ADMIN_URL);
  u.pathname = `/${database}`;
  return u.toString();
}

/** Creates an empty database; undefined when PostgreSQL is unreachable. */
export async function freshPostgresDatabase(): Promise<{ url: string; name: string; drop(): Promise<void> } | undefined> {
  if (!(await postgresAvailable())) return undefined;
  const name = `keyhaven_test_${randomBytes(6).toString('hex')}`;
  await admin((c) => c.query(`create database ${name}`));
  return {
    url: postgresUrl(name),
    name,
    // force: ends sessions a test left open (PostgreSQL 13+).
    drop: () => admin(async (c) => void (await c.query(`drop database if exists ${name} with (force)`))),
  };
}

/**
 * Runs fn with the URL of a fresh database, dropped afterwards whatever
 * happens; skips (or, under KEYHAVEN_REQUIRE_ALL, fails) without PostgreSQL.
 */
export async function withPostgresDatabase(t: TestContext, fn: (url: string) => Promise<void>): Promise<void> {
  if (!requireDependency(t, await postgresAvailable(), POSTGRES_REASON)) return;
  const db = await freshPostgresDatabase();
  if (!db) throw new Error('PostgreSQL answered, then could not create a database');
  try {
    await fn(db.url);
  } finally {
    await db.drop();
  }
}
