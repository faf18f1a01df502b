import t from 'tap'
import { createDeviceRegistry } from '../../devices/device-registry.ts'
import { createPatientStore } from '../../patients/patients.ts'
import { openTestDatabase } from '../helpers/postgres.ts'

// The ingest hot path asks cachedAssignmentsOf first (no promise) and awaits assignmentsOf
// only when it answers null: both must give the same patient, and the cached answer must never
// outlive a change made here or be used while changes made elsewhere may go unannounced.

const db = await openTestDatabase(t)
const patients = createPatientStore(db.pool)
let trusted = true
const devices = createDeviceRegistry(db.pool, { cacheTrusted: () => trusted })
const first = await patients.create('Cache First')
const second = await patients.create('Cache Second')
const device = await devices.create({ name: 'Oximeter', mac: '02:00:00:00:7c:01', firmwareVersion: '1', softwareVersion: '1', startedAt: '2026-01-01T00:00:00Z' }, null)
const t0 = Date.UTC(2026, 0, 1)
await devices.assign(device.id, first.id, new Date(t0), null)

t.test('null until the periods are loaded, then the same answer as assignmentsOf', async (t) => {
  t.equal(devices.cachedAssignmentsOf(device.id), null, 'nothing cached yet')
  const loaded = await devices.assignmentsOf(device.id)
  const cached = devices.cachedAssignmentsOf(device.id)
  t.ok(cached !== null, 'cached once loaded')
  for (const ts of [t0 - 1, t0, t0 + 60_000, Date.now()]) t.equal(cached!(ts), loaded(ts), `at ${ts}`)
  t.equal(cached!(t0 + 60_000), first.id)
  t.equal(cached!(t0 - 1), null, 'before the assignment: nobody')
})

t.test('a change made here drops the cached answer at once', async (t) => {
  await devices.assignmentsOf(device.id)
  const switchAt = t0 + 3_600_000
  await devices.assign(device.id, second.id, new Date(switchAt), null)
  t.equal(devices.cachedAssignmentsOf(device.id), null, 'dropped by the assignment')
  const reloaded = await devices.assignmentsOf(device.id)
  t.equal(reloaded(switchAt + 1), second.id)
  t.equal(devices.cachedAssignmentsOf(device.id)!(switchAt + 1), second.id, 'the new period, cached')
  t.equal(devices.cachedAssignmentsOf(device.id)!(switchAt - 1), first.id, 'the old period still answers for its time')
})

t.test('while the cache is not trusted (changes elsewhere may be missed) it answers null', async (t) => {
  await devices.assignmentsOf(device.id)
  trusted = false
  t.teardown(() => { trusted = true })
  t.equal(devices.cachedAssignmentsOf(device.id), null)
})

t.test('a change another process announced drops it too', async (t) => {
  await devices.assignmentsOf(device.id)
  t.ok(devices.cachedAssignmentsOf(device.id) !== null)
  devices.applyChange({ kind: 'assignment-changed', deviceId: device.id })
  t.equal(devices.cachedAssignmentsOf(device.id), null)
})
