/**
 * From a reading published over MQTT to the right person's alert streams, the whole service in
 * one process (MQTT → ingest → alert engine in a worker thread → lifecycle → tier recipients):
 *   npx tsx bench/alert-to-person.ts [--rounds 30] [--embedded]
 * A nurse on the patient's care team holds GET /v1/me/alerts/stream and an MQTT subscription to
 * users/{id}/alerts. Each round publishes heart_rate 160 (QoS 1, the rule fires: an alert opens
 * and its first tier, nurse, is notified), waits for it on both, then 80 (the alert resolves).
 * Reports PUBACK, SSE and MQTT latency from the publish call: p50, p95, max. Default Postgres on
 * 127.0.0.1:5432 (a throwaway database); --embedded: PGlite, as `npm start` on a fresh clone.
 */
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { parseArgs } from 'node:util'
import mqtt from 'mqtt'
import { openSse } from '../test/helpers/sse.ts'
import { waitFor } from '../test/helpers/wait.ts'
import { createTestDatabase } from '../test/helpers/postgres.ts'
import { startTestVigil } from '../test/helpers/vigil.ts'

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '30' }, embedded: { type: 'boolean', default: false } } })
const rounds = Number(values.rounds)
const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-bench-person-'))
const rulesPath = path.join(dir, 'alert-rules.yaml')
await fs.writeFile(rulesPath, `
escalationPolicies:
  - { id: ward, tiers: [{ notify: [nurse], escalateAfter: 5m }, { notify: [doctor], escalateAfter: 10m }] }
rules:
  - { id: high-hr, kind: threshold, metric: heart_rate, above: 150, hysteresis: 0, severity: critical, escalation: ward }
`)
const testDb = values.embedded ? null : await createTestDatabase()
const vigil = await startTestVigil({ VIGIL_ALERT_RULES: rulesPath, WORKER_THREADS: '1', ...(testDb === null ? {} : { DATABASE_URL: testDb.url }) }, path.join(dir, 'data'))

async function must<T = any> (method: string, route: string, body?: unknown, token?: string): Promise<T> {
  const res = await vigil.api<T>(method, route, body, token)
  if (res.status >= 300) throw new Error(`${method} ${route} → ${res.status} ${JSON.stringify(res.body)}`)
  return res.body
}

try {
  const { patientId, deviceId, password } = await vigil.provision()
  const nurse = await must<{ id: string }>('POST', '/v1/users', { email: 'bench.nurse@example.org', displayName: 'Bench Nurse', password: 'correct horse 42', roles: ['nurse'] })
  await must('POST', '/v1/care-teams', { clinicianId: nurse.id, patientId })
  const { accessToken } = await (await fetch(`http://127.0.0.1:${vigil.httpPort}/v1/auth/login`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email: 'bench.nurse@example.org', password: 'correct horse 42' })
  })).json() as { accessToken: string }

  const stream = await openSse(`http://127.0.0.1:${vigil.httpPort}/v1/me/alerts/stream`, { authorization: `Bearer ${accessToken}` })
  const person = await mqtt.connectAsync(vigil.mqttUrl(), { clientId: `${nurse.id}-phone`, username: 'bearer', password: accessToken, protocolVersion: 4, reconnectPeriod: 0 })
  await person.subscribeAsync(`users/${nurse.id}/alerts`, { qos: 1 })
  const mqttEvents: Array<{ data: any, receivedAt: number }> = []
  person.on('message', (_topic, payload) => mqttEvents.push({ data: JSON.parse(payload.toString()), receivedAt: performance.now() }))
  const device = await vigil.connect(deviceId, password)

  const puback: number[] = []
  const sse: number[] = []
  const overMqtt: number[] = []
  let seq = 0
  const publish = async (value: number): Promise<number> => {
    const started = performance.now()
    await device.publishAsync(`devices/${deviceId}/telemetry`, JSON.stringify({ seq: ++seq, readings: [{ metric: 'heart_rate', value, unit: '/min', ts: Date.now() }] }), { qos: 1 })
    puback.push(performance.now() - started)
    return started
  }
  for (let round = 0; round < rounds; round++) {
    const opened = stream.events.filter((e) => e.data.type === 'opened').length
    const started = await publish(160)
    const event = await waitFor(`round ${round}: the opened alert on the nurse's stream`, async () => stream.events.filter((e) => e.data.type === 'opened')[opened], { timeoutMs: 15_000, everyMs: 20 })
    sse.push(event.receivedAt - started)
    const message = await waitFor(`round ${round}: the opened alert on users/{id}/alerts`, async () => mqttEvents.filter((e) => e.data.type === 'opened')[opened], { timeoutMs: 15_000, everyMs: 20 })
    overMqtt.push(message.receivedAt - started)
    const resolved = stream.events.filter((e) => e.data.type === 'resolved').length
    await publish(80)
    await waitFor(`round ${round}: the resolve`, async () => stream.events.filter((e) => e.data.type === 'resolved').length > resolved, { timeoutMs: 15_000, everyMs: 20 })
  }
  const stats = (name: string, ms: number[]): string => {
    const sorted = [...ms].sort((a, b) => a - b)
    const at = (q: number): string => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!.toFixed(1)
    return `${name.padEnd(34)} p50 ${at(0.5)} ms  p95 ${at(0.95)} ms  max ${sorted[sorted.length - 1]!.toFixed(1)} ms  (n=${ms.length})`
  }
  console.log(`reading → the care-team nurse's alert streams, ${values.embedded ? 'embedded PGlite' : 'PostgreSQL'}, ${rounds} rounds, ${os.cpus().length} CPUs, load ${os.loadavg()[0]!.toFixed(1)}`)
  console.log(stats('publish → PUBACK (stored)', puback))
  console.log(stats('publish → SSE /v1/me/alerts/stream', sse))
  console.log(stats('publish → MQTT users/{id}/alerts', overMqtt))
  await device.endAsync()
  await person.endAsync()
  await stream.close()
} finally {
  await vigil.close()
  await testDb?.drop()
  await fs.rm(dir, { recursive: true, force: true })
}
