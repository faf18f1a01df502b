import pg from 'pg'
import t from 'tap'
import { createTestDatabase } from '../helpers/postgres.ts'

// The test databases' drop (test/helpers/postgres.ts) right after pools end: pg's pool.end()
// resolves before its sessions have ended, and DROP … WITH (FORCE) then terminated some of them;
// a pool without an 'error' listener threw that 57P01 as an uncaught exception into whichever
// test file was running (the leadership and concurrent-start files failed on it in the fast set).

t.test('dropping a test database right after its pools end terminates none of their sessions', async (t) => {
  let terminated = 0
  for (let i = 0; i < 12; i++) {
    const db = await createTestDatabase({ empty: true })
    const pools = Array.from({ length: 3 }, () => new pg.Pool({ connectionString: db.url, max: 2 }))
    for (const p of pools) p.on('error', () => { terminated++ })
    await Promise.all(pools.map(async (p) => await Promise.all([p.query('SELECT 1'), p.query('SELECT 2')])))
    for (const p of pools) await p.end()
    await db.drop()
  }
  t.equal(terminated, 0, `no session terminated (${terminated} of 72 were)`)
})
