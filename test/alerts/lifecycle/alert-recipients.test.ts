import http from 'node:http'
import type { AddressInfo } from 'node:net'
import mqtt from 'mqtt'
import t from 'tap'
import { change, startAlertingFixture } from '../../helpers/alerting.ts'
import { openSse } from '../../helpers/sse.ts'
import { waitFor } from '../../helpers/wait.ts'
import { onCareTeam, userWithLogin } from '../../helpers/people.ts'

// Escalation tiers reach people: the holders of the tier's role on the patient's care team and
// whoever is on call for it; each person has "my alerts" (API, SSE, MQTT); a webhook can be a tier.

const MIN = 60_000
const deliveries: any[] = []
const receiver = http.createServer((req, res) => {
  const chunks: Buffer[] = []
  req.on('data', (c: Buffer) => chunks.push(c))
  req.on('end', () => { deliveries.push(JSON.parse(Buffer.concat(chunks).toString('utf8'))); res.writeHead(204).end() })
})
await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve))

const f = await startAlertingFixture({ network: true, manualClock: true, env: { VIGIL_WEBHOOK_TEST_PAGER_SECRET: 'pager-secret-0123456789' }, webhookRetryBaseMs: 20 })
t.teardown(async () => {
  await f.close()
  await new Promise<void>((resolve) => receiver.close(() => resolve()))
})
const clock = f.clock!
const admin: Record<string, string> = f.adminHeaders
f.policies.set('ward', {
  id: 'ward',
  tiers: [{ notify: ['nurse'], afterMs: MIN }, { notify: ['doctor'], afterMs: MIN }, { notify: ['rapid_response', 'pager'], afterMs: MIN }]
})
// Named in the last tier, no minSeverity in the rules file: the pager is that tier only.
f.webhooks.push({ id: 'pager', url: `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hook`, secretEnv: 'VIGIL_WEBHOOK_TEST_PAGER_SECRET', minSeverity: 'low', tierOnly: true, allowListed: true })

const patientId = await f.createPatient()
const otherPatient = await f.createPatient()
const nurse = await userWithLogin(f.app, admin, ['nurse'], 'nurse.one@example.org')
const otherNurse = await userWithLogin(f.app, admin, ['nurse'], 'nurse.two@example.org')
const doctor = await userWithLogin(f.app, admin, ['doctor'], 'doctor.one@example.org')
const responder = await userWithLogin(f.app, admin, ['doctor'], 'rapid.response@example.org')
await onCareTeam(f.app, admin, nurse.id, patientId)
await onCareTeam(f.app, admin, doctor.id, patientId)
await onCareTeam(f.app, admin, otherNurse.id, otherPatient)
// Care-team assignments start at the wall clock's now: the alerting clock goes on from there.
clock.set(Date.now() + 1000)

const me = (headers: Record<string, string>) => openSse(`${f.baseUrl}/v1/me/alerts/stream`, headers)
async function myAlerts (headers: Record<string, string>, query = ''): Promise<any[]> {
  const res = await f.app.inject({ method: 'GET', url: `/v1/me/alerts${query}`, headers })
  t.equal(res.statusCode, 200, res.body)
  return res.json().items
}

t.test('on-call roster: admins set who is on call for a care team and role, with a time window', async (t) => {
  const post = async (payload: object, headers = admin) => await f.app.inject({ method: 'POST', url: `/v1/patients/${patientId}/on-call`, headers, payload })
  const now = Date.now()
  const bad = await post({ userId: responder.id, role: 'rapid_response', from: new Date(now).toISOString(), to: new Date(now - 1000).toISOString() })
  t.equal(bad.statusCode, 400)
  t.equal(bad.json().code, 'VIGIL_ERR_VALIDATION')
  const unknown = await post({ userId: '5a1e0000-0000-4000-8000-000000000009', role: 'rapid_response', to: new Date(now + MIN).toISOString() })
  t.equal(unknown.statusCode, 404)
  t.equal(unknown.json().code, 'VIGIL_ERR_UNKNOWN_USER')
  t.equal((await post({ userId: responder.id, role: 'rapid_response', to: new Date(now + MIN).toISOString() }, nurse.headers)).statusCode, 403, 'nurses do not set the roster')

  // On call over the manual clock's day (the fixture's alerting clock), and one shift already over.
  const from = new Date(clock.now() - 3_600_000).toISOString()
  const to = new Date(clock.now() + 3_600_000).toISOString()
  const shift = await post({ userId: responder.id, role: 'rapid_response', from, to })
  t.equal(shift.statusCode, 201)
  t.match(shift.json(), { patientId, userId: responder.id, role: 'rapid_response', from, to })
  const gone = await post({ userId: otherNurse.id, role: 'rapid_response', from: new Date(clock.now() - 7_200_000).toISOString(), to: from })
  t.equal(gone.statusCode, 201)
  const removed = await f.app.inject({ method: 'DELETE', url: `/v1/on-call/${gone.json().id}`, headers: admin })
  t.equal(removed.statusCode, 200)
  t.equal((await f.app.inject({ method: 'DELETE', url: `/v1/on-call/${gone.json().id}`, headers: admin })).json().code, 'VIGIL_ERR_NOT_FOUND')
})

t.test('each tier reaches its role on the care team, then on call; everyone sees their own alerts only', async (t) => {
  const streams = { nurse: await me(nurse.headers), otherNurse: await me(otherNurse.headers), doctor: await me(doctor.headers), responder: await me(responder.headers) }
  t.teardown(async () => { for (const s of Object.values(streams)) await s.close() })
  t.equal(streams.nurse.res.status, 200)
  const url = `mqtt://127.0.0.1:${f.broker!.port}`
  const bearer = nurse.headers.authorization!.slice('Bearer '.length)
  const person = await mqtt.connectAsync(url, { clientId: `${nurse.id}-phone`, username: 'bearer', password: bearer, protocolVersion: 4, reconnectPeriod: 0 })
  t.teardown(() => person.endAsync(true))
  const granted = async (topic: string) => await new Promise<boolean>((resolve) => {
    person.subscribe(topic, { qos: 1 }, (err) => resolve(err === null || err === undefined))
  })
  t.equal(await granted(`users/${nurse.id}/alerts`), true, 'my own alerts topic')
  t.equal(await granted(`users/${doctor.id}/alerts`), false, "someone else's refused")
  t.equal(await granted('users/+/alerts'), false, 'wildcard refused')
  const mqttMessages: any[] = []
  person.on('message', (topic, payload) => mqttMessages.push({ topic, payload: JSON.parse(payload.toString()) }))

  await f.alerting.sink.apply([change(patientId, { ruleId: 'tachy', escalationPolicy: 'ward', at: clock.now() })])
  const [opened] = await waitFor("the nurse's stream", async () => streams.nurse.events.length > 0 && streams.nurse.events)
  t.match(opened!.data, { type: 'opened', tier: 0, notify: ['nurse'], notified: [nurse.id], alert: { patientId, ruleId: 'tachy' } })
  await waitFor("the nurse's MQTT topic", async () => mqttMessages.length > 0)
  t.match(mqttMessages[0], { topic: `users/${nurse.id}/alerts`, payload: { type: 'opened', notified: [nurse.id] } })
  const [mine] = await myAlerts(nurse.headers)
  t.match(mine, { id: opened!.data.alert.id, status: 'open', notifiedAs: { tier: 0, role: 'nurse', via: 'care_team' } })
  t.same(await myAlerts(doctor.headers), [], 'not yet the doctor\'s')

  // Unacknowledged a minute: the doctor tier, visible as an escalation naming who it reached.
  clock.advance(MIN)
  t.equal(await f.alerting.escalation.tick(), 1)
  const [escalated] = await waitFor("the doctor's stream", async () => streams.doctor.events.length > 0 && streams.doctor.events)
  t.match(escalated!.data, { type: 'escalated', tier: 1, notify: ['doctor'], notified: [doctor.id] })
  await waitFor('the escalation on the nurse\'s stream (her alert)', async () => streams.nurse.events.length === 2)
  t.match((await myAlerts(doctor.headers))[0], { notifiedAs: { tier: 1, role: 'doctor', via: 'care_team' } })

  // The last tier: the on-call responder (not on the care team) and the pager webhook.
  clock.advance(MIN)
  t.equal(await f.alerting.escalation.tick(), 1)
  const [third] = await waitFor("the responder's stream", async () => streams.responder.events.length > 0 && streams.responder.events)
  t.match(third!.data, { type: 'escalated', tier: 2, notified: [responder.id] })
  t.match((await myAlerts(responder.headers))[0], { notifiedAs: { tier: 2, role: 'rapid_response', via: 'on_call' } })
  await f.alerting.notifier.drain()
  await waitFor('the pager webhook', async () => deliveries.length > 0)
  t.same(deliveries.map((d) => [d.type, d.tier]), [['escalated', 2]], 'the tier webhook: not the opening, only its tier')

  // Acknowledged: everyone it reached sees it; the pager (which got the alert) too.
  const ack = await f.app.inject({ method: 'POST', url: `/v1/alerts/${opened!.data.alert.id}/acknowledge`, headers: admin })
  t.equal(ack.statusCode, 200)
  for (const s of [streams.nurse, streams.doctor, streams.responder]) await waitFor('the acknowledgement', async () => s.events.some((e) => e.data.type === 'acknowledged'))
  await f.alerting.notifier.drain()
  await waitFor('the acknowledgement on the pager', async () => deliveries.length === 2)
  t.same(streams.otherNurse.events, [], 'a nurse of another patient hears nothing')
  t.same(await myAlerts(otherNurse.headers), [])

  // Another alert whose policy never reaches the pager: no delivery to it, not even at severity.
  await f.alerting.sink.apply([change(otherPatient, { ruleId: 'fever', severity: 'critical', escalationPolicy: 'ward', at: clock.now() })])
  await waitFor("the other nurse's own alert", async () => streams.otherNurse.events.length === 1)
  await f.alerting.notifier.drain()
  t.equal(deliveries.length, 2)

  // Resume: the doctor's stream from the start replays only what concerns the doctor.
  const resumed = await openSse(`${f.baseUrl}/v1/me/alerts/stream`, { ...doctor.headers, 'last-event-id': '0' })
  t.teardown(() => resumed.close())
  await waitFor('the replay', async () => resumed.events.length >= 3)
  t.same(resumed.events.map((e) => e.data.type), ['escalated', 'escalated', 'acknowledged'])
  t.same(await myAlerts(nurse.headers, '?status=open'), [], 'acknowledged: not open')
  t.equal((await myAlerts(nurse.headers, '?status=acknowledged')).length, 1)
})

t.test('my alerts are a person\'s: an API token without a user is refused', async (t) => {
  const res = await f.app.inject({ method: 'GET', url: '/v1/me/alerts', headers: admin })
  t.equal(res.statusCode, 403)
  t.equal(res.json().code, 'VIGIL_ERR_FORBIDDEN')
  const stream = await f.app.inject({ method: 'GET', url: '/v1/me/alerts/stream', headers: admin })
  t.equal(stream.statusCode, 403)
})
