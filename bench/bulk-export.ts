import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { parseArgs } from 'node:util'
import pino from 'pino'
import { createAccess } from '../access/access.ts'
import { createApiTokenStore } from '../access/api-tokens.ts'
import { createKeyring, newKey } from '../crypto/field-encryption.ts'
import { createDeviceRegistry } from '../devices/device-registry.ts'
import { BULK_EXPORT_JOB, createBulkExports } from '../fhir/bulk/bulk-exports.ts'
import { createJobQueue } from '../jobs/job-queue.ts'
import { startJobRunner } from '../jobs/job-runner.ts'
import { createPatientRecordStore } from '../patients/patient-records.ts'
import { createPatientStore } from '../patients/patients.ts'
import { createPostgresReadingStore } from '../readings/postgres-store.ts'
import { inTransaction, openDatabase } from '../store/database.ts'
import { createTestDatabase } from '../test/helpers/postgres.ts'

// FHIR bulk export memory and speed (docs/performance.md#fhir-bulk-export): seeds N readings
// into a private database on the machine's PostgreSQL with one generate_series statement per
// patient (heart rate + a BP pair per instant), then runs the real `fhir-bulk-export` job
// through the job runner and downloads (decrypts) every file, sampling this process's RSS
// every 50 ms throughout. Flat memory = peak RSS that does not grow with N.
//
//   npm run bench:bulk-export -- --readings 1000000 [--patients 10] [--chunk 5000]

const { values } = parseArgs({
  options: {
    readings: { type: 'string', default: '100000' },
    patients: { type: 'string' },
    chunk: { type: 'string', default: '5000' },
    help: { type: 'boolean', default: false }
  }
})
if (values.help === true) {
  console.log('npm run bench:bulk-export -- --readings N [--patients P (default N / 100,000, at least 10)] [--chunk 5000]')
  process.exit(0)
}
const wanted = Number(values.readings)
const patientCount = Number(values.patients ?? Math.max(10, Math.ceil(wanted / 100_000)))
const chunkSize = Number(values.chunk)
// Three readings per instant (heart_rate, bp_systolic, bp_diastolic): two Observations.
const instantsPerPatient = Math.max(1, Math.round(wanted / patientCount / 3))
const log = pino({ level: 'warn' })
const mb = (bytes: number): number => Math.round(bytes / 1024 / 1024 * 10) / 10

const database = await createTestDatabase()
const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-bench-bulk-'))
const db = await openDatabase({ databaseUrl: database.url, dataDir: '', log })
try {
  const pool = db.pool
  const keyring = createKeyring('k1', new Map([['k1', newKey()]]), newKey())
  const patients = createPatientStore(pool)
  const devices = createDeviceRegistry(pool)
  const tokens = createApiTokenStore(pool)
  const access = createAccess({ pool, patients, tokens, keyring })
  const device = await devices.create({ name: 'bench monitor', mac: 'aa:bb:cc:dd:ee:01', firmwareVersion: '1', softwareVersion: '1', startedAt: '2020-01-01T00:00:00.000Z' }, null)

  const seedStart = performance.now()
  for (let i = 0; i < patientCount; i++) {
    const p = await patients.create(`Bench Patient ${i}`)
    await pool.query(
      `INSERT INTO readings (patient_id, metric, ts, device_id, value, unit)
       SELECT $1, m.metric, timestamptz '2025-01-01' + g * interval '1 minute', $2, m.base + (g % 20), m.unit
       FROM generate_series(1, $3) g,
            (VALUES ('heart_rate', 60, '/min'), ('bp_systolic', 110, 'mm[Hg]'), ('bp_diastolic', 70, 'mm[Hg]')) AS m(metric, base, unit)`,
      [p.id, device.id, instantsPerPatient])
  }
  await pool.query('ANALYZE readings')
  const { rows: [{ n: readingCount }] } = await pool.query('SELECT count(*)::int AS n FROM readings')
  const seedSeconds = (performance.now() - seedStart) / 1000

  const bulk = createBulkExports({
    pool, keyring, readings: createPostgresReadingStore(pool), patients, devices,
    patientRecords: createPatientRecordStore(pool, keyring, log), audit: access.audit, dir, ttlMs: 3_600_000, log, chunkSize
  })
  const queue = createJobQueue({ pool })

  global.gc?.()
  const baseline = process.memoryUsage().rss
  let peak = baseline
  const sampler = setInterval(() => { peak = Math.max(peak, process.memoryUsage().rss) }, 50)

  const exportStart = performance.now()
  const job = await inTransaction(pool, async (client) => {
    const created = await queue.enqueue({ type: BULK_EXPORT_JOB, payload: {}, maxAttempts: 1 }, client)
    await bulk.register(client, created.id, 'token:bench', 'bench', { level: 'system', group: null, types: ['Patient', 'Observation'], since: null, phi: false, request: '/$export' }, null)
    return created
  })
  const runner = startJobRunner({ queue, handlers: { [BULK_EXPORT_JOB]: bulk.handler }, workers: 1, log, pollIntervalMs: 100 })
  let state = 'queued'
  while (state === 'queued' || state === 'running') {
    await new Promise((resolve) => setTimeout(resolve, 200))
    state = (await queue.get(job.id))!.state
  }
  const exportSeconds = (performance.now() - exportStart) / 1000
  await runner.close()
  if (state !== 'succeeded') throw new Error(`export ${state}: ${(await queue.get(job.id))!.error ?? ''}`)
  const exportPeak = peak

  const exp = (await bulk.get(job.id))!
  const downloadStart = performance.now()
  let downloaded = 0
  for (const o of exp.output!) {
    const stream = (await bulk.openFile(exp, o.file))!
    await pipeline(stream, new Writable({ write (chunk: Buffer, _encoding, done) { downloaded += chunk.length; done() } }))
  }
  const downloadSeconds = (performance.now() - downloadStart) / 1000
  clearInterval(sampler)
  const onDisk = (await Promise.all(exp.output!.map(async (o) => (await fs.stat(path.join(bulk.dirOf(job.id), o.file))).size))).reduce((a, b) => a + b, 0)
  const observations = exp.output!.find((o) => o.type === 'Observation')?.count ?? 0

  const result = {
    readings: readingCount as number,
    patients: patientCount,
    chunk: chunkSize,
    observations,
    seedSeconds: Math.round(seedSeconds * 10) / 10,
    exportSeconds: Math.round(exportSeconds * 10) / 10,
    readingsPerSecond: Math.round((readingCount as number) / exportSeconds),
    downloadSeconds: Math.round(downloadSeconds * 10) / 10,
    ndjsonMB: mb(downloaded),
    encryptedMB: mb(onDisk),
    baselineRssMB: mb(baseline),
    peakRssExportMB: mb(exportPeak),
    peakRssMB: mb(peak),
    node: process.version
  }
  console.table(result)
  console.log(JSON.stringify(result))
} finally {
  await db.close()
  await database.drop()
  await fs.rm(dir, { recursive: true, force: true })
}
