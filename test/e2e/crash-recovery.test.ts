import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import mqtt from 'mqtt'
import t, { type Test } from 'tap'
import { startInfluxd } from '../helpers/influxd.ts'
import { createTestDatabase } from '../helpers/postgres.ts'
import { provisionDevice } from '../helpers/provision.ts'
import { startFleet, type Fleet } from '../helpers/fleet.ts'
import { spawnVigil, type VigilProcess } from '../helpers/vigil-process.ts'

// The real process killed (SIGKILL) or stopped (SIGTERM) while devices publish, then restarted:
// every reading it acknowledged must be stored, once.
const token = 'crash-test-admin-token-0123456789abcdef'
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

async function metric (p: VigilProcess, name: string): Promise<number> {
  const text = await fetch(`http://127.0.0.1:${p.httpPort}/metrics`).then((r) => r.text())
  return Number(new RegExp(`^${name} (\\S+)`, 'm').exec(text)?.[1] ?? 0)
}

const spoolDepth = (p: VigilProcess): Promise<number> => metric(p, 'vigil_spool_depth_readings')

async function storedSeqs (p: VigilProcess, patientId: string): Promise<number[]> {
  const seqs: number[] = []
  let cursor = ''
  for (;;) {
    const res = await fetch(`http://127.0.0.1:${p.httpPort}/v1/patients/${patientId}/readings?limit=1000${cursor}`, { headers: { authorization: `Bearer ${token}` } })
    const body = await res.json() as { items: Array<{ seq: number }>, nextCursor: string | null }
    seqs.push(...body.items.map((r) => r.seq))
    if (body.nextCursor === null) return seqs
    cursor = `&cursor=${body.nextCursor}`
  }
}

async function verify (t: Test, p: VigilProcess, fleet: Fleet, devices: Array<{ deviceId: string, patientId: string }>): Promise<void> {
  const deadline = Date.now() + 30_000
  while (await spoolDepth(p) > 0 && Date.now() < deadline) await sleep(200)
  let acked = 0
  let stored = 0
  let lost = 0
  let duplicated = 0
  for (const d of devices) {
    const seqs = await storedSeqs(p, d.patientId)
    const distinct = new Set(seqs)
    stored += seqs.length
    duplicated += seqs.length - distinct.size
    const ackedSeqs = fleet.acked.get(d.deviceId)!
    acked += ackedSeqs.size
    for (const s of ackedSeqs) if (!distinct.has(s)) lost++
  }
  t.comment(`sent ${fleet.sent()}, acknowledged ${acked}, stored ${stored}, lost ${lost}, duplicated ${duplicated}`)
  t.ok(acked > 100, 'devices were acknowledged before and after the restart')
  t.equal(lost, 0, 'no acknowledged reading lost')
  t.equal(duplicated, 0, 'none stored twice')
}

/**
 * A process (of `setup`'s mode) whose rules file holds one heart-rate rule (`rule`: its fields
 * after the id, as YAML flow), with one provisioned device; data directory and store cleaned up.
 */
async function startWithRule (t: Test, setup: () => Promise<{ env: Record<string, string>, cleanup: () => Promise<void> }>, dirPrefix: string, rule: string) {
  const { env, cleanup } = await setup()
  t.teardown(cleanup)
  const dataDir = await fs.mkdtemp(path.join(os.tmpdir(), dirPrefix))
  t.teardown(() => fs.rm(dataDir, { recursive: true, force: true }))
  const rulesPath = path.join(dataDir, 'alert-rules.yaml')
  await fs.writeFile(rulesPath, `
escalationPolicies:
  - id: standard
    tiers:
      - { notify: [nurse], escalateAfter: 5m }
rules:
  - { id: high-hr, ${rule}, severity: critical, escalation: standard }
`)
  const fullEnv = { ...env, VIGIL_ADMIN_TOKEN: token, VIGIL_ALERT_RULES: rulesPath }
  const first = await spawnVigil(fullEnv, dataDir)
  t.teardown(() => { first.child.kill('SIGKILL') })
  const device = await provisionDevice(`http://127.0.0.1:${first.httpPort}`, token)
  return { fullEnv, dataDir, first, device }
}

/** The device's MQTT connection to `p`, ended at teardown. */
async function connectDevice (t: Test, p: VigilProcess, device: { deviceId: string, password: string }): Promise<mqtt.MqttClient> {
  const client = await mqtt.connectAsync({ host: '127.0.0.1', port: p.mqttPort, clientId: device.deviceId, username: device.deviceId, password: device.password, protocolVersion: 4, reconnectPeriod: 0 })
  t.teardown(() => client.endAsync(true).catch(() => {}))
  return client
}

const publishHeartRate = (client: mqtt.MqttClient, deviceId: string, seq: number, value: number, ts: number): Promise<unknown> =>
  client.publishAsync(`devices/${deviceId}/telemetry`, JSON.stringify({ seq, readings: [{ metric: 'heart_rate', value, unit: '/min', ts }] }), { qos: 1 })

/** The patient's alerts once it has one (empty after 20 s without). */
async function alertsOnceAny (p: VigilProcess, patientId: string): Promise<Array<{ ruleId: string, status: string }>> {
  let alerts: Array<{ ruleId: string, status: string }> = []
  const until = Date.now() + 20_000
  while (alerts.length === 0 && Date.now() < until) {
    const res = await fetch(`http://127.0.0.1:${p.httpPort}/v1/alerts?patientId=${patientId}`, { headers: { authorization: `Bearer ${token}` } })
    alerts = (await res.json() as { items: typeof alerts }).items
    if (alerts.length === 0) await sleep(100)
  }
  return alerts
}

/** Waits (20 s at most) until `p` has evaluated `n` readings. */
async function evaluated (p: VigilProcess, n: number, everyMs: number): Promise<void> {
  const deadline = Date.now() + 20_000
  while (await metric(p, 'vigil_alert_readings_evaluated_total') < n && Date.now() < deadline) await sleep(everyMs)
}

const modes: Array<[string, () => Promise<{ env: Record<string, string>, cleanup: () => Promise<void> }>]> = [
  ['embedded PGlite', async () => ({ env: {}, cleanup: async () => {} })],
  ['Postgres + InfluxDB (spool)', async () => {
    const database = await createTestDatabase()
    const influxd = await startInfluxd()
    return {
      env: { DATABASE_URL: database.url, INFLUX_URL: influxd.url, INFLUX_BUCKET: 'crash' },
      cleanup: async () => { await influxd.close(); await database.drop() }
    }
  }]
]

for (const [name, setup] of modes) {
  for (const signal of ['SIGKILL', 'SIGTERM'] as const) {
    t.test(`${name}: ${signal} mid-stream, restart, nothing acknowledged is lost`, async (t) => {
      const { env, cleanup } = await setup()
      t.teardown(cleanup)
      const dataDir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-crash-'))
      t.teardown(() => fs.rm(dataDir, { recursive: true, force: true }))
      const fullEnv = { ...env, VIGIL_ADMIN_TOKEN: token }
      const first = await spawnVigil(fullEnv, dataDir)
      t.teardown(() => { first.child.kill('SIGKILL') })
      const base = `http://127.0.0.1:${first.httpPort}`
      const devices = await Promise.all(Array.from({ length: 20 }, () => provisionDevice(base, token)))
      const fleet = startFleet(first.mqttPort, devices, 50)
      t.teardown(() => fleet.stop())

      await sleep(3000)
      const before = fleet.ackedCount()
      first.child.kill(signal)
      const code = await first.exited
      if (signal === 'SIGTERM') t.equal(code, 0, 'graceful exit under load')
      t.ok(before > 0, `${before} acknowledged before the ${signal}`)

      const second = await spawnVigil(fullEnv, dataDir)
      t.teardown(() => { second.child.kill('SIGKILL') })
      fleet.retarget(second.mqttPort)
      await sleep(3000)
      await fleet.stop()
      t.ok(fleet.ackedCount() > before, 'devices reconnected and were acknowledged again')
      await verify(t, second, fleet, devices)
      second.child.kill('SIGTERM')
      t.equal(await second.exited, 0)
    })
  }
}

// Alert evaluation across a crash: a reading acknowledged just before a SIGKILL, inside the alert
// engine's batch window, is stored; the spool keeps it past the engine's evaluation mark, so the
// restarted process evaluates it before it takes new readings.
for (const [name, setup] of modes) {
  t.test(`${name}: a reading acknowledged just before SIGKILL is evaluated after the restart`, async (t) => {
    const { fullEnv, dataDir, first, device } = await startWithRule(t, setup, 'vigil-crash-eval-', 'kind: threshold, metric: heart_rate, above: 150')
    const client = await connectDevice(t, first, device)

    // One reading evaluated (and its state saved) first, then the breach: killed at its PUBACK.
    const ts = Date.now() - 60_000
    await publishHeartRate(client, device.deviceId, 1, 80, ts)
    await evaluated(first, 1, 50)
    await publishHeartRate(client, device.deviceId, 2, 170, ts + 1000)
    first.child.kill('SIGKILL')
    await first.exited
    await client.endAsync(true).catch(() => {})

    const startedAgain = Date.now()
    const second = await spawnVigil(fullEnv, dataDir)
    t.teardown(() => { second.child.kill('SIGKILL') })
    const alerts = await alertsOnceAny(second, device.patientId)
    t.match(alerts.map((a) => [a.ruleId, a.status]), [['high-hr', 'open']], 'the breach acknowledged before the crash opened its alert')
    t.ok(await metric(second, 'vigil_alert_readings_replayed_total') >= 1, 'it was evaluated from the spool at start')
    // The device was connected when the process died, and no connection outlives its process:
    // until it reconnects it is disconnected (the worklist and no-data causes read this).
    const shown = await fetch(`http://127.0.0.1:${second.httpPort}/v1/devices/${device.deviceId}`, { headers: { authorization: `Bearer ${token}` } })
    const { presence } = await shown.json() as { presence: { connected: boolean, since: string | null } }
    t.equal(presence.connected, false, 'a device connected at the crash is not shown connected after the restart')
    t.ok(presence.since !== null && Date.parse(presence.since) >= startedAgain, 'disconnected since the restart found it so')
    second.child.kill('SIGTERM')
    t.equal(await second.exited, 0)
  })
}

// One process keeps its patients' rule state in memory, saved once a second (or with a condition
// change), on a Postgres server as on the embedded default: a window evaluated but not saved when
// the process dies is rebuilt from the spool, so a breach that began before the crash still
// counts toward its `for` after it.
for (const [name, setup] of modes) {
  t.test(`${name}: a window evaluated but not saved before SIGKILL carries on after the restart`, async (t) => {
    const { fullEnv, dataDir, first, device } = await startWithRule(t, setup, 'vigil-crash-window-', 'kind: threshold, metric: heart_rate, above: 150, for: 30s')

    // The breach begins and is evaluated (no alert: 30 s not held yet); killed before its state's save.
    const ts = Date.now() - 120_000
    const client = await connectDevice(t, first, device)
    await publishHeartRate(client, device.deviceId, 1, 170, ts)
    await evaluated(first, 1, 10)
    first.child.kill('SIGKILL')
    await first.exited
    await client.endAsync(true).catch(() => {})

    const second = await spawnVigil(fullEnv, dataDir)
    t.teardown(() => { second.child.kill('SIGKILL') })
    t.ok(await metric(second, 'vigil_alert_readings_replayed_total') >= 1, 'the unsaved window was evaluated again from the spool at start')
    const again = await connectDevice(t, second, device)
    // 40 s into the breach: only the reading from before the crash makes it 30 s held.
    await publishHeartRate(again, device.deviceId, 2, 172, ts + 40_000)
    const alerts = await alertsOnceAny(second, device.patientId)
    t.match(alerts.map((a) => [a.ruleId, a.status]), [['high-hr', 'open']], 'the breach held across the crash opened its alert')
    await again.endAsync(true).catch(() => {})
    second.child.kill('SIGTERM')
    t.equal(await second.exited, 0)
  })
}
