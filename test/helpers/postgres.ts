import { randomBytes } from 'node:crypto'
import pg from 'pg'

/** The machine's PostgreSQL (CI and dev machines: 127.0.0.1:5432, trust auth). */
export const serverUrl = process.env.VIGIL_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'

/** Creates an empty database for one test file; returns its URL and a drop function. */
export async function createTestDatabase (): Promise<{ url: string, drop: () => Promise<void> }> {
  const name = `vigil_test_${randomBytes(6).toString('hex')}`
  const admin = new pg.Client({ connectionString: serverUrl })
  await admin.connect()
  try {
    await admin.query(`CREATE DATABASE ${name}`)
  } finally {
    await admin.end()
  }
  const url = new URL(serverUrl)
  url.pathname = `/${name}`
  return {
    url: url.toString(),
    drop: async () => {
      const c = new pg.Client({ connectionString: serverUrl })
      await c.connect()
      try {
        await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
      } finally {
        await c.end()
      }
    }
  }
}
