import { randomBytes } from 'node:crypto'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import mqtt from 'mqtt'
import pg from 'pg'
import t from 'tap'
import { startPostgresCluster, type ClusterMember } from '../helpers/postgres-cluster.ts'
import { waitForValue } from '../helpers/wait.ts'

// Issue 16 item 2: readings of one patient arriving at two processes give exactly the condition
// transitions one process gives. A scripted scenario (flapping that must not fire, a real
// deterioration, recovery), its readings alternating between two devices of one patient, is
// replayed through one process (both devices on A) and through two (one device on each): the
// alerts and alert events must be the same. Rule state is serialized per patient in Postgres
// (advisory transaction lock around load → evaluate → save; docs/operations.md).

const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-alert-consistency-'))
const rulesPath = path.join(dir, 'alert-rules.yaml')
await fs.writeFile(rulesPath, `
escalationPolicies: []
webhooks: []
rules:
  - { id: tachy, kind: threshold, metric: heart_rate, above: 120, for: 10s, hysteresis: 5, clearAfter: 15s, severity: high }
  - { id: hypox, kind: threshold, metric: spo2, below: 90, for: 10s, hysteresis: 2, clearAfter: 10s, severity: high }
`)
const cluster = await startPostgresCluster(2, { VIGIL_ALERT_RULES: rulesPath })
const sql = new pg.Pool({ connectionString: cluster.databaseUrl, max: 1 })
t.teardown(async () => {
  await sql.end()
  await cluster.close()
  await fs.rm(dir, { recursive: true, force: true })
})
const [a, b] = cluster.members as [ClusterMember, ClusterMember]

// [seconds from the start, device 0 or 1, heart rate, SpO2]. 0–25 s: above 120 on one device,
// back to normal on the other (SpO2 the same way), never 10 s in a row for the patient (a process seeing one device
// only would fire); 30–45 s: a real deterioration (fires at 40 s); 50–70 s: recovery (clears at 65 s).
const scenario: Array<[number, 0 | 1, number, number]> = [
  [0, 0, 130, 96], [5, 1, 100, 88], [10, 0, 130, 97], [15, 1, 100, 89], [20, 0, 130, 96], [25, 1, 100, 95],
  [30, 0, 135, 87], [35, 1, 140, 86], [40, 0, 145, 85], [45, 1, 150, 86],
  [50, 0, 110, 93], [55, 1, 100, 94], [60, 0, 100, 95], [65, 1, 95, 96], [70, 0, 90, 97]
]

async function must<T = any> (member: ClusterMember, method: string, route: string, body?: unknown): Promise<T> {
  const res = await member.api<T>(method, route, body)
  if (res.status >= 300) throw new Error(`${method} ${route} → ${res.status} ${JSON.stringify(res.body)}`)
  return res.body
}

async function addDevice (patientId: string): Promise<{ deviceId: string, password: string }> {
  const mac = ['02', ...Array.from(randomBytes(5), (x) => x.toString(16).padStart(2, '0'))].join(':')
  const device = await must<{ id: string }>(a, 'POST', '/v1/devices', { name: 'Monitor', mac, firmwareVersion: '1', softwareVersion: '1', startedAt: '2026-01-01T00:00:00Z' })
  await must(a, 'PUT', `/v1/devices/${device.id}/assignment`, { patientId, validFrom: new Date(Date.now() - 3_600_000).toISOString() })
  const cred = await must<{ password: string }>(a, 'POST', `/v1/devices/${device.id}/credentials`)
  return { deviceId: device.id, password: cred.password }
}

async function evaluated (member: ClusterMember): Promise<number> {
  return (await member.metric('vigil_alert_readings_evaluated_total')).get('') ?? 0
}

/** Replays the scenario for a new patient, device i connected to via[i]; returns its alerts and events, times relative to the start. */
async function replay (via: [ClusterMember, ClusterMember]): Promise<unknown> {
  const patient = await must<{ id: string }>(a, 'POST', '/v1/patients', { displayName: 'Scenario Patient' })
  const devices = [await addDevice(patient.id), await addDevice(patient.id)]
  const clients = await Promise.all(devices.map((d, i) => mqtt.connectAsync(`mqtt://127.0.0.1:${via[i]!.mqttPort}`, {
    clientId: d.deviceId, username: d.deviceId, password: d.password, reconnectPeriod: 0
  })))
  const start = Date.now() - 10 * 60_000
  try {
    for (const [step, [at, device, hr, spo2]] of scenario.entries()) {
      const member = via[device]
      const before = await evaluated(member)
      await clients[device]!.publishAsync(`devices/${devices[device]!.deviceId}/telemetry`, JSON.stringify({
        seq: step + 1,
        readings: [{ metric: 'heart_rate', value: hr, unit: '/min', ts: start + at * 1000 }, { metric: 'spo2', value: spo2, unit: '%', ts: start + at * 1000 }]
      }), { qos: 1 })
      // Each step is evaluated before the next is sent: the order is the scenario's, whichever process takes it.
      await waitForValue(`step ${step} evaluated`, () => evaluated(member), (n) => n >= before + 2)
    }
  } finally {
    await Promise.all(clients.map((c) => c.endAsync()))
  }
  // opened_at is the condition's (reading) time; resolved_at is Vigil's clock, so only its presence is compared.
  const rel = (d: Date): number => d.getTime() - start
  const { rows: alerts } = await sql.query(
    'SELECT id, rule_id, status, summary, opened_at, resolved_at, resolution, occurrences FROM alerts WHERE patient_id = $1 ORDER BY seq', [patient.id])
  const { rows: events } = await sql.query(
    'SELECT e.type, a.rule_id FROM alert_events e JOIN alerts a ON a.id = e.alert_id WHERE e.patient_id = $1 ORDER BY e.id', [patient.id])
  return {
    alerts: alerts.map((r) => ({ ruleId: r.rule_id, status: r.status, summary: r.summary, openedAt: rel(r.opened_at), resolution: r.resolution, occurrences: r.occurrences })),
    events: events.map((e) => `${e.rule_id as string} ${e.type as string}`)
  }
}

t.test('the scenario through one process and through two gives the same alerts and events', async (t) => {
  const one = await replay([a, a])
  t.same([...(one as any).events].sort(), ['hypox opened', 'hypox resolved', 'tachy opened', 'tachy resolved'], 'one process: the deterioration opens both, the recovery resolves both')
  t.same((one as any).alerts.map((x: any) => [x.ruleId, x.status, x.openedAt, x.resolution]).sort(),
    [['hypox', 'resolved', 40_000, 'auto'], ['tachy', 'resolved', 40_000, 'auto']], 'fired at 40 s, not during the flapping')
  const two = await replay([a, b])
  t.same(two, one, 'two processes: the same alerts and events')
  t.comment(JSON.stringify(one))
})
