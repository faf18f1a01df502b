import mqtt from 'mqtt'
import t from 'tap'
import { change, startAlertingFixture } from '../../helpers/alerting.ts'
import { openSse } from '../../helpers/sse.ts'
import { waitFor } from '../../helpers/wait.ts'
import { patientWithLogin, userWithLogin } from '../../helpers/people.ts'

// "My alerts" (GET /v1/me/alerts, SSE /v1/me/alerts/stream, MQTT users/{id}/alerts) carry only
// alerts of patients the person may see now: removed from the care team, they stop at once on
// the API and SSE, and MQTT deliveries for that patient are refused from the next recheck.
// An active on-call shift counts as care-team membership for its duration.

const f = await startAlertingFixture({ network: true, realAccess: true, streamHeartbeatMs: 100 })
t.teardown(async () => { await f.close() })
const admin: Record<string, string> = f.adminHeaders
f.policies.set('ward', { id: 'ward', tiers: [{ notify: ['nurse'], afterMs: 60_000 }] })

const patientId = await f.createPatient()
const other = await f.createPatient()
const nurse = await userWithLogin(f.app, admin, ['nurse'], 'nurse.m3@example.org')
const doctor = await userWithLogin(f.app, admin, ['doctor'], 'doctor.m3@example.org')
const careTeam = async (clinicianId: string, patient: string): Promise<string> => {
  const res = await f.app.inject({ method: 'POST', url: '/v1/care-teams', headers: admin, payload: { clinicianId, patientId: patient } })
  if (res.statusCode !== 201) throw new Error(`care team: ${res.statusCode} ${res.body}`)
  return res.json().id
}
const nurseAssignment = await careTeam(nurse.id, patientId)
await careTeam(doctor.id, patientId)
// A second patient stays the nurse's, so her session and topic keep working for it.
await careTeam(nurse.id, other)

async function myAlerts (query = '?all=true'): Promise<any[]> {
  const res = await f.app.inject({ method: 'GET', url: `/v1/me/alerts${query}`, headers: nurse.headers })
  t.equal(res.statusCode, 200, res.body)
  return res.json().items
}

t.test('a nurse removed from the care team gets no more of that patient on any my-alerts channel', async (t) => {
  const sse = await openSse(`${f.baseUrl}/v1/me/alerts/stream`, nurse.headers)
  t.teardown(() => sse.close())
  const bearer = nurse.headers.authorization!.slice('Bearer '.length)
  const person = await mqtt.connectAsync(`mqtt://127.0.0.1:${f.broker!.port}`, { clientId: `${nurse.id}-m3`, username: 'bearer', password: bearer, protocolVersion: 4, reconnectPeriod: 0 })
  t.teardown(() => person.endAsync(true))
  const messages: any[] = []
  person.on('message', (_topic, payload) => messages.push(JSON.parse(payload.toString())))
  await person.subscribeAsync(`users/${nurse.id}/alerts`, { qos: 1 })

  await f.alerting.sink.apply([change(patientId, { ruleId: 'fever', escalationPolicy: 'ward' })])
  await waitFor('the opened alert on MQTT', async () => messages.length > 0)
  await waitFor('the opened alert on SSE', async () => sse.events.length > 0)
  const alertId = messages[0].alert.id
  t.equal((await myAlerts()).length, 1)

  const ended = await f.app.inject({ method: 'DELETE', url: `/v1/care-teams/${nurseAssignment}`, headers: admin })
  t.equal(ended.statusCode, 200, ended.body)
  t.equal((await f.app.inject({ method: 'GET', url: `/v1/alerts/${alertId}`, headers: nurse.headers })).statusCode, 404)
  t.equal(f.broker !== null && await f.broker.recheckPeople(), 0, 'her session goes on: her topic is still hers')
  // The SSE stream refreshes the visible patients before each heartbeat (MQTT: at each recheck, above).
  const beats = sse.heartbeats()
  await waitFor('stream heartbeats after the removal', async () => sse.heartbeats() >= beats + 3)

  for (const text of ['first', 'second']) {
    const res = await f.app.inject({ method: 'POST', url: `/v1/alerts/${alertId}/comments`, headers: doctor.headers, payload: { text } })
    t.equal(res.statusCode, 201, res.body)
  }
  // A later alert of her other patient still reaches her on every channel: the earlier
  // comments, had they been delivered, would have arrived before it.
  await f.alerting.sink.apply([change(other, { ruleId: 'fever', escalationPolicy: 'ward' })])
  await waitFor("the other patient's alert on MQTT", async () => messages.some((m) => m.alert.patientId === other))
  await waitFor("the other patient's alert on SSE", async () => sse.events.some((e) => e.data.alert.patientId === other))
  t.same(messages.filter((m) => m.alert.patientId === patientId).map((m) => m.type), ['opened'], 'MQTT: nothing of the patient after removal')
  t.same(sse.events.filter((e) => e.data.alert.patientId === patientId).map((e) => e.data.type), ['opened'], 'SSE: nothing of the patient after removal')
  t.same((await myAlerts()).map((a) => a.patientId), [other], 'GET /v1/me/alerts: only patients she may see')
})

t.test('an active on-call shift counts as care-team membership for its duration', async (t) => {
  const responder = await userWithLogin(f.app, admin, ['doctor'], 'oncall.m3@example.org')
  const get = async () => (await f.app.inject({ method: 'GET', url: `/v1/patients/${patientId}`, headers: responder.headers })).statusCode
  t.equal(await get(), 404, 'not on the care team, not on call')
  const now = Date.now()
  const shift = await f.app.inject({
    method: 'POST', url: `/v1/patients/${patientId}/on-call`, headers: admin,
    payload: { userId: responder.id, role: 'rapid_response', from: new Date(now - 60_000).toISOString(), to: new Date(now + 3_600_000).toISOString() }
  })
  t.equal(shift.statusCode, 201, shift.body)
  t.equal(await get(), 200, 'on call: the covering clinician sees the record')
  const audit = await f.db.pool.query("SELECT outcome FROM audit_log WHERE actor_id = $1 AND patient_id = $2 ORDER BY id", [responder.id, patientId])
  t.same(audit.rows.map((r: any) => r.outcome), ['denied', 'allowed'], 'both reads audited')
  await f.app.inject({ method: 'DELETE', url: `/v1/on-call/${shift.json().id}`, headers: admin })
  t.equal(await get(), 404, 'shift removed: no access')
})

t.test('a patient gets no commented events on the alert stream or MQTT alerts/{self} (as in GET /alerts/{id}/events)', async (t) => {
  const self = await f.createPatient()
  await careTeam(doctor.id, self)
  const headers = await patientWithLogin(f.app, admin, self, 'patient.m3@example.org')
  const sse = await openSse(`${f.baseUrl}/v1/alerts/stream`, headers)
  t.teardown(() => sse.close())
  t.equal(sse.res.status, 200)
  const bearer = headers.authorization!.slice('Bearer '.length)
  const person = await mqtt.connectAsync(`mqtt://127.0.0.1:${f.broker!.port}`, { clientId: `${self}-phone`, username: 'bearer', password: bearer, protocolVersion: 4, reconnectPeriod: 0 })
  t.teardown(() => person.endAsync(true))
  const messages: any[] = []
  person.on('message', (_topic, payload) => messages.push(JSON.parse(payload.toString())))
  await person.subscribeAsync(`alerts/${self}`, { qos: 1 })

  await f.alerting.sink.apply([change(self, { ruleId: 'fever', escalationPolicy: 'ward' })])
  await waitFor('the opened alert on both channels', async () => messages.length > 0 && sse.events.length > 0)
  const alertId = messages[0].alert.id
  const comment = await f.app.inject({ method: 'POST', url: `/v1/alerts/${alertId}/comments`, headers: doctor.headers, payload: { text: 'note' } })
  t.equal(comment.statusCode, 201, comment.body)
  const ack = await f.app.inject({ method: 'POST', url: `/v1/alerts/${alertId}/acknowledge`, headers: doctor.headers })
  t.equal(ack.statusCode, 200, ack.body)
  await waitFor('the acknowledgement on both channels', async () => messages.some((m) => m.type === 'acknowledged') && sse.events.some((e) => e.data.type === 'acknowledged'))
  t.same(messages.map((m) => m.type), ['opened', 'acknowledged'], 'MQTT: no comment')
  t.same(sse.events.map((e) => e.data.type), ['opened', 'acknowledged'], 'SSE: no comment')
})
