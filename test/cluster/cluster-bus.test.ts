import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { Redis } from 'ioredis'
import mqtt from 'mqtt'
import t, { type Test } from 'tap'
import { clusterAdminToken, sharedRedisUrl, startCluster, type ClusterMember } from '../helpers/cluster.ts'
import { provisionDevice } from '../helpers/provision.ts'
import { openSse } from '../helpers/sse.ts'
import { waitFor, within } from '../helpers/wait.ts'

// Two real Vigil processes (child processes, own data directories, ports 0) sharing one
// Postgres database and the machine's Redis under a prefix of their own: what one process
// does is seen by the other (issue 16).

const rulesDir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-cluster-rules-'))
const rulesPath = path.join(rulesDir, 'alert-rules.yaml')
await fs.writeFile(rulesPath, `
rules:
  - { id: high-hr, kind: threshold, metric: heart_rate, above: 150, severity: critical }
`)
const cluster = await startCluster(2, { env: { VIGIL_ALERT_RULES: rulesPath } })
t.teardown(async () => {
  await cluster.teardown()
  await fs.rm(rulesDir, { recursive: true, force: true })
})
const [a, b] = cluster.members as [ClusterMember, ClusterMember]

// Everything that crosses Redis on the broker's bus, as a third party sees it.
const spy = new Redis(sharedRedisUrl)
t.teardown(() => spy.disconnect())
const busChannels: string[] = []
spy.on('pmessageBuffer', (_pattern: Buffer, channel: Buffer) => { busChannels.push(channel.toString()) })
await spy.psubscribe(`${cluster.prefix}mqtt/*`)

async function connectDevice (t: Test, member: ClusterMember, device: { deviceId: string, password: string }): Promise<mqtt.MqttClient> {
  const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${member.mqttPort}`, { clientId: device.deviceId, username: device.deviceId, password: device.password, reconnectPeriod: 0, protocolVersion: 4 })
  t.teardown(() => client.endAsync(true))
  return client
}

async function publishReading (client: mqtt.MqttClient, deviceId: string, seq: number, metric: string, value: number, unit: string, ts: number): Promise<void> {
  await client.publishAsync(`devices/${deviceId}/telemetry`, JSON.stringify({ seq, readings: [{ metric, value, unit, ts }] }), { qos: 1 })
}

const closed = (client: mqtt.MqttClient): Promise<void> => new Promise((resolve) => client.once('close', () => resolve()))

t.test('MQTT-3.1.4-2 across processes: a device connecting to B loses its session on A', async (t) => {
  const device = await provisionDevice(a.base, clusterAdminToken)
  const onA = await connectDevice(t, a, device)
  const lostOnA = closed(onA)
  const onB = await connectDevice(t, b, device)
  await within('the session on A to close', lostOnA, 5000)
  t.ok(onA.disconnected || !onA.connected, 'A closed the older session')
  await publishReading(onB, device.deviceId, 1, 'heart_rate', 70, '/min', Date.now() - 1000)
  t.ok(onB.connected, 'the session on B is live and acknowledged a reading')
})

t.test('a credential revoked through B closes the device\'s session on A within 1 s', async (t) => {
  const device = await provisionDevice(a.base, clusterAdminToken)
  const onA = await connectDevice(t, a, device)
  const lost = closed(onA)
  const revoked = await b.api('DELETE', `/v1/devices/${device.deviceId}/credentials`)
  t.equal(revoked.status, 204)
  const answeredAt = performance.now()
  await within('the session on A to close', lost, 1000)
  t.comment(`closed ${Math.round(performance.now() - answeredAt)} ms after B answered`)

  // Rotation too (a new secret revokes the old one).
  const rotated = await a.api('POST', `/v1/devices/${device.deviceId}/credentials`)
  const again = await connectDevice(t, a, { deviceId: device.deviceId, password: rotated.body.password })
  const lostAgain = closed(again)
  t.equal((await b.api('POST', `/v1/devices/${device.deviceId}/credentials`)).status, 201)
  await within('the session on A to close after rotation on B', lostAgain, 1000)
})

t.test('an assignment change made through B applies to A\'s next reading', async (t) => {
  const device = await provisionDevice(a.base, clusterAdminToken)
  const onA = await connectDevice(t, a, device)
  const now = Date.now()
  // Primes A's assignment cache with the first patient.
  await publishReading(onA, device.deviceId, 1, 'heart_rate', 71, '/min', now - 5000)
  const readingsOf = async (patientId: string) => (await a.api('GET', `/v1/patients/${patientId}/readings`)).body.items as Array<{ seq: number }>
  await waitFor('the first reading stored for the first patient', async () => (await readingsOf(device.patientId)).length === 1)

  const second = await b.api('POST', '/v1/patients', { displayName: 'Second Patient' })
  const moved = await b.api('PUT', `/v1/devices/${device.deviceId}/assignment`, { patientId: second.body.id, validFrom: new Date(now - 3000).toISOString() })
  t.equal(moved.status, 200, JSON.stringify(moved.body))
  await publishReading(onA, device.deviceId, 2, 'heart_rate', 72, '/min', now - 1000)
  await waitFor('the next reading stored for the second patient', async () => (await readingsOf(second.body.id)).length === 1)
  t.same((await readingsOf(second.body.id)).map((r) => r.seq), [2])
  t.same((await readingsOf(device.patientId)).map((r) => r.seq), [1], 'not for the first')
})

t.test('an alert opened on A reaches SSE and MQTT subscribers on B; Last-Event-ID resumes on A', async (t) => {
  const device = await provisionDevice(a.base, clusterAdminToken)
  const person = await a.api('POST', '/v1/tokens', { name: 'cluster subscriber', role: 'admin' })
  t.equal(person.status, 201)
  const subscriber = await mqtt.connectAsync(`mqtt://127.0.0.1:${b.mqttPort}`, { clientId: `${person.body.id}-watch`, username: 'bearer', password: person.body.token, reconnectPeriod: 0, protocolVersion: 4 })
  t.teardown(() => subscriber.endAsync(true))
  const mqttEvents: any[] = []
  subscriber.on('message', (topic, payload) => { if (topic === `alerts/${device.patientId}`) mqttEvents.push(JSON.parse(payload.toString())) })
  await subscriber.subscribeAsync(`alerts/${device.patientId}`, { qos: 1 })
  const streamOnB = await openSse(`${b.base}/v1/alerts/stream`, { authorization: `Bearer ${clusterAdminToken}` })
  t.teardown(() => streamOnB.close())

  const onA = await connectDevice(t, a, device)
  await publishReading(onA, device.deviceId, 1, 'heart_rate', 170, '/min', Date.now() - 1000)
  const opened = await waitFor('the opened event on B\'s SSE stream', () => streamOnB.events.find((e) => e.data.alert?.patientId === device.patientId && e.data.type === 'opened'))
  await waitFor('the opened event on B\'s MQTT subscriber', () => mqttEvents.find((e) => e.type === 'opened'))
  t.equal(mqttEvents[0].eventId, opened.data.eventId, 'the same event on both channels')
  await streamOnB.close()

  // While no stream is open: acknowledged on A. A stream resuming on A after B's last id gets it.
  const ack = await a.api('POST', `/v1/alerts/${opened.data.alert.id}/acknowledge`, {})
  t.equal(ack.status, 200)
  const resumed = await openSse(`${a.base}/v1/alerts/stream`, { authorization: `Bearer ${clusterAdminToken}`, 'last-event-id': opened.id! })
  t.teardown(() => resumed.close())
  const acked = await waitFor('the acknowledgement replayed on A', () => resumed.events.find((e) => e.data.type === 'acknowledged' && e.data.alert.id === opened.data.alert.id))
  t.ok(BigInt(acked.id!) > BigInt(opened.id!))
  t.notOk(resumed.events.some((e) => e.id === opened.id), 'not the event already seen')
  await waitFor('the acknowledgement on B\'s MQTT subscriber', () => mqttEvents.find((e) => e.type === 'acknowledged'))

  t.ok(busChannels.some((c) => c === `${cluster.prefix}mqtt/alerts/${device.patientId}`), 'alert notifications cross Redis')
  t.same(busChannels.filter((c) => c.startsWith(`${cluster.prefix}mqtt/devices/`)), [], 'device telemetry never does')
})

// Last: a member count moves on heartbeats (every 5 s), which the tests above wait out meanwhile.
t.test('both processes are members, and /healthz names Redis', async (t) => {
  for (const m of [a, b]) {
    await waitFor('two members', async () => await m.metric('vigil_cluster_members') === 2)
    t.equal(await m.metric('vigil_cluster_redis_up'), 1)
    const health = await fetch(`${m.base}/healthz`).then(async (r) => await r.json() as { status: string, checks: Record<string, string> })
    t.equal(health.checks.redis, 'ok')
    t.equal(health.status, 'ok')
  }
})
