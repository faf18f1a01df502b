import t from 'tap'
import mqtt from 'mqtt'
import { startTestVigil, telemetry } from '../helpers/vigil.ts'
import { nextEvent } from '../helpers/wait.ts'

const vigil = await startTestVigil()
t.teardown(() => vigil.close())
const a = await vigil.provision()
const b = await vigil.provision()

async function refused (options: mqtt.IClientOptions): Promise<number | undefined> {
  try {
    const c = await mqtt.connectAsync(`mqtt://127.0.0.1:${vigil.mqttPort}`, { reconnectPeriod: 0, protocolVersion: 4, connectTimeout: 5000, ...options })
    await c.endAsync()
    return undefined
  } catch (err) {
    return (err as { code?: number }).code
  }
}

t.test('connect is refused without the right credential and client id', async (t) => {
  t.equal(await refused({ clientId: a.deviceId, username: a.deviceId, password: 'vgl_wrong' }), 5, 'wrong password')
  t.equal(await refused({ clientId: b.deviceId, username: a.deviceId, password: a.password }), 5, 'client id is another device')
  t.equal(await refused({ clientId: 'anything' }), 5, 'anonymous')
  t.equal(await refused({ clientId: a.deviceId, username: b.deviceId, password: a.password }), 5, "A's password as B")
  t.equal(await refused({ clientId: '__proto__', username: '__proto__', password: 'x' }), 5, 'prototype key as id')
})

t.test("device A publishing to device B's topic gets no PUBACK and stores nothing", async (t) => {
  const client = await vigil.connect(a.deviceId, a.password)
  t.teardown(() => client.endAsync(true))
  const closed = nextEvent(client, 'close', 'the broker to close the connection')
  const acked = client.publishAsync(`devices/${b.deviceId}/telemetry`, telemetry(1, [{ metric: 'heart_rate', value: 80, unit: '/min' }]), { qos: 1 })
    .then(() => 'acked', () => 'failed')
  await closed
  t.pass('broker closed the connection')
  const outcome = await Promise.race([acked, new Promise((resolve) => setTimeout(() => resolve('no puback'), 500))])
  t.not(outcome, 'acked')
  for (const patientId of [a.patientId, b.patientId]) {
    const r = await vigil.api('GET', `/v1/patients/${patientId}/readings`)
    t.equal(r.body.items.length, 0)
  }
})

t.test('other topics and retained messages are refused', async (t) => {
  for (const [topic, retain] of [[`devices/${a.deviceId}/other`, false], ['alerts/x', false], [`devices/${a.deviceId}/telemetry`, true]] as const) {
    const client = await vigil.connect(a.deviceId, a.password)
    const closed = nextEvent(client, 'close', `the broker to close the connection after a publish to ${topic}`)
    client.publish(topic, telemetry(1, [{ metric: 'heart_rate', value: 80, unit: '/min' }]), { qos: 1, retain })
    await closed
    client.end(true)
    t.pass(`${topic} retain=${retain} closed the connection`)
  }
  const r = await vigil.api('GET', `/v1/patients/${a.patientId}/readings`)
  t.equal(r.body.items.length, 0)
})

t.test('subscriptions are limited to the device\'s own topics', async (t) => {
  const client = await vigil.connect(a.deviceId, a.password)
  t.teardown(() => client.endAsync())
  const subscribe = (filter: string): Promise<boolean> => new Promise((resolve) => {
    // mqtt.js turns a 0x80 SUBACK return code into an error.
    client.subscribe(filter, { qos: 1 }, (err) => resolve(err === null || err === undefined))
  })
  t.equal(await subscribe(`devices/${a.deviceId}/#`), true, 'own topics granted')
  for (const filter of [`devices/${b.deviceId}/#`, '#', 'devices/+/telemetry', '$SYS/#']) {
    t.equal(await subscribe(filter), false, `${filter} refused`)
  }
  t.ok(client.connected, 'a refused subscription does not end the session')

  const received: string[] = []
  client.on('message', (topic) => received.push(topic))
  const other = await vigil.connect(b.deviceId, b.password)
  t.teardown(() => other.endAsync())
  await other.publishAsync(`devices/${b.deviceId}/telemetry`, telemetry(1, [{ metric: 'heart_rate', value: 70, unit: '/min' }]), { qos: 1 })
  await new Promise((resolve) => setTimeout(resolve, 300))
  t.same(received, [], "B's readings never reach A")
})

t.test('revoking a credential ends the live session within seconds', async (t) => {
  const c = await vigil.provision()
  const client = await vigil.connect(c.deviceId, c.password)
  t.teardown(() => client.endAsync(true))
  const closed = nextEvent(client, 'close', 'the live session to end after the revocation')
  const started = Date.now()
  const res = await vigil.api('DELETE', `/v1/devices/${c.deviceId}/credentials`)
  t.equal(res.status, 204)
  await closed
  t.ok(Date.now() - started < 5000, 'closed promptly')
  t.equal(await refused({ clientId: c.deviceId, username: c.deviceId, password: c.password }), 5, 'revoked credential no longer connects')
})

t.test('rotating a credential: the new one works, the old one does not', async (t) => {
  const c = await vigil.provision()
  const rotated = await vigil.api('POST', `/v1/devices/${c.deviceId}/credentials`)
  t.equal(rotated.status, 201)
  t.not(rotated.body.password, c.password)
  t.equal(await refused({ clientId: c.deviceId, username: c.deviceId, password: c.password }), 5)
  t.equal(await refused({ clientId: c.deviceId, username: c.deviceId, password: rotated.body.password }), undefined)
})

t.test("a revoked device's Will message is not ingested", async (t) => {
  const c = await vigil.provision()
  const client = await vigil.connect(c.deviceId, c.password, {
    will: { topic: `devices/${c.deviceId}/telemetry`, payload: Buffer.from(telemetry(99, [{ metric: 'heart_rate', value: 199, unit: '/min' }])), qos: 1, retain: false }
  })
  t.teardown(() => client.endAsync(true))
  const closed = nextEvent(client, 'close', 'the session to end after the revocation')
  await vigil.api('DELETE', `/v1/devices/${c.deviceId}/credentials`)
  await closed
  await new Promise((resolve) => setTimeout(resolve, 300))
  const r = await vigil.api('GET', `/v1/patients/${c.patientId}/readings`)
  t.equal(r.body.items.length, 0)
})
