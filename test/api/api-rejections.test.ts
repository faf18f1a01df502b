import t from 'tap'
import { startApiFixture } from '../helpers/api-deps.ts'
import { newPatient, onCareTeam, userWithLogin } from '../helpers/people.ts'

const { db, deps, app, headers } = await startApiFixture(t, 'rejections test', {
  apiOptions: { rateLimitPerMinute: 1_000_000, unauthenticatedRateLimitPerMinute: 1_000_000 }
})

const device = await deps.devices.create({
  name: 'Cuff', mac: '02:00:00:00:cc:01', firmwareVersion: '1', softwareVersion: '1', startedAt: '2025-01-01T00:00:00Z'
}, null)
const quiet = await deps.devices.create({
  name: 'Quiet', mac: '02:00:00:00:cc:02', firmwareVersion: '1', softwareVersion: '1', startedAt: '2025-01-01T00:00:00Z'
}, null)
const topic = `devices/${device.id}/telemetry`
for (let i = 0; i < 5; i++) {
  await deps.rejections.record(device.id, topic, 'value_out_of_range', `heart_rate outside the plausible range (#${i})`,
    Buffer.from(JSON.stringify({ seq: i, readings: [{ metric: 'heart_rate', value: 999, unit: '/min', ts: 1 }] })))
}
const big = Buffer.alloc(10_000, 'x')
await deps.rejections.record(device.id, topic, 'payload_not_json', 'payload is not JSON', big)
await deps.rejections.record(quiet.id, `devices/${quiet.id}/telemetry`, 'payload_schema', 'not for the other device', Buffer.from('{}'))

const url = `/v1/devices/${device.id}/rejections`

t.test('lists a device\'s rejections newest first, paged', async (t) => {
  const first = await app.inject({ method: 'GET', url: `${url}?limit=4`, headers })
  t.equal(first.statusCode, 200)
  const page1 = first.json()
  t.equal(page1.items.length, 4)
  t.match(page1.items[0], {
    id: /^\d+$/,
    topic,
    reason: 'payload_not_json',
    message: 'payload is not JSON',
    payloadBytes: 10_000,
    receivedAt: String
  })
  t.equal(page1.items[0].payload.length, 4096, 'payload kept to its first 4 KiB')
  t.same(Object.keys(page1.items[0]).sort(), ['id', 'message', 'payload', 'payloadBytes', 'payloadRedacted', 'reason', 'receivedAt', 'topic'])
  t.match(page1.items[1], { reason: 'value_out_of_range', payload: /"seq":4/ })
  t.type(page1.nextCursor, 'string')

  const second = await app.inject({ method: 'GET', url: `${url}?limit=4&cursor=${page1.nextCursor}`, headers })
  const page2 = second.json()
  t.equal(page2.items.length, 2)
  t.equal(page2.nextCursor, null)
  const ids = [...page1.items, ...page2.items].map((r: { id: string }) => Number(r.id))
  t.same(ids, [...ids].sort((a, b) => b - a), 'newest first')
  t.equal(new Set(ids).size, 6)
  t.ok([...page1.items, ...page2.items].every((r: { topic: string }) => r.topic === topic), 'only this device')
})

t.test('unknown device, bad cursor', async (t) => {
  const unknown = await app.inject({ method: 'GET', url: '/v1/devices/00000000-0000-4000-8000-000000000000/rejections', headers })
  t.equal(unknown.statusCode, 404)
  t.equal(unknown.json().code, 'VIGIL_ERR_UNKNOWN_DEVICE')
  for (const cursor of ['abc', '-1', '99999999999999999999']) {
    const res = await app.inject({ method: 'GET', url: `${url}?cursor=${cursor}`, headers })
    t.equal(res.statusCode, 400, cursor)
    t.equal(res.json().code, 'VIGIL_ERR_BAD_CURSOR', cursor)
  }
})

t.test('rejected payloads are PHI: only those who reach the patient see them (issue 11 §5)', async (t) => {
  const p2 = await newPatient(app, headers, 'Patient Two')
  const worn = await deps.devices.create({
    name: 'Worn', mac: '02:00:00:00:cc:03', firmwareVersion: '1', softwareVersion: '1', startedAt: '2025-01-01T00:00:00Z'
  }, null)
  await deps.devices.assign(worn.id, p2, new Date(Date.now() - 60_000), null)
  const wornTopic = `devices/${worn.id}/telemetry`
  await deps.rejections.record(worn.id, wornTopic, 'payload_schema', '/readings/0: property is not allowed',
    Buffer.from(JSON.stringify({ seq: 1, readings: [{ metric: 'spo2', value: 83, unit: '%', ts: 1, note: 'short of breath at night' }] })))
  const wornUrl = `/v1/devices/${worn.id}/rejections`
  const offTeam = await userWithLogin(app, headers, ['doctor'], 'off.team.doctor@example.org')
  const nurse = await userWithLogin(app, headers, ['nurse'], 'p2.nurse@example.org')
  await onCareTeam(app, headers, nurse.id, p2)
  const integrator = await userWithLogin(app, headers, ['device-integrator'], 'rejections.integrator@example.org')

  const doctorView = await app.inject({ method: 'GET', url: wornUrl, headers: offTeam.headers })
  t.equal(doctorView.statusCode, 200)
  t.notMatch(doctorView.body, 'short of breath', 'was the whole payload: a doctor on no team read P2\'s vitals and free text')
  t.match(doctorView.json().items, [{ reason: 'payload_schema', payload: null, payloadRedacted: true }])

  const integratorView = await app.inject({ method: 'GET', url: wornUrl, headers: integrator.headers })
  t.equal(integratorView.statusCode, 200, 'was 403: integrators debug devices from reason, time, size and topic')
  t.match(integratorView.json().items, [{ topic: wornTopic, reason: 'payload_schema', payloadBytes: Number, receivedAt: String, payload: null, payloadRedacted: true }])
  t.notMatch(integratorView.body, 'short of breath')

  const nurseView = await app.inject({ method: 'GET', url: wornUrl, headers: nurse.headers })
  t.match(nurseView.json().items, [{ payload: /short of breath/, payloadRedacted: false }], 'the care team sees it')
  const { rows } = await db.pool.query(
    "SELECT actor_id, outcome FROM audit_log WHERE action = 'rejections:read' AND patient_id = $1 ORDER BY id", [p2])
  t.same(rows, [{ actor_id: offTeam.id, outcome: 'denied' }, { actor_id: nurse.id, outcome: 'allowed' }],
    'was patientId null: each read is in P2\'s trail (integrators read no payload: no row)')

  // Readings belong to the assignment at their time: after the device moves on, P2's rejections stay P2's.
  const p4 = await newPatient(app, headers, 'Patient Four')
  await onCareTeam(app, headers, offTeam.id, p4)
  await deps.devices.assign(worn.id, p4, new Date(), null)
  const laterView = await app.inject({ method: 'GET', url: wornUrl, headers: offTeam.headers })
  t.notMatch(laterView.body, 'short of breath', 'P4\'s doctor does not see what P2\'s device sent before')
})

// Security pass F7: messages quote what the device sent (a metric name, a unit, a SenML name,
// an extra key), so a redacted payload leaked through its message to integrators.
t.test('a redacted rejection gives the reason\'s generic message, not strings the device sent', async (t) => {
  const p5 = await newPatient(app, headers, 'Patient Five')
  const leaky = await deps.devices.create({
    name: 'Leaky', mac: '02:00:00:00:cc:05', firmwareVersion: '1', softwareVersion: '1', startedAt: '2025-01-01T00:00:00Z'
  }, null)
  await deps.devices.assign(leaky.id, p5, new Date(Date.now() - 60_000), null)
  const leakyTopic = `devices/${leaky.id}/telemetry`
  await deps.rejections.record(leaky.id, leakyTopic, 'unknown_metric', 'unknown metric "CANARYMETRIC_hiv"', Buffer.from('{"readings":[{"metric":"CANARYMETRIC_hiv"}]}'))
  await deps.rejections.record(leaky.id, leakyTopic, 'unit_unsupported', 'unit "CANARYUNIT" is not supported for spo2', Buffer.from('{}'))
  const integrator = await userWithLogin(app, headers, ['device-integrator'], 'f7.integrator@example.org')
  const nurse = await userWithLogin(app, headers, ['nurse'], 'f7.p5.nurse@example.org')
  await onCareTeam(app, headers, nurse.id, p5)
  const leakyUrl = `/v1/devices/${leaky.id}/rejections`

  const integratorView = await app.inject({ method: 'GET', url: leakyUrl, headers: integrator.headers })
  t.equal(integratorView.statusCode, 200)
  t.notMatch(integratorView.body, 'CANARY', 'was: the message quoting CANARYMETRIC_hiv reached the integrator')
  t.match(integratorView.json().items, [
    { topic: leakyTopic, reason: 'unit_unsupported', message: String, payloadBytes: 2, receivedAt: String, payloadRedacted: true },
    { topic: leakyTopic, reason: 'unknown_metric', message: String, payloadRedacted: true }
  ], 'reason, time, size and topic stay')
  for (const item of integratorView.json().items) t.ok(item.message.length > 0, 'a generic message for the reason')

  const nurseView = await app.inject({ method: 'GET', url: leakyUrl, headers: nurse.headers })
  t.match(nurseView.json().items, [{ message: /CANARYUNIT/, payloadRedacted: false }, { message: /CANARYMETRIC_hiv/ }], 'the care team gets the full message')
})
