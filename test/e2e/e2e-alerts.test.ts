import { createHmac, randomBytes } from 'node:crypto'
import fs from 'node:fs/promises'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import os from 'node:os'
import path from 'node:path'
import mqtt from 'mqtt'
import t from 'tap'
import { DERIVED_DEVICE_ID } from '../../alerts/engine/evaluate.ts'
import { adminToken } from '../helpers/vigil.ts'
import { startVigilWithLogCapture } from '../helpers/log-capture.ts'
import { waitFor } from '../helpers/wait.ts'

// The whole service, as `npm start` wires it: MQTT publish → ingest → alert engine (worker
// threads) → alert lifecycle → SSE stream and a signed webhook; NEWS2 stored as a reading.

// A real webhook receiver that checks the signature the README documents.
const webhookSecret = randomBytes(24).toString('hex')
process.env.VIGIL_WEBHOOK_TEST_E2E_SECRET = webhookSecret
interface Delivery { body: any, signatureValid: boolean }
const deliveries: Delivery[] = []
const receiver = http.createServer((req, res) => {
  const chunks: Buffer[] = []
  req.on('data', (c: Buffer) => chunks.push(c))
  req.on('end', () => {
    const raw = Buffer.concat(chunks).toString('utf8')
    const ts = String(req.headers['x-vigil-timestamp'])
    const expected = `sha256=${createHmac('sha256', webhookSecret).update(`${ts}.${raw}`).digest('hex')}`
    deliveries.push({ body: JSON.parse(raw), signatureValid: req.headers['x-vigil-signature'] === expected })
    res.writeHead(204).end()
  })
})
await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve))
const receiverPort = (receiver.address() as AddressInfo).port

const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-e2e-alerts-'))
const rulesPath = path.join(dir, 'alert-rules.yaml')
await fs.writeFile(rulesPath, `
escalationPolicies:
  - id: standard
    tiers:
      - { notify: [nurse], escalateAfter: 5m }
      - { notify: [doctor], escalateAfter: 10m }
# The receiver is a local listener: only an allow-listed origin may be plain http and loopback.
webhookAllowList: ["http://127.0.0.1:${receiverPort}"]
webhooks:
  - { id: pager, url: "http://127.0.0.1:${receiverPort}/hook", secretEnv: VIGIL_WEBHOOK_TEST_E2E_SECRET, minSeverity: high }
rules:
  - { id: high-hr, kind: threshold, metric: heart_rate, above: 150, severity: critical, escalation: standard }
  - { id: news2, kind: news2, freshness: 1h, bands: { low_medium: medium, medium: high, high: critical } }
`)
const vigil = await startVigilWithLogCapture({ env: { VIGIL_ALERT_RULES: rulesPath, WORKER_THREADS: '1' } })
t.teardown(async () => {
  await vigil.close()
  await new Promise<void>((resolve) => receiver.close(() => resolve()))
  await fs.rm(dir, { recursive: true, force: true })
  delete process.env.VIGIL_WEBHOOK_TEST_E2E_SECRET
})

/** A real SSE client: collects `data:` payloads from GET /v1/alerts/stream. */
async function openStream (): Promise<{ events: any[], close: () => void }> {
  const controller = new AbortController()
  const res = await fetch(`http://127.0.0.1:${vigil.httpPort}/v1/alerts/stream`, {
    headers: { authorization: `Bearer ${adminToken}`, accept: 'text/event-stream' }, signal: controller.signal
  })
  if (res.status !== 200 || res.body === null) throw new Error(`stream answered ${res.status}`)
  const events: any[] = []
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader()
  void (async () => {
    let buffered = ''
    try {
      for (;;) {
        const { value, done } = await reader.read()
        if (done) return
        buffered += value
        let end: number
        while ((end = buffered.indexOf('\n\n')) !== -1) {
          const block = buffered.slice(0, end)
          buffered = buffered.slice(end + 2)
          const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('\n')
          if (data !== '') events.push(JSON.parse(data))
        }
      }
    } catch {
      // aborted at close
    }
  })()
  return { events, close: () => controller.abort() }
}

t.test('readings published over MQTT open alerts, seen on the SSE stream and the signed webhook', async (t) => {
  const stream = await openStream()
  t.teardown(() => stream.close())
  const { patientId, deviceId, password } = await vigil.provision()
  const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${vigil.mqttPort}`, { clientId: deviceId, username: deviceId, password, reconnectPeriod: 0 })
  t.teardown(() => client.endAsync())
  const ts = Date.now() - 1000
  const vitals: Array<[string, number, string]> = [
    ['heart_rate', 160, '/min'], ['resp_rate', 16, '/min'], ['spo2', 97, '%'], ['o2_supplemental', 0, '1'],
    ['bp_systolic', 120, 'mm[Hg]'], ['consciousness', 0, '1'], ['body_temp', 37, 'Cel']
  ]
  await client.publishAsync(`devices/${deviceId}/telemetry`, JSON.stringify({
    seq: 1, readings: vitals.map(([metric, value, unit]) => ({ metric, value, unit, ts }))
  }), { qos: 1 })

  // The lifecycle: one open alert per rule that fired.
  const alertsOf = async () => (await vigil.api<any>('GET', `/v1/alerts?patientId=${patientId}`)).body.items as any[]
  await waitFor('two open alerts', async () => (await alertsOf()).length === 2)
  const alerts = await alertsOf()
  t.match(alerts.map((a) => [a.ruleId, a.status, a.severity]).sort(), [['high-hr', 'open', 'critical'], ['news2', 'open', 'medium']])

  // SSE: the clinician's stream saw both open.
  await waitFor('both alerts on the stream', () => stream.events.filter((e) => e.alert?.patientId === patientId && e.type === 'opened').length === 2)
  t.same(stream.events.filter((e) => e.alert?.patientId === patientId).map((e) => e.alert.ruleId).sort(), ['high-hr', 'news2'])

  // Webhook: only the critical one (minSeverity high), signed.
  await waitFor('the webhook', () => deliveries.some((d) => d.body.alert?.patientId === patientId))
  const hooked = deliveries.filter((d) => d.body.alert?.patientId === patientId)
  t.same(hooked.map((d) => d.body.alert.ruleId), ['high-hr'], 'only alerts at or above the webhook\'s minSeverity')
  t.ok(hooked.every((d) => d.signatureValid), 'X-Vigil-Signature verifies with the shared secret')
  t.notMatch(JSON.stringify(hooked), /Test Patient|display/i, 'no names leave Vigil')

  // Acknowledging stops escalation and reaches the stream too.
  const critical = alerts.find((a) => a.ruleId === 'high-hr')
  const ack = await vigil.api<any>('POST', `/v1/alerts/${critical.id}/acknowledge`, {})
  t.equal(ack.status, 200)
  await waitFor('the acknowledgement on the stream', () => stream.events.some((e) => e.type === 'acknowledged' && e.alert?.id === critical.id))

  // NEWS2 stored as a reading of its own.
  await waitFor('the NEWS2 reading', async () => (await vigil.api<any>('GET', `/v1/patients/${patientId}/readings?metric=news2_score`)).body.items.length === 1)
  const news2 = await vigil.api<any>('GET', `/v1/patients/${patientId}/readings?metric=news2_score`)
  t.match(news2.body.items, [{ metric: 'news2_score', value: 3, unit: '{score}', deviceId: DERIVED_DEVICE_ID, ts: new Date(ts).toISOString() }])

  const metrics = await vigil.metrics()
  t.equal(metrics.get('vigil_alert_readings_evaluated_total'), 7)
  t.equal(metrics.get('vigil_alert_condition_changes_total{kind="threshold",status="firing"}'), 1)
  t.ok((metrics.get('vigil_alert_reading_to_condition_seconds_count') ?? 0) >= 2)

  const rules = await vigil.api<any>('GET', '/v1/alert-rules')
  t.equal(rules.status, 200)
  t.match(rules.body, { lastError: null, rules: [{ id: 'high-hr' }, { id: 'news2' }] })
})
