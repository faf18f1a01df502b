import mqtt from 'mqtt'
import t from 'tap'
import { aedesPublisher } from '../../broker/alert-publisher.ts'
import { brokerLimitsFrom, createBroker } from '../../broker/broker.ts'
import { loadConfig } from '../../config/config.ts'
import { startIngest } from '../../ingest/ingest.ts'
import { startApiFixture } from '../helpers/api-deps.ts'
import { newPatient, onCareTeam, patientWithLogin, userWithLogin } from '../helpers/people.ts'
import { waitFor } from '../helpers/wait.ts'

// People's MQTT alert sessions (issue 11, items 2 and 4), with the real access policy (care
// teams, break-glass, patients' own logins) and real MQTT clients.

let nowMs = Date.parse('2026-03-01T09:00:00Z')
const now = (): Date => new Date(nowMs)
const { deps, app, headers: admin } = await startApiFixture(t, 'mqtt people admin', {
  access: { now, settings: { breakGlassMinutes: 30, accessTokenTtlSeconds: 86_400, sessionIdleSeconds: 86_400, sessionMaxSeconds: 86_400 } },
  apiOptions: { rateLimitPerMinute: 1_000_000, unauthenticatedRateLimitPerMinute: 1_000_000 }
})
const ingest = await startIngest({ ...deps, spool: null })
t.teardown(() => ingest.close())
const config = loadConfig({ MQTT_PORT: '0', HTTP_PORT: '0' })
const broker = await createBroker({
  host: '127.0.0.1',
  port: 0,
  limits: { ...brokerLimitsFrom(config), connectRatePerAddress: 0, authFailuresBeforeLockout: 0 },
  devices: deps.devices,
  ingest,
  metrics: deps.metrics,
  log: deps.log,
  alertSubscribers: { authenticate: deps.access.authenticate, canSee: deps.access.patientAccess.canSee, visiblePatients: deps.access.patientAccess.visiblePatients }
})
t.teardown(() => broker.close())
const publish = aedesPublisher(broker.aedes)
const url = `mqtt://127.0.0.1:${broker.port}`

const p1 = await newPatient(app, admin, 'Patient One')
const p2 = await newPatient(app, admin, 'Patient Two')
const p3 = await newPatient(app, admin, 'Patient Three')
const patientOne = bearerOf(await patientWithLogin(app, admin, p1, 'p1@example.org'))
const doctor = await userWithLogin(app, admin, ['doctor'], 'doctor@example.org')
const nurse = await userWithLogin(app, admin, ['nurse'], 'nurse@example.org')
await onCareTeam(app, admin, doctor.id, p3)
await onCareTeam(app, admin, nurse.id, p3)

function bearerOf (headers: Record<string, string>): string {
  return headers.authorization!.replace(/^Bearer /, '')
}

async function breakGlass (headers: Record<string, string>, patientId: string): Promise<void> {
  const res = await app.inject({ method: 'POST', url: `/v1/patients/${patientId}/break-glass`, headers, payload: { reason: 'Collapsed at home, care team unreachable' } })
  if (res.statusCode !== 201) throw new Error(`break-glass: ${res.statusCode} ${res.body}`)
}

interface Person { client: mqtt.MqttClient, sessionPresent: boolean, messages: Array<{ topic: string, payload: any }> }

/** Connects a person; resolves with the CONNACK's session flag, or rejects with the CONNACK code. */
async function connectPerson (t: { teardown: (fn: () => unknown) => void }, clientId: string, bearer: string, clean: boolean): Promise<Person> {
  const messages: Person['messages'] = []
  const client = mqtt.connect(url, { clientId, username: 'bearer', password: bearer, clean, protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 10_000 })
  // Registered before the CONNACK: a resumed session's queue follows it at once.
  client.on('message', (topic, payload) => messages.push({ topic, payload: JSON.parse(payload.toString()) }))
  const sessionPresent = await new Promise<boolean>((resolve, reject) => {
    client.once('connect', (connack) => resolve(connack.sessionPresent))
    client.once('error', (err: Error & { code?: number }) => reject(err))
    client.once('close', () => reject(new Error('closed before CONNACK')))
  }).catch((err: Error & { code?: number }) => {
    client.end(true)
    throw err
  })
  t.teardown(() => client.endAsync(true))
  return { client, sessionPresent, messages }
}

async function connackCode (clientId: string, bearer: string, clean = true): Promise<number | 'accepted'> {
  const c = mqtt.connect(url, { clientId, username: 'bearer', password: bearer, clean, protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 10_000 })
  return await new Promise<number | 'accepted'>((resolve) => {
    c.once('connect', () => { c.end(true); resolve('accepted') })
    c.once('error', (err: Error & { code?: number }) => { c.end(true); resolve(err.code ?? -1) })
  })
}

async function subscribe (client: mqtt.MqttClient, topic: string): Promise<boolean> {
  return await new Promise<boolean>((resolve) => client.subscribe(topic, { qos: 1 }, (err) => resolve(err === null || err === undefined)))
}

function event (patientId: string, n: number): string {
  return JSON.stringify({ type: 'opened', alert: { patientId, ruleId: `rule-${n}` } })
}

async function disconnected (client: mqtt.MqttClient): Promise<void> {
  await client.endAsync()
  // The broker has forgotten the connection (the session stays in persistence, offline).
  const clients = (broker.aedes as unknown as { clients: Record<string, unknown> }).clients
  await waitFor('the broker to see the disconnect', () => Object.keys(clients).length === 0)
}

t.test("a patient cannot resume a clinician's persistent session (and its queued alerts for another patient)", async (t) => {
  await breakGlass(doctor.headers, p2)
  const console1 = `${doctor.id}-shared-console-1`
  const first = await connectPerson(t, console1, bearerOf(doctor.headers), false)
  t.equal(await subscribe(first.client, `alerts/${p2}`), true, 'break-glass: alerts/P2 granted')
  await disconnected(first.client)
  for (let n = 1; n <= 3; n++) await publish(`alerts/${p2}`, event(p2, n))

  // The attack of the issue: P1, with her own valid token, the clinician's client id, clean=false.
  const attempt = await connectPerson(t, console1, patientOne, false).catch((err: Error & { code?: number }) => err.code ?? -1)
  if (typeof attempt !== 'number') {
    await waitFor('the leaked queue', () => attempt.messages.length >= 3, 2_000).catch(() => {})
    await attempt.client.endAsync()
    t.fail(`P1 took over the session: sessionPresent=${attempt.sessionPresent}, ${attempt.messages.filter((m) => m.topic === `alerts/${p2}`).length} events for P2 received`)
  }
  t.equal(attempt, 2, 'CONNACK 2 (identifier rejected): the client id belongs to another person')

  // The clinician resumes his own session and gets the queue.
  const resumed = await connectPerson(t, console1, bearerOf(doctor.headers), false)
  t.equal(resumed.sessionPresent, true)
  await waitFor('the three queued events', () => resumed.messages.length === 3)
  t.same(resumed.messages.map((m) => m.payload.alert.ruleId), ['rule-1', 'rule-2', 'rule-3'])
  await resumed.client.endAsync()
})

t.test('queued alerts are delivered only if the person resuming may see the patient now', async (t) => {
  const doctor2 = await userWithLogin(app, admin, ['doctor'], 'doctor2@example.org')
  await onCareTeam(app, admin, doctor2.id, p3)
  await breakGlass(doctor2.headers, p1)
  const station = `${doctor2.id}-er-2`
  const first = await connectPerson(t, station, bearerOf(doctor2.headers), false)
  t.equal(await subscribe(first.client, `alerts/${p1}`), true, 'break-glass: alerts/P1 granted')
  await disconnected(first.client)
  for (let n = 1; n <= 3; n++) await publish(`alerts/${p1}`, event(p1, n))

  nowMs += 31 * 60_000 // the break-glass grant has expired while the session was offline
  const resumed = await connectPerson(t, station, bearerOf(doctor2.headers), false)
  t.equal(resumed.sessionPresent, true)
  // A patient still on the doctor's care team: its event arrives after anything queued.
  t.equal(await subscribe(resumed.client, `alerts/${p3}`), true)
  await publish(`alerts/${p3}`, event(p3, 99))
  await waitFor('the care-team event', () => resumed.messages.some((m) => m.topic === `alerts/${p3}`))
  t.same(resumed.messages.filter((m) => m.topic !== `alerts/${p3}`).map((m) => m.topic), [], 'no queued event for the patient no longer reachable')
})

t.test("a person's client id must begin with their own user id", async (t) => {
  t.equal(await connackCode('shared-console-1', bearerOf(nurse.headers)), 2, 'a free-form client id')
  t.equal(await connackCode(`${doctor.id}-station`, bearerOf(nurse.headers)), 2, "another person's prefix")
  t.equal(await connackCode(nurse.id, bearerOf(nurse.headers)), 2, 'the bare user id (it would look like a device id)')
  t.equal(await connackCode(`${nurse.id}-ward7-station`, bearerOf(nurse.headers)), 'accepted')
})

t.test("no one but its owner can take over a nurse's alert session", async (t) => {
  const station = `${nurse.id}-ward7-station`
  const session = await connectPerson(t, station, bearerOf(nurse.headers), true)
  t.equal(await subscribe(session.client, `alerts/${p3}`), true)
  let closed = false
  session.client.on('close', () => { closed = true })

  t.equal(await connackCode(station, patientOne), 2, 'a patient with her own token is refused')
  t.equal(await connackCode(station, bearerOf(doctor.headers)), 2, 'another clinician is refused')
  await publish(`alerts/${p3}`, event(p3, 7))
  await waitFor("the nurse's next alert", () => session.messages.length === 1)
  t.equal(closed, false, "the nurse's session was not closed")

  // The owner may take over her own session (a restarted console).
  const again = await connectPerson(t, station, bearerOf(nurse.headers), true)
  await waitFor('the older session to be closed by its owner', () => closed)
  await again.client.endAsync()
})
