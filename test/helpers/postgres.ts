import { randomBytes } from 'node:crypto'
import pg from 'pg'
import { createLogger } from '../../observability/logger.ts'
import { openDatabase, type Database } from '../../store/database.ts'
import { schemaKey } from './schema-key.ts'
import { waitFor } from './wait.ts'

/** The machine's PostgreSQL (CI and dev machines: 127.0.0.1:5432, trust auth). */
export const serverUrl = process.env.VIGIL_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'

const templatePrefix = 'vigil_test_template_'

function urlOf (name: string): string {
  const url = new URL(serverUrl)
  url.pathname = `/${name}`
  return url.toString()
}

async function withAdmin<T> (fn: (admin: pg.Client) => Promise<T>): Promise<T> {
  const admin = new pg.Client({ connectionString: serverUrl })
  await admin.connect()
  try {
    return await fn(admin)
  } finally {
    await admin.end()
  }
}

/**
 * The migrated template database for this schema (`vigil_test_template_<schema key>`), built by
 * the first caller under an advisory lock: a real `openDatabase` (every migration) on an empty
 * database, which then refuses connections so that `CREATE DATABASE … TEMPLATE` can copy it.
 * Copying takes about 0.3 s where migrating takes 2 s or more on a busy machine.
 */
export async function ensurePostgresTemplate (): Promise<string> {
  const name = templatePrefix + await schemaKey('postgres')
  await withAdmin(async (admin) => {
    await admin.query('SELECT pg_advisory_lock(hashtext($1))', [name])
    try {
      const found = await admin.query('SELECT datallowconn FROM pg_database WHERE datname = $1', [name])
      if (found.rowCount === 1 && found.rows[0].datallowconn === false) return
      // A template left half-built by a killed run is rebuilt.
      await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
      await admin.query(`CREATE DATABASE ${name}`)
      const db = await openDatabase({ databaseUrl: urlOf(name), dataDir: '', log: createLogger('silent') })
      await db.close()
      await admin.query(`ALTER DATABASE ${name} WITH ALLOW_CONNECTIONS false`)
    } finally {
      await admin.query('SELECT pg_advisory_unlock(hashtext($1))', [name])
    }
  })
  return name
}

/** Drops every test template (the tap `after` script: tests clean up what they create on the shared server). */
export async function dropPostgresTemplates (): Promise<void> {
  await withAdmin(async (admin) => {
    const { rows } = await admin.query<{ datname: string }>('SELECT datname FROM pg_database WHERE datname LIKE $1', [`${templatePrefix}%`])
    for (const { datname } of rows) await admin.query(`DROP DATABASE IF EXISTS ${datname} WITH (FORCE)`)
  })
}

let template: Promise<string> | undefined

/**
 * Creates a database for one test file; returns its URL and a drop function. It already holds
 * every migration (a copy of the migrated template), unless `empty` asks for a database with
 * nothing in it (tests of the migrations themselves).
 */
export async function createTestDatabase (options: { empty?: boolean } = {}): Promise<{ url: string, drop: () => Promise<void> }> {
  const name = `vigil_test_${randomBytes(6).toString('hex')}`
  if (options.empty === true) {
    await withAdmin(async (admin) => await admin.query(`CREATE DATABASE ${name}`))
  } else {
    for (let attempt = 0; ; attempt++) {
      template ??= ensurePostgresTemplate()
      const source = await template
      try {
        await withAdmin(async (admin) => await admin.query(`CREATE DATABASE ${name} TEMPLATE ${source}`))
        break
      } catch (err) {
        // Another run's `after` script dropped the template meanwhile (3D000), or is dropping it (55006): build it again.
        const code = (err as { code?: string }).code
        if (attempt >= 2 || (code !== '3D000' && code !== '55006')) throw err
        template = undefined
      }
    }
  }
  return {
    url: urlOf(name),
    drop: async () => {
      await withAdmin(async (admin) => {
        // pg's pool.end() resolves once it has sent its clients' goodbyes, not once their sessions
        // have ended: DROP … WITH (FORCE) right after it terminated a session still closing, and
        // the pool, which had no 'error' listener to catch the 57P01 (tests' pools rarely do),
        // threw it as an uncaught exception into whichever file was running. So let those
        // sessions end first (2 s at most); FORCE is for the ones a test leaves open on purpose (a
        // killed process's), so running out of time here is not a failure.
        await waitFor(`the sessions of ${name} to end`, async () => (await admin.query<{ n: number }>(
          'SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1', [name])).rows[0]!.n === 0, { timeoutMs: 2000, everyMs: 20 })
          .catch(() => {})
        await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
      })
    }
  }
}

/**
 * A migrated database of its own for a test file (or one test), opened with `openDatabase`;
 * closed and dropped when `t` ends.
 */
export async function openTestDatabase (t: { teardown: (fn: () => Promise<void>) => void }, options: { poolSize?: number } = {}): Promise<Database> {
  const testDb = await createTestDatabase()
  const db = await openDatabase({ databaseUrl: testDb.url, dataDir: '', log: createLogger('silent'), ...options })
  t.teardown(async () => {
    await db.close()
    await testDb.drop()
  })
  return db
}
