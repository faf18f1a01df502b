import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import pino from 'pino'
import t from 'tap'
import { buildApi } from '../../api/app.ts'
import { openDatabase } from '../../store/database.ts'
import { apiDepsFor } from '../helpers/api-deps.ts'
import { seedEmbeddedDatabase } from '../helpers/pglite-template.ts'

// The embedded default: PGlite behind pglite-socket, one connection. On a copy of the migrated
// template: the first start on an empty data directory (initdb in a child process, every
// migration) is test/e2e/process-lifecycle.test.ts's, through main.ts as `npm start` runs it.
const log = pino({ level: 'silent' })
const dataDir = await seedEmbeddedDatabase(await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-api-embedded-')))
const db = await openDatabase({ databaseUrl: null, dataDir, log })
const deps = apiDepsFor(db, log)
const app = await buildApi(deps)
t.teardown(async () => {
  await app.close()
  await db.close()
  await fs.rm(dataDir, { recursive: true, force: true })
})

t.test('core flow on embedded PGlite', async (t) => {
  t.equal(db.kind, 'pglite')
  await deps.tokens.ensureBootstrap('vgt_embedded-test-admin-token-0123456789')
  const headers = { authorization: 'Bearer vgt_embedded-test-admin-token-0123456789' }

  const health = await app.inject({ method: 'GET', url: '/healthz' })
  t.same(health.json(), { status: 'ok', checks: { postgres: 'ok', readings: 'ok', load: 'ok' } })

  const patient = (await app.inject({ method: 'POST', url: '/v1/patients', headers, payload: { displayName: 'Embedded patient' } })).json()
  t.match(patient, { id: String })

  const created = await app.inject({
    method: 'POST', url: '/v1/devices', headers,
    payload: { name: 'Oximeter', mac: '02-00-00-00-EE-01', firmwareVersion: '1.0', softwareVersion: '1.0', startedAt: '2025-06-01' }
  })
  t.equal(created.statusCode, 201)
  const device = created.json()
  t.equal(device.mac, '02:00:00:00:ee:01')

  const duplicate = await app.inject({
    method: 'POST', url: '/v1/devices', headers,
    payload: { name: 'Copy', mac: '0200.0000.ee01', firmwareVersion: '1.0', softwareVersion: '1.0', startedAt: '2025-06-01' }
  })
  t.equal(duplicate.json().code, 'VIGIL_ERR_DUPLICATE_MAC')

  const assigned = await app.inject({
    method: 'PUT', url: `/v1/devices/${device.id}/assignment`, headers, payload: { patientId: patient.id, validFrom: '2025-11-01T00:00:00Z' }
  })
  t.equal(assigned.statusCode, 200)

  const credential = await app.inject({ method: 'POST', url: `/v1/devices/${device.id}/credentials`, headers })
  t.equal(credential.statusCode, 201)
  t.type(await deps.devices.authenticate(device.id, credential.json().password), 'string')

  const base = Date.UTC(2025, 10, 26, 9, 0, 0)
  await deps.readings.write(Array.from({ length: 6 }, (_, i) => ({
    patientId: patient.id, deviceId: device.id, metric: 'spo2', value: 94 + i, unit: '%', ts: base + i * 60_000, seq: i
  })))

  const first = (await app.inject({ method: 'GET', url: `/v1/patients/${patient.id}/readings?limit=4`, headers })).json()
  t.same(first.items.map((r: { value: number }) => r.value), [99, 98, 97, 96])
  const second = (await app.inject({ method: 'GET', url: `/v1/patients/${patient.id}/readings?limit=4&cursor=${first.nextCursor}`, headers })).json()
  t.same(second.items.map((r: { value: number }) => r.value), [95, 94])
  t.equal(second.nextCursor, null)

  const latest = (await app.inject({ method: 'GET', url: `/v1/patients/${patient.id}/readings/latest`, headers })).json()
  t.match(latest.items, [{ metric: 'spo2', value: 99, unit: '%', deviceId: device.id, seq: 5 }])

  const from = new Date(base).toISOString()
  const to = new Date(base + 6 * 60_000).toISOString()
  const aggregate = await app.inject({
    method: 'GET', url: `/v1/patients/${patient.id}/readings/aggregate?metric=spo2&from=${from}&to=${to}&every=3m&fn=max`, headers
  })
  t.same(aggregate.json().items.map((b: { value: number }) => b.value), [96, 99])

  const detail = (await app.inject({ method: 'GET', url: `/v1/devices/${device.id}`, headers })).json()
  t.equal(detail.patientId, patient.id)
  t.equal(detail.versions.length, 1)

  const denied = await app.inject({ method: 'GET', url: `/v1/devices/${device.id}` })
  t.equal(denied.statusCode, 401)
})
