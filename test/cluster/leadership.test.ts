import { randomBytes } from 'node:crypto'
import fs from 'node:fs/promises'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import os from 'node:os'
import path from 'node:path'
import mqtt from 'mqtt'
import pg from 'pg'
import t from 'tap'
import { startPostgresCluster, type ClusterMember } from '../helpers/postgres-cluster.ts'
import { provisionDevice } from '../helpers/provision.ts'
import { adminToken } from '../helpers/vigil.ts'
import { waitFor, waitForValue } from '../helpers/wait.ts'

// Issue 16 item 4: three real Vigil processes on one Postgres database. Escalation, no-data
// checks, housekeeping and re-encryption run in exactly one (advisory locks); SIGKILL that
// one and another takes over within 30 s, and an escalation falling due during the hand-over
// is sent exactly once (counted at a real webhook receiver).

const TASKS = ['escalation', 'no-data', 'housekeeping', 'reencryption']

const webhookSecret = randomBytes(24).toString('hex')
interface Delivery { type: string, tier?: number, alertId: string }
const deliveries: Delivery[] = []
const receiver = http.createServer((req, res) => {
  const chunks: Buffer[] = []
  req.on('data', (c: Buffer) => chunks.push(c))
  req.on('end', () => {
    const body = JSON.parse(Buffer.concat(chunks).toString('utf8'))
    deliveries.push({ type: body.type, tier: body.tier, alertId: body.alert?.id })
    res.writeHead(204).end()
  })
})
await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve))
const receiverPort = (receiver.address() as AddressInfo).port

const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-leadership-'))
const rulesPath = path.join(dir, 'alert-rules.yaml')
// Tier 0 lasts 12 s (the test kills the leader just before it runs out); tier 1 an hour, so
// exactly one escalation is due while the test watches.
await fs.writeFile(rulesPath, `
escalationPolicies:
  - id: fast
    tiers:
      - { notify: [nurse], escalateAfter: 12s }
      - { notify: [doctor], escalateAfter: 1h }
webhookAllowList: ["http://127.0.0.1:${receiverPort}"]
webhooks:
  - { id: pager, url: "http://127.0.0.1:${receiverPort}/hook", secretEnv: VIGIL_WEBHOOK_LEADERSHIP_SECRET, minSeverity: low }
rules:
  - { id: high-hr, kind: threshold, metric: heart_rate, above: 150, severity: critical, escalation: fast }
`)

const cluster = await startPostgresCluster(3, {
  VIGIL_ALERT_RULES: rulesPath, VIGIL_WEBHOOK_LEADERSHIP_SECRET: webhookSecret, VIGIL_LEADER_TAKEOVER_SECONDS: '6', LOG_LEVEL: 'info'
})
const sql = new pg.Pool({ connectionString: cluster.databaseUrl, max: 2 })
t.teardown(async () => {
  await sql.end()
  await cluster.close()
  await new Promise<void>((resolve) => receiver.close(() => resolve()))
  await fs.rm(dir, { recursive: true, force: true })
})

/** Each living member's vigil_cluster_leader samples, as task → 0/1. */
async function leadersOf (members: ClusterMember[]): Promise<Array<{ member: ClusterMember, tasks: Record<string, number> }>> {
  return await Promise.all(members.map(async (member) => {
    const samples = await member.metric('vigil_cluster_leader')
    const tasks: Record<string, number> = {}
    for (const task of TASKS) tasks[task] = samples.get(`task="${task}"`) ?? -1
    return { member, tasks }
  }))
}

/** Waits until every task has exactly one leader among `members` and every member reports every task; returns the leaders by task. */
async function oneLeaderEach (members: ClusterMember[], timeoutMs = 30_000): Promise<Map<string, ClusterMember>> {
  const seen = await waitForValue('exactly one leader per task', () => leadersOf(members), (all) =>
    TASKS.every((task) => all.every((m) => m.tasks[task] === 0 || m.tasks[task] === 1) && all.filter((m) => m.tasks[task] === 1).length === 1),
  { timeoutMs, everyMs: 100 })
  return new Map(TASKS.map((task) => [task, seen.find((m) => m.tasks[task] === 1)!.member]))
}

t.test('exactly one process leads each task; SIGKILL it and another takes over, the due escalation sent once', async (t) => {
  const leaders = await oneLeaderEach(cluster.members)
  t.equal(leaders.size, TASKS.length)
  const leader = leaders.get('escalation')!
  const followers = cluster.members.filter((m) => m !== leader)
  t.equal(followers.length, 2)

  // An alert opened through a follower (a device connected to it): its escalation falls due 12 s later.
  const { patientId, deviceId, password } = await provisionDevice(followers[0]!.base, adminToken)
  const device = await mqtt.connectAsync(`mqtt://127.0.0.1:${followers[0]!.mqttPort}`, { clientId: deviceId, username: deviceId, password, reconnectPeriod: 0 })
  t.teardown(() => device.endAsync())
  await device.publishAsync(`devices/${deviceId}/telemetry`, JSON.stringify({ seq: 1, readings: [{ metric: 'heart_rate', value: 170, unit: '/min', ts: Date.now() }] }), { qos: 1 })
  const alert = await waitFor('the alert', async () => {
    const { rows } = await sql.query('SELECT id, next_escalation_at FROM alerts WHERE patient_id = $1', [patientId])
    return rows[0] as { id: string, next_escalation_at: Date } | undefined
  })
  await waitFor('the opened webhook', () => deliveries.some((d) => d.alertId === alert.id && d.type === 'opened'))

  // Kill the leader half a second before the escalation is due: it falls due during the hand-over.
  const killAt = alert.next_escalation_at.getTime() - 500
  t.ok(killAt > Date.now(), 'the leader is killed before the escalation is due')
  await new Promise((resolve) => setTimeout(resolve, killAt - Date.now()))
  const killedAt = Date.now()
  leader.child.kill('SIGKILL')
  await leader.exited

  const after = await oneLeaderEach(followers)
  const takeoverMs = Date.now() - killedAt
  t.ok(takeoverMs < 30_000, `another process took over in ${takeoverMs} ms`)
  t.comment(`takeover after SIGKILL: ${takeoverMs} ms (VIGIL_LEADER_TAKEOVER_SECONDS=6)`)
  t.ok(followers.includes(after.get('escalation')!))

  // The new leader's next escalation tick (every 15 s) escalates the alert to tier 1: once.
  await waitFor('the escalated webhook', () => deliveries.some((d) => d.alertId === alert.id && d.type === 'escalated'), { timeoutMs: 45_000 })
  // Two more ticks of both survivors pass (and the housekeeping outbox sweep): still one.
  await new Promise((resolve) => setTimeout(resolve, 31_000))
  const escalatedHooks = deliveries.filter((d) => d.alertId === alert.id && d.type === 'escalated')
  t.same(escalatedHooks.map((d) => d.tier), [1], 'the escalation reached the webhook exactly once')
  const { rows: events } = await sql.query("SELECT count(*)::int AS n FROM alert_events WHERE alert_id = $1 AND type = 'escalated'", [alert.id])
  t.equal(events[0].n, 1, 'one escalated event stored')
  const { rows: outbox } = await sql.query("SELECT count(*)::int AS n FROM webhook_outbox o JOIN alert_events e ON e.id = o.event_id WHERE e.alert_id = $1 AND e.type = 'escalated'", [alert.id])
  t.equal(outbox[0].n, 1, 'one outbox row for it')

  // A restarted process joins as a follower: the leadership does not move back.
  const rejoined = await cluster.add()
  const final = await oneLeaderEach([...followers, rejoined])
  t.same(TASKS.map((task) => final.get(task)), TASKS.map((task) => after.get(task)), 'the new leader keeps its tasks')
})
