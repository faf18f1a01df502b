import { mkdtempSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import t from 'tap'
import { createLogger } from '../../observability/logger.ts'
import { openDatabase } from '../../store/database.ts'
import { seedEmbeddedDatabase } from '../helpers/pglite-template.ts'
import { waitFor } from '../helpers/wait.ts'

// Vigil's hot statements are prepared by name (readings writes, the alert engine's). PGlite keeps
// one backend session for every connection, so its prepared statements outlive the pool's
// connection, while pg forgets them with it: after the pool replaced its connection (a failed
// one), the next named statement failed with "prepared statement … already exists", on every
// retry, unless store/database.ts cleared them on connect.
t.test('embedded: a named statement still runs after the pool replaced its connection', async (t) => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'vigil-prepared-'))
  t.teardown(() => { rmSync(dataDir, { recursive: true, force: true }) })
  await seedEmbeddedDatabase(dataDir)
  const db = await openDatabase({ databaseUrl: null, dataDir, log: createLogger('silent') })
  t.teardown(() => db.close())
  const statement = { name: 'test-prepared', text: 'SELECT $1::int + 1 AS n' }
  t.same((await db.pool.query({ ...statement, values: [1] })).rows, [{ n: 2 }])
  // What the pool does to an idle connection after idleTimeoutMillis, now.
  const client = await db.pool.connect()
  client.release(true)
  // The embedded server takes one connection: a new one is refused until it has seen the old one close.
  await waitFor('a new connection', async () => await db.pool.query('SELECT 1').then(() => true, () => false))
  t.same((await db.pool.query({ ...statement, values: [2] })).rows, [{ n: 3 }], 'prepared again on the new connection')
})
