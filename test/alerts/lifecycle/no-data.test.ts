import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import mqtt from 'mqtt'
import { Registry } from 'prom-client'
import t from 'tap'
import type { Test } from 'tap'
import { startAlertEngine } from '../../../alerts/engine/alert-engine.ts'
import { startRulesFile } from '../../../alerts/engine/rules-file.ts'
import { createPresence } from '../../../alerts/lifecycle/presence.ts'
import { provisionDevice, startAlertingFixture } from '../../helpers/alerting.ts'
import { testKeyring } from '../../helpers/keys.ts'
import { nextEvent, waitFor } from '../../helpers/wait.ts'

const MIN = 60_000
const WINDOW = 10 * MIN
const f = await startAlertingFixture({ network: true, manualClock: true })
const clock = f.clock!
const url = `mqtt://127.0.0.1:${f.broker!.port}`

// The real engine, as vigil.ts wires it: the lifecycle's presence is its DevicePresenceSource,
// its no-data changes go to the lifecycle's sink. checkNoData() is one pass of its 30 s schedule.
const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-no-data-'))
const rulesPath = path.join(dir, 'alert-rules.yaml')
await fs.writeFile(rulesPath, 'rules:\n  - { id: no-data, kind: no_data, after: 10m, severity: medium }\n')
const rulesFile = await startRulesFile({ pool: f.db.pool, path: rulesPath, log: f.deps.log, now: clock.now })
const engine = await startAlertEngine({
  pool: f.db.pool, keyring: testKeyring(), rulesFile, workerThreads: 1, log: f.deps.log, registry: new Registry(), now: clock.now,
  sink: f.alerting.sink, presence: f.alerting.presence, writeDerived: async () => {}
})
t.teardown(async () => {
  await engine.close()
  await rulesFile.close()
  await f.close()
  await fs.rm(dir, { recursive: true, force: true })
})
const checks = { tick: () => engine.checkNoData() }

const presenceOf = async (deviceId: string) => (await f.alerting.presence.presence()).find((p) => p.deviceId === deviceId)!
const alertsOf = async (patientId: string) => (await f.app.inject({ method: 'GET', url: `/v1/alerts?patientId=${patientId}&ruleId=no-data`, headers: f.adminHeaders })).json().items
const connect = async (d: { deviceId: string, password: string }) =>
  await mqtt.connectAsync(url, { clientId: d.deviceId, username: d.deviceId, password: d.password, protocolVersion: 4, reconnectPeriod: 0 })
const reading = () => JSON.stringify({ seq: 1, readings: [{ metric: 'heart_rate', value: 72, unit: '/min', ts: Date.now() }] })
/** A new patient's device, connected (closed at the test's end), that has published one reading at `readingAt`. */
async function connectedWithOneReading (t: Test) {
  const patientId = await f.createPatient()
  const device = await provisionDevice(f, patientId)
  const client = await connect(device)
  t.teardown(() => client.endAsync(true))
  const readingAt = clock.now()
  await client.publishAsync(`devices/${device.deviceId}/telemetry`, reading(), { qos: 1 })
  return { patientId, device, client, readingAt }
}

t.test('a device that connects then disconnects: one no-data alert, cause disconnected, and when', async (t) => {
  const patientId = await f.createPatient()
  const device = await provisionDevice(f, patientId)
  const client = await connect(device)
  await client.publishAsync(`devices/${device.deviceId}/telemetry`, reading(), { qos: 1 })
  await waitFor('connected presence', async () => (await presenceOf(device.deviceId)).connected)
  clock.advance(MIN)
  const disconnectedAt = clock.now()
  await client.endAsync()
  await waitFor('disconnected presence', async () => (await presenceOf(device.deviceId)).connected === false)

  await checks.tick()
  t.same(await alertsOf(patientId), [], 'inside the window: nothing')
  clock.advance(WINDOW)
  await checks.tick()
  await checks.tick()
  const alerts = await alertsOf(patientId)
  t.equal(alerts.length, 1, 'one alert, however many checks')
  t.match(alerts[0], { kind: 'no_data', status: 'open', details: { cause: 'disconnected', disconnectedSince: disconnectedAt, devices: [{ deviceId: device.deviceId, connected: false }] } })

  // Presence is persisted: a new instance (restart) knows the cause and the time.
  const restarted = createPresence({ pool: f.db.pool, log: f.deps.log })
  t.match((await restarted.presence()).find((p) => p.deviceId === device.deviceId), { connected: false, changedAt: disconnectedAt, patientId })
})

t.test('connected but sending nothing: cause connected_silent, with the last reading; a reading clears it', async (t) => {
  const { patientId, device, client, readingAt } = await connectedWithOneReading(t)
  await waitFor('the reading time', async () => (await presenceOf(device.deviceId)).lastReadingAt === readingAt)
  clock.advance(WINDOW + MIN)
  await checks.tick()
  const [alert] = await alertsOf(patientId)
  t.match(alert, { status: 'open', details: { cause: 'connected_silent', devices: [{ deviceId: device.deviceId, lastReadingAt: readingAt }] } })

  await client.publishAsync(`devices/${device.deviceId}/telemetry`, reading(), { qos: 1 })
  await checks.tick()
  const [after] = await alertsOf(patientId)
  t.match(after, { id: alert.id, status: 'resolved', resolution: 'auto' }, 'auto-resolved when data flows again')
})

t.test('low battery reported on devices/{id}/status is the cause; malformed status is recorded as a rejection', async (t) => {
  const patientId = await f.createPatient()
  const device = await provisionDevice(f, patientId)
  const client = await connect(device)
  t.teardown(() => client.endAsync(true))
  const statusAt = clock.now()
  await client.publishAsync(`devices/${device.deviceId}/status`, JSON.stringify({ battery: 7, charging: false }), { qos: 1 })
  t.match(await presenceOf(device.deviceId), { batteryPercent: 7, lastStatusAt: statusAt, connected: true })

  // Refused status payloads get their PUBACK (the refusal is durable) and a rejection row.
  for (const payload of ['not json', JSON.stringify({ battery: 150 }), JSON.stringify([1]), JSON.stringify({ battery: 'low' })]) {
    await client.publishAsync(`devices/${device.deviceId}/status`, payload, { qos: 1 })
  }
  t.ok(client.connected, 'a bad status does not end the session')
  const rejections = (await f.app.inject({ method: 'GET', url: `/v1/devices/${device.deviceId}/rejections`, headers: f.adminHeaders })).json().items
  t.equal(rejections.length, 4)
  t.ok(rejections.every((r: any) => r.reason === 'status_invalid' && r.topic === `devices/${device.deviceId}/status`))
  t.equal((await presenceOf(device.deviceId)).batteryPercent, 7, 'bad reports change nothing')

  clock.advance(WINDOW + MIN)
  await checks.tick()
  const [alert] = await alertsOf(patientId)
  t.match(alert, { status: 'open', details: { cause: 'low_battery', batteryPercent: 7, devices: [{ deviceId: device.deviceId, lowBattery: true }] } })
})

t.test("a device cannot report another device's status", async (t) => {
  const a = await provisionDevice(f, await f.createPatient())
  const b = await provisionDevice(f, await f.createPatient())
  const client = await connect(a)
  t.teardown(() => client.endAsync(true))
  const closed = nextEvent(client, 'close', 'the broker to close a device publishing to another device\'s topic')
  client.publish(`devices/${b.deviceId}/status`, JSON.stringify({ battery: 1 }), { qos: 1 })
  await closed
  t.equal((await presenceOf(b.deviceId)).batteryPercent, null)
})

t.test('a reading\'s time reaches the device list within seconds, without waiting for a no-data check', async (t) => {
  // The worklist showed "no reading yet" beside the reading itself until the next 30 s check.
  const { device, readingAt } = await connectedWithOneReading(t)
  const listed = async (): Promise<string | null> =>
    (await f.app.inject({ method: 'GET', url: `/v1/devices/${device.deviceId}`, headers: f.adminHeaders })).json().presence.lastReadingAt
  t.equal(await waitFor('the reading time in the device list', listed, { timeoutMs: 10_000 }), new Date(readingAt).toISOString())
})
