import mqtt from 'mqtt'
import t from 'tap'
import type { ConditionChange, DevicePresence } from '../../../alerts/contract.ts'
import { createPresence, noDataCause, startNoDataChecks } from '../../../alerts/lifecycle/presence.ts'
import { provisionDevice, startAlertingFixture } from '../../helpers/alerting.ts'
import { nextEvent, waitFor } from '../../helpers/wait.ts'

const MIN = 60_000
const WINDOW = 10 * MIN
const f = await startAlertingFixture({ network: true, manualClock: true })
t.teardown(() => f.close())
const clock = f.clock!
const url = `mqtt://127.0.0.1:${f.broker!.port}`

/**
 * A stand-in for the engine's evaluateNoData (branch alerts): one no_data rule, a 10 min
 * window, the cause from noDataCause. Only the devices of this test are watched.
 */
const watched = new Set<string>()
function evaluate (presence: DevicePresence[], now: number): ConditionChange[] {
  return presence.filter((p) => p.patientId !== null && watched.has(p.deviceId)).map((p) => {
    const silent = (p.lastReadingAt ?? 0) <= now - WINDOW
    const { cause, since } = noDataCause(p)
    return {
      patientId: p.patientId!,
      ruleId: 'no-data',
      kind: 'no_data',
      status: silent ? 'firing' : 'cleared',
      severity: 'medium',
      escalationPolicy: null,
      at: now,
      summary: `no readings for ${WINDOW / MIN} min`,
      details: { deviceId: p.deviceId, cause, since: since === null ? null : new Date(since).toISOString() }
    } satisfies ConditionChange
  })
}
const checks = startNoDataChecks({ presence: f.alerting.presence, evaluate, sink: f.alerting.sink, log: f.deps.log, now: clock.now })
t.teardown(() => checks.close())

const presenceOf = async (deviceId: string) => (await f.alerting.presence.presence()).find((p) => p.deviceId === deviceId)!
const alertsOf = async (patientId: string) => (await f.app.inject({ method: 'GET', url: `/v1/alerts?patientId=${patientId}&ruleId=no-data`, headers: f.adminHeaders })).json().items
const connect = async (d: { deviceId: string, password: string }) =>
  await mqtt.connectAsync(url, { clientId: d.deviceId, username: d.deviceId, password: d.password, protocolVersion: 4, reconnectPeriod: 0 })
const reading = () => JSON.stringify({ seq: 1, readings: [{ metric: 'heart_rate', value: 72, unit: '/min', ts: Date.now() }] })

t.test('a device that connects then disconnects: one no-data alert, cause disconnected, and when', async (t) => {
  const patientId = await f.createPatient()
  const device = await provisionDevice(f, patientId)
  watched.add(device.deviceId)
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
  t.match(alerts[0], { kind: 'no_data', status: 'open', details: { cause: 'disconnected', since: new Date(disconnectedAt).toISOString(), deviceId: device.deviceId } })

  // Presence is persisted: a new instance (restart) knows the cause and the time.
  const restarted = createPresence({ pool: f.db.pool, rejections: f.deps.rejections, metrics: f.deps.metrics, log: f.deps.log })
  t.match((await restarted.presence()).find((p) => p.deviceId === device.deviceId), { connected: false, changedAt: disconnectedAt, patientId })
  watched.delete(device.deviceId)
})

t.test('connected but sending nothing: cause connected_silent since the last reading; a reading clears it', async (t) => {
  const patientId = await f.createPatient()
  const device = await provisionDevice(f, patientId)
  watched.add(device.deviceId)
  const client = await connect(device)
  t.teardown(() => client.endAsync(true))
  const readingAt = clock.now()
  await client.publishAsync(`devices/${device.deviceId}/telemetry`, reading(), { qos: 1 })
  await waitFor('the reading time', async () => (await presenceOf(device.deviceId)).lastReadingAt === readingAt)
  clock.advance(WINDOW + MIN)
  await checks.tick()
  const [alert] = await alertsOf(patientId)
  t.match(alert, { status: 'open', details: { cause: 'connected_silent', since: new Date(readingAt).toISOString() } })

  await client.publishAsync(`devices/${device.deviceId}/telemetry`, reading(), { qos: 1 })
  await checks.tick()
  const [after] = await alertsOf(patientId)
  t.match(after, { id: alert.id, status: 'resolved', resolution: 'auto' }, 'auto-resolved when data flows again')
  watched.delete(device.deviceId)
})

t.test('low battery reported on devices/{id}/status is the cause; malformed status is recorded as a rejection', async (t) => {
  const patientId = await f.createPatient()
  const device = await provisionDevice(f, patientId)
  watched.add(device.deviceId)
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
  t.match(alert, { status: 'open', details: { cause: 'low_battery', since: new Date(statusAt).toISOString() } })
  watched.delete(device.deviceId)
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

t.test('noDataCause (pure)', async (t) => {
  const base: DevicePresence = { deviceId: 'd', patientId: 'p', connected: false, changedAt: null, lastReadingAt: null, batteryPercent: null, lastStatusAt: null }
  const cases: Array<[string, Partial<DevicePresence>, ReturnType<typeof noDataCause>]> = [
    ['never seen', {}, { cause: 'never_connected', since: null }],
    ['disconnected', { changedAt: 5 }, { cause: 'disconnected', since: 5 }],
    ['connected, never sent', { connected: true, changedAt: 5 }, { cause: 'connected_silent', since: 5 }],
    ['connected, sent long ago', { connected: true, changedAt: 5, lastReadingAt: 9 }, { cause: 'connected_silent', since: 9 }],
    ['low battery wins', { changedAt: 5, batteryPercent: 15, lastStatusAt: 4 }, { cause: 'low_battery', since: 4 }],
    ['battery fine', { changedAt: 5, batteryPercent: 16, lastStatusAt: 4 }, { cause: 'disconnected', since: 5 }]
  ]
  for (const [name, input, expected] of cases) t.same(noDataCause({ ...base, ...input }), expected, name)
})
