import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import mqtt from 'mqtt'
import t from 'tap'
import { DERIVED_DEVICE_ID } from '../alerts/evaluate.ts'
import { startVigilWithLogCapture } from './helpers/log-capture.ts'

// The whole service: MQTT publish → ingest → alert engine (worker threads) → condition sink
// (the logging stand-in until the alert lifecycle lands) and NEWS2 stored as a reading.
const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-e2e-alerts-'))
const rulesPath = path.join(dir, 'alert-rules.yaml')
await fs.writeFile(rulesPath, `
rules:
  - { id: high-hr, kind: threshold, metric: heart_rate, above: 150, severity: critical }
  - { id: news2, kind: news2, freshness: 1h, bands: { low_medium: medium, medium: high, high: critical } }
`)
const vigil = await startVigilWithLogCapture({ env: { VIGIL_ALERT_RULES: rulesPath, WORKER_THREADS: '1' } })
t.teardown(async () => {
  await vigil.close()
  await fs.rm(dir, { recursive: true, force: true })
})

async function until (what: string, condition: () => boolean | Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 20_000
  while (!await condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

t.test('a published reading reaches the condition sink; a complete NEWS2 is stored', async (t) => {
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

  const conditions = () => vigil.logs.find('alert condition changed').filter((l) => l.patientId === patientId)
  await until('two condition changes', () => conditions().length === 2)
  t.match(conditions().map((l) => [l.ruleId, l.status, l.severity]).sort(), [['high-hr', 'firing', 'critical'], ['news2', 'firing', 'medium']])
  t.notOk(conditions().some((l) => 'summary' in l || 'details' in l || 'value' in l), 'the sink logs ids, not values')

  await until('the NEWS2 reading', async () => (await vigil.api<any>('GET', `/v1/patients/${patientId}/readings?metric=news2_score`)).body.items.length === 1)
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
