// What a shared-state alert batch costs in Postgres round trips (docs/performance.md, "a shared
// batch in four round trips"): the engine's locked batch as it was (BEGIN, locks, state versions,
// settings on another connection, save, COMMIT: six round trips) against withPatientsLocked with
// `read` (BEGIN + locks as one simple query, versions + settings as one prepared statement, save,
// COMMIT: four), each batch followed by a 2 ms pause as between real batches. Prints this process's CPU, the CPU of
// the database's Postgres backends (/proc, so Linux only) and wall time per batch.
// Run: node --import tsx bench/alert-batch-round-trips.ts [patients per batch (5)] [batches (1000)]
// against the machine's Postgres (VIGIL_TEST_PG_URL or postgres://postgres@127.0.0.1:5432/postgres).
import { randomUUID } from 'node:crypto'
import pino from 'pino'
import { createRuleStateStore, PATIENT_RULE_LOCK_SPACE } from '../alerts/engine/rule-state-store.ts'
import { openDatabase } from '../store/database.ts'
import { createTestDatabase, serverUrl } from '../test/helpers/postgres.ts'
import { postgresBackendsMeter } from './shared-meters.ts'
import { testKeyring } from '../test/helpers/keys.ts'
const n = Number(process.argv[2] ?? 5); const batches = Number(process.argv[3] ?? 1000)
const testDb = await createTestDatabase()
// This database's Postgres backends, as the bench counts them: CPU µs by pid.
const backends = postgresBackendsMeter(serverUrl, new URL(testDb.url).pathname.slice(1))
const backendsCpuMs = async (): Promise<number> => Object.values(await backends.read()).reduce((a, b) => a + b, 0) / 1000
const db = await openDatabase({ databaseUrl: testDb.url, dataDir: '', log: pino({ level: 'silent' }) })
const store = createRuleStateStore(db.pool, testKeyring())
const ids = Array.from({ length: n }, () => randomUUID())
await db.pool.query("INSERT INTO patients (id, display_name) SELECT unnest($1::uuid[]), 'bench'", [ids])
const state = { r1: { firing: false, since: null, lastTs: 1 }, r2: { firing: true, since: 1, lastTs: 1 } }
await store.saveStates(ids.map((patientId) => ({ patientId, state })))
const oldWay = async () => {
  const client = await db.pool.connect()
  try {
    await client.query('BEGIN')
    await client.query({ name: 'vigil-lock-patients', text: 'SELECT pg_advisory_xact_lock($1, hashtext(id)) FROM unnest($2::text[]) AS id ORDER BY id', values: [PATIENT_RULE_LOCK_SPACE, ids] })
    await store.stateVersions(ids, client)
    await store.settingsOf(ids)
    await store.saveStates(ids.map((patientId) => ({ patientId, state })), client)
    await client.query('COMMIT')
  } finally { client.release() }
}
const newWay = async () => store.withPatientsLocked(ids, async (client) => { await store.saveStates(ids.map((patientId) => ({ patientId, state })), client) }, { read: true })
for (let round = 0; round < 3; round++) {
  for (const [label, run] of [['old (6 round trips)', oldWay], ['new (4 round trips)', newWay]] as const) {
    for (let i = 0; i < 50; i++) await run()
    const b0 = await backendsCpuMs(); const c0 = process.cpuUsage(); const t0 = performance.now()
    for (let i = 0; i < batches; i++) { await run(); await new Promise((r) => setTimeout(r, 2)) }
    const c = process.cpuUsage(c0); const b = await backendsCpuMs() - b0; const ms = performance.now() - t0 - batches * 2
    console.log(`${label}, ${n} patients: client ${((c.user + c.system) / batches).toFixed(0)} µs, postgres ${(b * 1000 / batches).toFixed(0)} µs, wall ~${(ms * 1000 / batches).toFixed(0)} µs per batch`)
  }
}
await db.close(); await backends.close(); await testDb.drop()
