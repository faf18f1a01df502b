import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import pino from 'pino'
import t from 'tap'
import { buildApi } from '../../api/app.ts'
import { BULK_EXPORT_JOB, createBulkExports } from '../../fhir/bulk/bulk-exports.ts'
import { startJobRunner } from '../../jobs/job-runner.ts'
import { createInfluxReadingStore } from '../../readings/influx-store.ts'
import type { ReadingStore } from '../../readings/reading-store.ts'
import type { StoredReading } from '../../readings/reading.ts'
import { openDatabase } from '../../store/database.ts'
import { apiDepsFor } from '../helpers/api-deps.ts'
import { fhirErrors } from '../helpers/fhir-validation.ts'
import { startInfluxd } from '../helpers/influxd.ts'
import { testKeyring } from '../helpers/keys.ts'
import { seedEmbeddedDatabase } from '../helpers/pglite-template.ts'
import { waitFor } from '../helpers/wait.ts'

// The bulk export on the embedded default (PGlite: metadata and readings) and with readings in
// a real InfluxDB (chunked InfluxQL queries through the same ReadingStore cursor): the same
// readings give the same Observations, BP panels paired across chunk boundaries.

const log = pino({ level: 'silent' })
const influxdStarting = startInfluxd()
influxdStarting.catch(() => {}) // awaited, and reported, below
t.teardown(async () => { await (await influxdStarting).close() })
const dataDir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-bulk-stores-'))
// A copy of the migrated template: process-lifecycle is the fast set's real first start.
const db = await openDatabase({ databaseUrl: null, dataDir: await seedEmbeddedDatabase(dataDir), log })
t.teardown(async () => {
  await db.close()
  await fs.rm(dataDir, { recursive: true, force: true })
})
const deps = apiDepsFor(db, log)
const token = 'vgt_bulk-stores-admin-token-0123456789'
await deps.tokens.ensureBootstrap(token)
const headers = { authorization: `Bearer ${token}`, prefer: 'respond-async' }

const patient = await deps.patients.create('Stores Patient')
const device = await deps.devices.create({ name: 'Monitor', mac: 'aa:bb:cc:00:22:33', firmwareVersion: '1', softwareVersion: '1', startedAt: '2025-01-01T00:00:00.000Z' }, null)
await deps.devices.assign(device.id, patient.id, new Date('2025-01-01T00:00:00Z'), null)
const base = Date.UTC(2026, 1, 1, 0, 0, 0)
const readings: StoredReading[] = []
for (let i = 0; i < 40; i++) {
  const ts = base + i * 60_000
  readings.push({ patientId: patient.id, deviceId: device.id, metric: 'heart_rate', value: 60 + i, unit: '/min', ts, seq: null })
  readings.push({ patientId: patient.id, deviceId: device.id, metric: 'bp_systolic', value: 110 + i, unit: 'mm[Hg]', ts, seq: null })
  if (i % 5 !== 0) readings.push({ patientId: patient.id, deviceId: device.id, metric: 'bp_diastolic', value: 70 + i, unit: 'mm[Hg]', ts, seq: null })
}
// 40 heart rates, 32 panels, 8 lone systolics.
const expectedObservations = 40 + 32 + 8

async function exportWith (store: ReadingStore): Promise<string[]> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-bulk-stores-files-'))
  const bulk = createBulkExports({
    pool: db.pool, keyring: testKeyring(), readings: store, patients: deps.patients, devices: deps.devices,
    audit: deps.access.audit, dir, ttlMs: 3_600_000, log, chunkSize: 4
  })
  const app = await buildApi({ ...deps, bulkExports: bulk })
  const runner = startJobRunner({ queue: deps.jobs!, handlers: { [BULK_EXPORT_JOB]: bulk.handler }, workers: 1, log, pollIntervalMs: 50 })
  try {
    const started = await app.inject({ method: 'GET', url: '/fhir/R4/Patient/$export?_type=Observation', headers })
    if (started.statusCode !== 202) throw new Error(`kick-off: ${started.statusCode} ${started.body}`)
    const status = new URL(started.headers['content-location'] as string).pathname
    const done = await waitFor('export finished', async () => {
      const res = await app.inject({ method: 'GET', url: status, headers })
      return res.statusCode === 202 ? undefined : res
    }, 60_000)
    if (done.statusCode !== 200) throw new Error(`status: ${done.statusCode} ${done.body}`)
    const [output] = done.json().output
    const file = await app.inject({ method: 'GET', url: new URL(output.url as string).pathname, headers })
    return file.body.split('\n').filter((l) => l !== '')
  } finally {
    await runner.close()
    await app.close()
    await fs.rm(dir, { recursive: true, force: true })
  }
}

let fromPglite: string[] = []
t.test('embedded PGlite: readings in chunks of 4, BP panels across chunk boundaries', async (t) => {
  t.equal(db.kind, 'pglite')
  await deps.readings.write(readings)
  fromPglite = await exportWith(deps.readings)
  t.equal(fromPglite.length, expectedObservations)
  const observations = fromPglite.map((l) => JSON.parse(l))
  for (const o of observations) if (fhirErrors(o).length > 0) t.same(fhirErrors(o), [], o.id)
  t.equal(observations.filter((o) => o.code.coding[0].code === '85354-9').length, 32)
})

t.test('readings in InfluxDB: the same Observations through chunked InfluxQL', async (t) => {
  const influxd = await influxdStarting
  const store = await createInfluxReadingStore({ url: influxd.url, token: '', org: 'vigil', bucket: 'vigil_bulk', api: 'auto' }, log)
  t.teardown(() => store.close())
  await store.write(readings)
  const fromInflux = await exportWith(store)
  t.equal(fromInflux.length, expectedObservations)
  t.same([...fromInflux].sort(), [...fromPglite].sort(), 'identical NDJSON lines')
})
