import type mqtt from 'mqtt'
import t from 'tap'
import { createTestDatabase } from '../helpers/postgres.ts'
import { startTestVigil, telemetry } from '../helpers/vigil.ts'

// Issue 12 item 5: a device assigned at 17:27:18.328 sent one reading stamped 1.5 s earlier
// (its clock a little behind) and one current reading in one message: PUBACK, then the whole
// message was kept as a device_unassigned rejection, the current reading included, and
// nothing could bring it back (backdating the assignment was refused, no replay).
const database = await createTestDatabase()
t.teardown(() => database.drop())
const vigil = await startTestVigil({ DATABASE_URL: database.url })
t.teardown(() => vigil.close())

async function must<T> (method: string, route: string, body?: unknown, token?: string): Promise<T> {
  const res = await vigil.api<T>(method, route, body, token)
  if (res.status >= 300) throw new Error(`${method} ${route} → ${res.status} ${JSON.stringify(res.body)}`)
  return res.body
}

let macs = 0x5e00
/** A patient and a device assigned to it from `validFrom`, with a credential. */
async function deviceAssignedAt (validFrom: number): Promise<{ patientId: string, deviceId: string, password: string }> {
  const patient = await must<{ id: string }>('POST', '/v1/patients', { displayName: 'Skewed Clock' })
  macs++
  const device = await must<{ id: string }>('POST', '/v1/devices', {
    name: 'Oximeter', mac: `02:00:00:00:${(macs >> 8).toString(16).padStart(2, '0')}:${(macs & 0xff).toString(16).padStart(2, '0')}`,
    firmwareVersion: '1', softwareVersion: '1', startedAt: '2026-01-01T00:00:00Z'
  })
  await must('PUT', `/v1/devices/${device.id}/assignment`, { patientId: patient.id, validFrom: new Date(validFrom).toISOString() })
  const cred = await must<{ password: string }>('POST', `/v1/devices/${device.id}/credentials`)
  return { patientId: patient.id, deviceId: device.id, password: cred.password }
}

async function publishAcked (client: mqtt.MqttClient, deviceId: string, seq: number, stamps: number[]): Promise<void> {
  const readings = stamps.map((ts, i) => ({ metric: 'heart_rate', value: 70 + i, unit: '/min', ts }))
  await client.publishAsync(`devices/${deviceId}/telemetry`, telemetry(seq, readings), { qos: 1 })
}

async function storedStamps (patientId: string): Promise<number[]> {
  const res = await must<{ items: Array<{ ts: string }> }>('GET', `/v1/patients/${patientId}/readings?metric=heart_rate&limit=100`)
  return res.items.map((r) => Date.parse(r.ts)).sort((a, b) => a - b)
}

t.test('a reading stamped 1.5 s before the first assignment is stored with the current one', async (t) => {
  const assignedAt = Date.now() - 1000
  const device = await deviceAssignedAt(assignedAt)
  const client = await vigil.connect(device.deviceId, device.password)
  t.teardown(() => client.endAsync())
  const early = assignedAt - 1500
  const current = Date.now()
  await publishAcked(client, device.deviceId, 1, [early, current])
  t.same(await storedStamps(device.patientId), [early, current], 'both readings stored for the patient')
  const rejections = await must<{ items: unknown[] }>('GET', `/v1/devices/${device.deviceId}/rejections`)
  t.equal(rejections.items.length, 0, 'nothing rejected')
})

t.test('readings before the tolerance are kept for replay; the covered ones are stored; a corrected start and a replay store the rest once', async (t) => {
  const assignedAt = Date.now() - 1000
  const device = await deviceAssignedAt(assignedAt)
  const client = await vigil.connect(device.deviceId, device.password)
  t.teardown(() => client.endAsync())
  const tooEarly = assignedAt - 10 * 60_000
  const current = Date.now()
  await publishAcked(client, device.deviceId, 1, [tooEarly, current])
  t.same(await storedStamps(device.patientId), [current], 'the acknowledged current reading is stored')
  const rejections = await must<{ items: Array<{ reason: string }> }>('GET', `/v1/devices/${device.deviceId}/rejections`)
  t.same(rejections.items.map((r) => r.reason), ['device_unassigned'], 'the message is kept as device_unassigned')

  const corrected = await vigil.api<{ patientId: string, validFrom: string }>('PATCH', `/v1/devices/${device.deviceId}/assignment`, { validFrom: new Date(tooEarly - 60_000).toISOString() })
  t.equal(corrected.status, 200, 'the assignment start is corrected')
  t.equal(corrected.body.validFrom, new Date(tooEarly - 60_000).toISOString())

  const replay = await vigil.api<{ replayedMessages: number, storedReadings: number, stillUnassigned: number }>('POST', `/v1/devices/${device.deviceId}/rejections/replay`)
  t.equal(replay.status, 200)
  t.same(replay.body, { replayedMessages: 1, storedReadings: 2, stillUnassigned: 0 })
  t.same(await storedStamps(device.patientId), [tooEarly, current], 'the early reading is stored, nothing twice')

  const again = await vigil.api<{ replayedMessages: number, storedReadings: number }>('POST', `/v1/devices/${device.deviceId}/rejections/replay`)
  t.same(again.body, { replayedMessages: 0, storedReadings: 0, stillUnassigned: 0 }, 'a second replay finds nothing left')
  t.same(await storedStamps(device.patientId), [tooEarly, current])

  const audit = await must<{ items: Array<{ action: string, patientId: string | null }> }>('GET', `/v1/audit?patientId=${device.patientId}&limit=50`)
  const actions = audit.items.map((a) => a.action)
  t.ok(actions.includes('devices:assignment-correct'), 'the correction is audited')
  t.ok(actions.includes('rejections:replay'), 'the replay is audited')
})

t.test('a corrected start may not overlap another patient\'s period, and needs access to the patient', async (t) => {
  const device = await deviceAssignedAt(Date.now() - 2 * 3_600_000)
  const other = await must<{ id: string }>('POST', '/v1/patients', { displayName: 'Next Patient' })
  const secondFrom = Date.now() - 3_600_000
  await must('PUT', `/v1/devices/${device.deviceId}/assignment`, { patientId: other.id, validFrom: new Date(secondFrom).toISOString() })
  const overlap = await vigil.api<{ code: string }>('PATCH', `/v1/devices/${device.deviceId}/assignment`, { validFrom: new Date(secondFrom - 60_000).toISOString() })
  t.equal(overlap.status, 409)
  t.equal(overlap.body.code, 'VIGIL_ERR_CONFLICT')
  const later = await vigil.api<{ validFrom: string }>('PATCH', `/v1/devices/${device.deviceId}/assignment`, { validFrom: new Date(secondFrom + 60_000).toISOString() })
  t.equal(later.status, 200, 'moving the start later is allowed')

  // A clinician outside the patient's care team sees neither route's patient.
  await must('POST', '/v1/users', { email: 'skew-clinician@example.org', displayName: 'Dr Skew', password: 'correct horse 42', roles: ['nurse'] })
  const login = await must<{ accessToken: string }>('POST', '/v1/auth/login', { email: 'skew-clinician@example.org', password: 'correct horse 42' })
  const denied = await vigil.api<{ code: string }>('PATCH', `/v1/devices/${device.deviceId}/assignment`, { validFrom: new Date(secondFrom).toISOString() }, login.accessToken)
  t.equal(denied.status, 404, 'correction refused')
  t.equal(denied.body.code, 'VIGIL_ERR_UNKNOWN_PATIENT')
  const replay = await vigil.api<{ code: string }>('POST', `/v1/devices/${device.deviceId}/rejections/replay`, undefined, login.accessToken)
  t.equal(replay.status, 404, 'replay refused')
  t.equal(replay.body.code, 'VIGIL_ERR_UNKNOWN_PATIENT')

  const none = await deviceAssignedAt(Date.now())
  await must('DELETE', `/v1/devices/${none.deviceId}/assignment`)
  const open = await vigil.api<{ code: string }>('PATCH', `/v1/devices/${none.deviceId}/assignment`, { validFrom: new Date().toISOString() })
  t.equal(open.status, 404, 'a device without a current assignment has nothing to correct')
  t.equal(open.body.code, 'VIGIL_ERR_NOT_FOUND')
})
