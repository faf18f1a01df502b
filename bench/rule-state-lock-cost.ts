// What serializing alert rule state in Postgres adds per evaluation batch (issue 16 item 2):
// BEGIN, the patients' advisory transaction locks, loading their state (no cache), COMMIT, on a
// connection of its own. Run: node --import tsx bench/rule-state-lock-cost.ts [patients per batch] [batches]
// against the machine's Postgres (VIGIL_TEST_PG_URL or postgres://postgres@127.0.0.1:5432/postgres).
import { randomUUID } from 'node:crypto'
import pino from 'pino'
import { createRuleStateStore } from '../alerts/engine/rule-state-store.ts'
import { openDatabase } from '../store/database.ts'
import { createTestDatabase } from '../test/helpers/postgres.ts'
import { testKeyring } from '../test/helpers/keys.ts'

const patientsPerBatch = Number(process.argv[2] ?? 50)
const batches = Number(process.argv[3] ?? 400)
const testDb = await createTestDatabase()
const db = await openDatabase({ databaseUrl: testDb.url, dataDir: '', log: pino({ level: 'silent' }) })
try {
  const store = createRuleStateStore(db.pool, testKeyring())
  const ids = Array.from({ length: patientsPerBatch }, () => randomUUID())
  await db.pool.query("INSERT INTO patients (id, display_name) SELECT unnest($1::uuid[]), 'bench'", [ids])
  const state = { r1: { firing: false, since: null }, r2: { firing: true, since: 1 } }
  await store.saveStates(ids.map((patientId) => ({ patientId, state })))
  const time = async (label: string, run: () => Promise<unknown>): Promise<number> => {
    for (let i = 0; i < 20; i++) await run()
    const t0 = performance.now()
    for (let i = 0; i < batches; i++) await run()
    const ms = (performance.now() - t0) / batches
    console.log(`${label}: ${ms.toFixed(3)} ms per batch of ${patientsPerBatch} patients`)
    return ms
  }
  // Today's single-process path: state cached, only the save.
  const cached = await time('cached state, save only', () => store.saveStates(ids.map((patientId) => ({ patientId, state }))))
  const shared = await time('locked: BEGIN, locks, load, save, COMMIT', () => store.withPatientsLocked(ids, async (client) => {
    await store.loadStates(ids, client)
    await store.saveStates(ids.map((patientId) => ({ patientId, state })), client)
  }))
  console.log(`added: ${(shared - cached).toFixed(3)} ms per batch, ${((shared - cached) * 1000 / patientsPerBatch).toFixed(1)} µs per patient`)
} finally {
  await db.close()
  await testDb.drop()
}
