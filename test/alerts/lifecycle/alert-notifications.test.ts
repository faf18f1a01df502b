import { createHmac, timingSafeEqual } from 'node:crypto'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import mqtt from 'mqtt'
import t from 'tap'
import { startAlerting } from '../../../alerts/lifecycle/alerting.ts'
import { buildApi } from '../../../api/app.ts'
import { change, provisionDevice, startAlertingFixture } from '../../helpers/alerting.ts'
import { testKeyring } from '../../helpers/keys.ts'
import { openSse } from '../../helpers/sse.ts'
import { nextEvent, waitFor } from '../../helpers/wait.ts'

// Encrypts clinical free text (alert comments, override reasons) for every engine/lifecycle this file starts.
const clinicalTextKeyring = testKeyring()

const SECRET = 'webhook-secret-for-tests-0123456789'
const f = await startAlertingFixture({ network: true, env: { VIGIL_WEBHOOK_TEST_SECRET: SECRET, VIGIL_ADMIN_TOKEN: 'bootstrap-admin-token-never-a-webhook-key' }, webhookRetryBaseMs: 20, webhookMaxAttempts: 4 })
t.teardown(() => f.close())
const { alerting } = f

/** The clinicians' alert stream, resumed after `lastEventId` if given. */
const openStream = async (token: string, lastEventId?: string) => await openSse(`${f.baseUrl}/v1/alerts/stream`,
  { authorization: `Bearer ${token}`, ...(lastEventId === undefined ? {} : { 'last-event-id': lastEventId }) })

t.test('SSE: a clinician receives alert events for their patients only, and Last-Event-ID resumes', async (t) => {
  const mine = await f.createPatient()
  const theirs = await f.createPatient()
  const { token } = f.access.clinicianToken([mine])
  const stream = await openStream(token)
  t.equal(stream.res.status, 200)
  t.match(stream.res.headers.get('content-type'), /^text\/event-stream/)
  t.equal(stream.res.headers.get('cache-control'), 'no-store')

  await alerting.sink.apply([change(theirs, { ruleId: 'sse-rule' }), change(mine, { ruleId: 'sse-rule' })])
  const [opened] = await waitFor('the first SSE event', async () => stream.events.length > 0 && stream.events)
  t.match(opened!.data, { type: 'opened', alert: { patientId: mine, ruleId: 'sse-rule', severity: 'high', status: 'open', summary: String } })
  t.equal(opened!.id, opened!.data.eventId, 'id: is the alert event id')
  t.notOk(JSON.stringify(opened!.data).includes('Test Patient'), 'no names in the payload')
  await stream.close()

  // While disconnected: acknowledged and commented (over the API), then resolved.
  const alertId = opened!.data.alert.id
  const h = { authorization: `Bearer ${token}` }
  t.equal((await f.app.inject({ method: 'POST', url: `/v1/alerts/${alertId}/acknowledge`, headers: h })).statusCode, 200)
  t.equal((await f.app.inject({ method: 'POST', url: `/v1/alerts/${alertId}/comments`, headers: h, payload: { text: 'a clinical note' } })).statusCode, 201)
  await alerting.sink.apply([change(theirs, { ruleId: 'sse-rule', status: 'cleared', at: Date.now() })])
  await alerting.sink.apply([change(mine, { ruleId: 'sse-rule', status: 'cleared', at: Date.now() })])

  const resumed = await openStream(token, opened!.id!)
  const missed = await waitFor('the missed events', async () => resumed.events.length >= 3 && resumed.events)
  t.same(missed.map((e) => e.data.type), ['acknowledged', 'commented', 'resolved'])
  t.ok(missed.every((e) => e.data.alert.patientId === mine))
  t.notOk(JSON.stringify(missed).includes('a clinical note'), 'comment text stays in the API')
  // Live events keep coming after the replay.
  await alerting.sink.apply([change(mine, { ruleId: 'sse-rule-2' })])
  await waitFor('a live event after the replay', async () => resumed.events.length === 4)
  t.equal(resumed.events[3]!.data.type, 'opened')
  await resumed.close()

  // A write is recorded after it is sent, not before: the last one may still be on its way.
  const recorded = async (): Promise<number> => (await f.db.pool.query("SELECT count(*)::int AS n FROM notification_deliveries WHERE channel = 'sse' AND alert_id = $1", [alertId])).rows[0].n
  await waitFor('4 SSE writes recorded', async () => await recorded() >= 4).catch(() => {})
  t.equal(await recorded(), 4, 'every SSE write recorded')
})

t.test('SSE: authentication and permission are required; closing the app ends open streams', async (t) => {
  const res = await fetch(`${f.baseUrl}/v1/alerts/stream`)
  t.equal(res.status, 401)
  const noRead = f.access.clinicianToken([], ['alerts:ack'])
  const forbidden = await fetch(`${f.baseUrl}/v1/alerts/stream`, { headers: { authorization: `Bearer ${noRead.token}` } })
  t.equal(forbidden.status, 403)
  t.equal((await forbidden.json()).code, 'VIGIL_ERR_FORBIDDEN')

  // A second API on the same lifecycle: closing it must end its open stream, not wait on it.
  const app = await buildApi({ ...f.deps, authenticate: f.access.authenticate, patientAccess: f.access.policy, alerts: alerting.api })
  await app.listen({ host: '127.0.0.1', port: 0 })
  const { token } = f.access.clinicianToken([])
  const open = await fetch(`http://127.0.0.1:${(app.server.address() as AddressInfo).port}/v1/alerts/stream`, { headers: { authorization: `Bearer ${token}` } })
  t.equal(open.status, 200)
  const ended = open.text().then(() => 'ended', () => 'ended')
  await app.close()
  t.equal(await ended, 'ended', 'app.close() ended the stream')
})

t.test('SSE: a stream ends once its token is revoked (checked at each heartbeat)', async (t) => {
  const app = await buildApi({
    ...f.deps, authenticate: f.access.authenticate, patientAccess: f.access.policy, alerts: { ...alerting.api, streamHeartbeatMs: 50 }
  })
  t.teardown(() => app.close())
  await app.listen({ host: '127.0.0.1', port: 0 })
  const { token } = f.access.clinicianToken([])
  const open = await fetch(`http://127.0.0.1:${(app.server.address() as AddressInfo).port}/v1/alerts/stream`, { headers: { authorization: `Bearer ${token}` } })
  t.equal(open.status, 200)
  const ended = open.text().then(() => 'ended', () => 'ended')
  f.access.revoke(token)
  t.equal(await ended, 'ended', 'the server ended the stream')
})

t.test('webhooks: signed POST with a minimal payload; failures retried with backoff and every attempt recorded', async (t) => {
  const received: Array<{ headers: http.IncomingHttpHeaders, body: string }> = []
  let failuresLeft = 2
  const receiver = http.createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      received.push({ headers: req.headers, body: Buffer.concat(chunks).toString('utf8') })
      if (req.url === '/down') res.writeHead(503).end()
      else if (req.url === '/flaky' && failuresLeft-- > 0) res.writeHead(500).end()
      else res.writeHead(204).end()
    })
  })
  await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => receiver.close(() => resolve())))
  const base = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}`
  f.webhooks.push(
    { id: 'pager', url: `${base}/ok`, secretEnv: 'VIGIL_WEBHOOK_TEST_SECRET', minSeverity: 'high', allowListed: true },
    { id: 'flaky', url: `${base}/flaky`, secretEnv: 'VIGIL_WEBHOOK_TEST_SECRET', minSeverity: 'critical', allowListed: true },
    { id: 'down', url: `${base}/down`, secretEnv: 'VIGIL_WEBHOOK_TEST_SECRET', minSeverity: 'critical', allowListed: true }
  )
  t.teardown(() => { f.webhooks.length = 0 })

  const patientId = await f.createPatient()
  await alerting.sink.apply([change(patientId, { ruleId: 'low-rule', severity: 'low' })])
  await alerting.sink.apply([change(patientId, { ruleId: 'webhook-rule', severity: 'critical' })])

  const ok = await waitFor('the pager webhook', async () => received.find((r) => r.headers['x-vigil-event-id'] !== undefined && r.body.includes('webhook-rule') && r.headers['user-agent'] === 'Vigil-Webhook/1'))
  // The receiver's check, as the README shows it.
  const timestamp = ok.headers['x-vigil-timestamp'] as string
  const expected = `sha256=${createHmac('sha256', SECRET).update(`${timestamp}.${ok.body}`).digest('hex')}`
  const given = ok.headers['x-vigil-signature'] as string
  t.ok(given.length === expected.length && timingSafeEqual(Buffer.from(given), Buffer.from(expected)), 'HMAC signature verifies')
  t.ok(Math.abs(Date.now() / 1000 - Number(timestamp)) < 300, 'timestamp inside the replay window')
  const payload = JSON.parse(ok.body)
  t.same(Object.keys(payload.alert).sort(), ['id', 'patientId', 'ruleId', 'severity', 'status', 'summary'], 'minimal payload')
  t.notOk(ok.body.includes('Test Patient'))
  t.notOk(received.some((r) => r.body.includes('low-rule')), 'below minSeverity: not sent')

  const attempts = async (webhookId: string) => (await f.db.pool.query(
    `SELECT d.attempt, d.status, d.http_status FROM notification_deliveries d JOIN alerts a ON a.id = d.alert_id
     WHERE d.channel = 'webhook' AND d.target = $1 AND a.rule_id = 'webhook-rule' ORDER BY d.attempt`, [webhookId])).rows
  const flaky = await waitFor('flaky webhook: 2 failures then success', async () => { const r = await attempts('flaky'); return r.length === 3 && r })
  t.same(flaky, [
    { attempt: 1, status: 'failed', http_status: 500 },
    { attempt: 2, status: 'failed', http_status: 500 },
    { attempt: 3, status: 'delivered', http_status: 204 }
  ])
  const down = await waitFor('down webhook: every attempt', async () => { const r = await attempts('down'); return r.length === 4 && r })
  t.same(down.map((r: any) => r.status), ['failed', 'failed', 'failed', 'gave_up'], 'gives up after webhookMaxAttempts')
  t.ok(down.every((r: any) => r.http_status === 503))
  const deliveries = received.filter((r) => r.body.includes('webhook-rule') && r.headers['x-vigil-delivery-attempt'] !== undefined)
  t.ok(deliveries.some((r) => r.headers['x-vigil-delivery-attempt'] === '4'), 'attempt number in a header')
})

t.test('webhooks: outside the allow-list nothing reaches a loopback listener, and secrets come from VIGIL_WEBHOOK_* only', async (t) => {
  let requests = 0
  const receiver = http.createServer((req, res) => { requests++; req.resume(); res.writeHead(204).end() })
  await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => receiver.close(() => resolve())))
  const port = (receiver.address() as AddressInfo).port
  f.webhooks.push(
    // A name resolving to loopback at delivery (DNS rebinding), a loopback address, and a
    // rules file that names the admin token as its signing secret.
    { id: 'rebound', url: `https://localhost:${port}/`, secretEnv: 'VIGIL_WEBHOOK_TEST_SECRET', minSeverity: 'low' },
    { id: 'loopback', url: `https://127.0.0.1:${port}/`, secretEnv: 'VIGIL_WEBHOOK_TEST_SECRET', minSeverity: 'low' },
    { id: 'admin-secret', url: `http://127.0.0.1:${port}/`, secretEnv: 'VIGIL_ADMIN_TOKEN', minSeverity: 'low', allowListed: true }
  )
  t.teardown(() => { f.webhooks.length = 0 })
  const patientId = await f.createPatient()
  await alerting.sink.apply([change(patientId, { ruleId: 'private-target-rule', severity: 'critical' })])
  const attempts = async (webhookId: string) => (await f.db.pool.query(
    `SELECT d.status, d.error FROM notification_deliveries d JOIN alerts a ON a.id = d.alert_id
     WHERE d.channel = 'webhook' AND d.target = $1 AND a.rule_id = 'private-target-rule' ORDER BY d.attempt`, [webhookId])).rows
  const given = async (id: string) => await waitFor(`${id}: every attempt`, async () => { const r = await attempts(id); return r.at(-1)?.status === 'gave_up' && r })
  t.match((await given('rebound'))[0], { status: 'failed', error: /localhost resolves to a non-public address \(127\.0\.0\.1\)/ })
  t.match((await given('loopback'))[0], { status: 'failed', error: /127\.0\.0\.1 is not a public address/ })
  t.match((await given('admin-secret'))[0], { status: 'failed', error: /VIGIL_ADMIN_TOKEN does not begin with VIGIL_WEBHOOK_/ })
  t.equal(requests, 0, 'the loopback listener received nothing')
})

t.test('webhooks: a delivery pending at shutdown is resumed by the next start', async (t) => {
  let up = false
  const bodies: string[] = []
  const receiver = http.createServer((req, res) => {
    req.resume()
    req.on('end', () => {
      if (up) bodies.push('delivered')
      res.writeHead(up ? 200 : 500).end()
    })
  })
  await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => receiver.close(() => resolve())))
  const target = { id: 'restart', url: `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/`, secretEnv: 'VIGIL_WEBHOOK_TEST_SECRET', minSeverity: 'low' as const, allowListed: true }
  const env = { VIGIL_WEBHOOK_TEST_SECRET: SECRET }
  // One lifecycle with a long backoff: the first attempt fails, the retry is far off.
  const first = await startAlerting({
    keyring: clinicalTextKeyring, pool: f.db.pool, log: f.deps.log, metrics: f.deps.metrics,
    policies: () => new Map(), webhooks: () => [target], env, webhookRetryBaseMs: 3_600_000
  })
  const patientId = await f.createPatient()
  await first.sink.apply([change(patientId, { ruleId: 'restart-rule' })])
  const pending = async () => (await f.db.pool.query(
    "SELECT o.state, o.attempts FROM webhook_outbox o WHERE o.webhook_id = 'restart'")).rows[0]
  await waitFor('the first failed attempt', async () => (await pending())?.attempts === 1)
  await first.close()

  // "Restart": the retry is due now; a new lifecycle on the same database delivers it.
  await f.db.pool.query("UPDATE webhook_outbox SET next_attempt_at = now() WHERE webhook_id = 'restart'")
  up = true
  const second = await startAlerting({
    keyring: clinicalTextKeyring, pool: f.db.pool, log: f.deps.log, metrics: f.deps.metrics,
    policies: () => new Map(), webhooks: () => [target], env
  })
  t.teardown(() => second.close())
  await waitFor('the resumed delivery', async () => (await pending())?.state === 'delivered')
  t.same(bodies, ['delivered'])
  t.equal((await pending()).attempts, 2)
})

t.test('MQTT: a person with a bearer token receives alerts/{patientId} for visible patients; devices cannot subscribe', async (t) => {
  const mine = await f.createPatient()
  const theirs = await f.createPatient()
  const { token, userId } = f.access.clinicianToken([mine])
  const url = `mqtt://127.0.0.1:${f.broker!.port}`
  const person = await mqtt.connectAsync(url, { clientId: `${userId}-station-1`, username: 'bearer', password: token, protocolVersion: 4, reconnectPeriod: 0 })
  t.teardown(() => person.endAsync(true))
  // mqtt.js turns a 0x80 SUBACK return code into an error.
  const granted = async (client: mqtt.MqttClient, topic: string) => await new Promise<boolean>((resolve) => {
    client.subscribe(topic, { qos: 1 }, (err) => resolve(err === null || err === undefined))
  })
  t.equal(await granted(person, `alerts/${mine}`), true, 'own patient granted')
  t.equal(await granted(person, `alerts/${theirs}`), false, "another clinician's patient refused")
  t.equal(await granted(person, 'alerts/#'), false, 'wildcard refused')
  t.equal(await granted(person, '#'), false)

  const messages: Array<{ topic: string, payload: any }> = []
  person.on('message', (topic, payload) => messages.push({ topic, payload: JSON.parse(payload.toString()) }))
  await alerting.sink.apply([change(theirs, { ruleId: 'mqtt-rule' }), change(mine, { ruleId: 'mqtt-rule' })])
  await waitFor('the MQTT alert', async () => messages.length > 0)
  t.equal(messages[0]!.topic, `alerts/${mine}`)
  t.match(messages[0]!.payload, { type: 'opened', alert: { patientId: mine, ruleId: 'mqtt-rule' } })
  t.ok(messages.every((m) => m.payload.alert.patientId === mine))

  // A device: even its own patient's alerts are not for it.
  const device = await provisionDevice(f, mine)
  const client = await mqtt.connectAsync(url, { clientId: device.deviceId, username: device.deviceId, password: device.password, protocolVersion: 4, reconnectPeriod: 0 })
  t.teardown(() => client.endAsync(true))
  t.equal(await granted(client, 'alerts/#'), false, 'device: alerts/# refused')
  t.equal(await granted(client, `alerts/${mine}`), false, "device: its patient's alerts refused")

  // A person may not publish (the broker closes the connection), and bad tokens are refused.
  const closed = nextEvent(person, 'close', 'the broker to disconnect a publishing person')
  person.publish(`alerts/${mine}`, '{}', { qos: 1 })
  await closed
  t.pass('publishing person disconnected')
  const refused = async (options: mqtt.IClientOptions) => await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0, ...options }).then(
    async (c) => { await c.endAsync(); return undefined }, (err: { code?: number }) => err.code)
  t.equal(await refused({ clientId: `${userId}-2`, username: 'bearer', password: 'not-a-token' }), 5, 'bad token')
  t.equal(await refused({ clientId: device.deviceId, username: 'bearer', password: token }), 2, 'a person cannot take a device id')
  const noRead = f.access.clinicianToken([mine], ['alerts:ack'])
  t.equal(await refused({ clientId: `${noRead.userId}-3`, username: 'bearer', password: noRead.token }), 5, 'token without alerts:read')

  // Sessions are checked again while connected: a revoked token, or a patient taken off the
  // person's care team, ends the session.
  const revoked = f.access.clinicianToken([mine])
  const rescoped = f.access.clinicianToken([mine])
  const kept = f.access.clinicianToken([mine])
  const connectPerson = async (clientId: string, password: string): Promise<mqtt.MqttClient> => {
    const c = await mqtt.connectAsync(url, { clientId: `${clientId}-console`, username: 'bearer', password, protocolVersion: 4, reconnectPeriod: 0 })
    t.teardown(() => c.endAsync(true))
    t.equal(await granted(c, `alerts/${mine}`), true)
    return c
  }
  const sessions = { revoked: await connectPerson(revoked.userId, revoked.token), rescoped: await connectPerson(rescoped.userId, rescoped.token), kept: await connectPerson(kept.userId, kept.token) }
  const ends = [nextEvent(sessions.revoked, 'close', 'the revoked session to end'), nextEvent(sessions.rescoped, 'close', 'the rescoped session to end')]
  f.access.revoke(revoked.token)
  f.access.rescope(rescoped.token, [theirs])
  t.equal(await f.broker!.recheckPeople(), 2, 'two sessions ended')
  await Promise.all(ends)
  t.ok(sessions.kept.connected, 'a person whose access stands stays connected')

  const recorded = await f.db.pool.query("SELECT count(*)::int AS n FROM notification_deliveries WHERE channel = 'mqtt' AND target = $1", [`alerts/${mine}`])
  t.ok(recorded.rows[0].n >= 1, 'MQTT publishes recorded')
})
