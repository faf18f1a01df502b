// The alert engine's CPU per reading at a steady low rate (docs/performance.md, "small alert
// batches on the event loop"): 100 patients, six vital signs in turn, one reading every 1/rate s,
// 5 s of warm-up, then `seconds` measured. Prints this process's CPU (all threads; the driver's
// own timers included: ~160 µs a reading at 100/s, ~40 at 1,000/s), the CPU of the database's
// Postgres backends (/proc, so Linux only), the process's threads and RSS at the end.
// Run: node --import tsx bench/alert-engine-cost.ts [rate (1000)] [seconds (20)] [single|shared|embedded] [inline readings|-] [batch window ms (50)] [state save interval ms (1000)]
// (embedded: one process on a fresh PGlite, which runs in this process, so its CPU is the process's).
// against the machine's Postgres (VIGIL_TEST_PG_URL or postgres://postgres@127.0.0.1:5432/postgres).
import fs from 'node:fs'
import pino from 'pino'
import { Registry } from 'prom-client'
import { startAlertEngine } from '../alerts/engine/alert-engine.ts'
import { startRulesFile } from '../alerts/engine/rules-file.ts'
import { defaultAlertRulesPath } from '../config/config.ts'
import { openDatabase } from '../store/database.ts'
import { createTestDatabase, serverUrl } from '../test/helpers/postgres.ts'
import { postgresBackendsMeter } from './shared-meters.ts'
import { testKeyring } from '../test/helpers/keys.ts'

const rate = Number(process.argv[2] ?? 1000)
const seconds = Number(process.argv[3] ?? 20)
const shared = process.argv[4] === 'shared'
const embedded = process.argv[4] === 'embedded'
const patients = 100
const ids = Array.from({ length: patients }, (_, i) => `00000000-0000-4000-8000-${i.toString(16).padStart(12, '0')}`)
const testDb = await createTestDatabase()
// This database's Postgres backends, as the bench counts them: CPU µs by pid.
const backends = postgresBackendsMeter(serverUrl, new URL(testDb.url).pathname.slice(1))
const backendsCpuMs = async (): Promise<number> => Object.values(await backends.read()).reduce((a, b) => a + b, 0) / 1000
const log = pino({ level: 'warn' })
const pgliteDir = embedded ? fs.mkdtempSync('/tmp/vigil-engine-cost-') : ''
const db = await openDatabase({ databaseUrl: embedded ? null : testDb.url, dataDir: pgliteDir, log })
const rulesFile = await startRulesFile({ pool: db.pool, path: defaultAlertRulesPath, log })
const engine = await startAlertEngine({ keyring: testKeyring(), pool: db.pool, rulesFile, workerThreads: 2, log, registry: new Registry(), writeDerived: async () => {}, sharedState: shared, inlineReadings: process.argv[5] === undefined || process.argv[5] === '-' ? undefined : Number(process.argv[5]), flushIntervalMs: Number(process.argv[6] ?? 50), stateSaveIntervalMs: Number(process.argv[7] ?? 1000), sink: { async apply () {} } })
const metrics = ['heart_rate', 'spo2', 'resp_rate', 'body_temp', 'bp_systolic', 'bp_diastolic']
const values = [80, 96, 16, 37, 120, 80]
async function drive (s: number): Promise<void> {
  const total = rate * s; const t0 = Date.now(); const started = performance.now()
  for (let i = 0; i < total; i++) {
    const due = started + (i / rate) * 1000; const wait = due - performance.now()
    if (wait > 1) await new Promise((resolve) => setTimeout(resolve, wait))
    const k = i % metrics.length
    engine.onAccepted([{ patientId: ids[i % patients]!, deviceId: ids[i % patients]!, metric: metrics[k]!, value: values[k]! + (i % 3), unit: 'x', ts: t0 + i, seq: null }])
  }
  await engine.flush()
}
await drive(5)
const b0 = await backendsCpuMs(); const c0 = process.cpuUsage()
await drive(seconds)
const c = process.cpuUsage(c0); const b = await backendsCpuMs() - b0
const n = rate * seconds
const threads = fs.readdirSync('/proc/self/task').length
const rss = Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'))![1]) / 1024
console.log(`${process.argv[4] ?? 'single'} ${rate}/s ${seconds}s: process ${((c.user + c.system) / n).toFixed(1)} µs/reading, postgres ${(b * 1000 / n).toFixed(1)} µs/reading, threads ${threads}, rss ${rss.toFixed(0)} MB`)
await engine.close(); await rulesFile.close(); await db.close(); await backends.close(); await testDb.drop()
if (embedded) fs.rmSync(pgliteDir, { recursive: true, force: true })
