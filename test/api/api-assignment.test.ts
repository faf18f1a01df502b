import t from 'tap'
import { startApiFixture } from '../helpers/api-deps.ts'

const { deps, app, headers } = await startApiFixture(t, 'assignment test')

const unknownId = '00000000-0000-4000-8000-000000000000'
const device = await deps.devices.create({
  name: 'Scale', mac: '02:00:00:00:aa:01', firmwareVersion: '1', softwareVersion: '1', startedAt: '2025-01-01T00:00:00Z'
}, null)
const alice = await deps.patients.create('Patient A')
const bob = await deps.patients.create('Patient B')
const url = `/v1/devices/${device.id}/assignment`

t.test('assigning ends the previous assignment and keeps the history', async (t) => {
  const first = await app.inject({ method: 'PUT', url, headers, payload: { patientId: alice.id, validFrom: '2025-02-01T00:00:00Z' } })
  t.equal(first.statusCode, 200)
  t.same(first.json(), { patientId: alice.id, validFrom: '2025-02-01T00:00:00.000Z', validTo: null })

  const second = await app.inject({ method: 'PUT', url, headers, payload: { patientId: bob.id, validFrom: '2025-03-01T12:00:00+02:00' } })
  t.equal(second.statusCode, 200)
  t.same(second.json(), { patientId: bob.id, validFrom: '2025-03-01T10:00:00.000Z', validTo: null })

  const detail = (await app.inject({ method: 'GET', url: `/v1/devices/${device.id}`, headers })).json()
  t.equal(detail.patientId, bob.id)
  t.same(detail.assignments, [
    { patientId: bob.id, validFrom: '2025-03-01T10:00:00.000Z', validTo: null },
    { patientId: alice.id, validFrom: '2025-02-01T00:00:00.000Z', validTo: '2025-03-01T10:00:00.000Z' }
  ])
})

t.test('validFrom defaults to now', async (t) => {
  const before = Date.now()
  const res = await app.inject({ method: 'PUT', url, headers, payload: { patientId: alice.id } })
  t.equal(res.statusCode, 200)
  const from = Date.parse(res.json().validFrom)
  t.ok(from >= before - 1000 && from <= Date.now() + 1000)
})

t.test('a validFrom before the current assignment is a conflict', async (t) => {
  const res = await app.inject({ method: 'PUT', url, headers, payload: { patientId: bob.id, validFrom: '2025-01-15T00:00:00Z' } })
  t.equal(res.statusCode, 409)
  t.equal(res.json().code, 'VIGIL_ERR_CONFLICT')
})

t.test('unknown patient, unknown device, invalid bodies', async (t) => {
  const noPatient = await app.inject({ method: 'PUT', url, headers, payload: { patientId: unknownId } })
  t.equal(noPatient.statusCode, 404)
  t.equal(noPatient.json().code, 'VIGIL_ERR_UNKNOWN_PATIENT')

  const noDevice = await app.inject({ method: 'PUT', url: `/v1/devices/${unknownId}/assignment`, headers, payload: { patientId: alice.id } })
  t.equal(noDevice.statusCode, 404)
  t.equal(noDevice.json().code, 'VIGIL_ERR_UNKNOWN_DEVICE')

  for (const payload of [{}, { patientId: 'alice' }, { patientId: alice.id, validFrom: 'tomorrow' }, { patientId: alice.id, validFrom: '2025-02-01T00:00:00' },
    // RFC 3339 allows a leap second that Date cannot represent.
    { patientId: alice.id, validFrom: '2030-12-31T23:59:60Z' }]) {
    const res = await app.inject({ method: 'PUT', url, headers, payload })
    t.equal(res.statusCode, 400, JSON.stringify(payload))
    t.equal(res.json().code, 'VIGIL_ERR_VALIDATION', JSON.stringify(payload))
  }
})

t.test('DELETE ends the current assignment; a second DELETE is 404', async (t) => {
  const res = await app.inject({ method: 'DELETE', url, headers })
  t.equal(res.statusCode, 204)
  t.equal(res.body, '')

  const detail = (await app.inject({ method: 'GET', url: `/v1/devices/${device.id}`, headers })).json()
  t.equal(detail.patientId, null)
  t.equal(detail.assignments.length, 3, 'history kept')
  t.ok(detail.assignments.every((a: { validTo: string | null }) => a.validTo !== null), 'every period closed')

  // After the DELETE, a new period may not start inside the one that just ended: a reading in
  // the overlap would belong to two patients.
  const overlapping = await app.inject({ method: 'PUT', url, headers, payload: { patientId: bob.id, validFrom: new Date(Date.now() - 3_600_000).toISOString() } })
  t.equal(overlapping.statusCode, 409)
  t.equal(overlapping.json().code, 'VIGIL_ERR_CONFLICT')

  const again = await app.inject({ method: 'DELETE', url, headers })
  t.equal(again.statusCode, 404)
  t.equal(again.json().code, 'VIGIL_ERR_NOT_FOUND')

  const noDevice = await app.inject({ method: 'DELETE', url: `/v1/devices/${unknownId}/assignment`, headers })
  t.equal(noDevice.statusCode, 404)
  t.equal(noDevice.json().code, 'VIGIL_ERR_UNKNOWN_DEVICE')
})
