import t from 'tap'
import { startTestVigil, telemetry } from '../helpers/vigil.ts'

// Every invalid payload is acknowledged (so the device does not resend it forever), stored as
// a rejection with its own reason, and never stored as a reading.
const vigil = await startTestVigil()
t.teardown(() => vigil.close())
const device = await vigil.provision()
const client = await vigil.connect(device.deviceId, device.password)
t.teardown(() => client.endAsync())

// An unassigned device: registered with a credential but never assigned to a patient.
const lone = await vigil.api('POST', '/v1/devices', {
  name: 'Unassigned scale', mac: '02:aa:bb:cc:dd:ee', firmwareVersion: '1', softwareVersion: '1', startedAt: '2026-01-01'
})
const loneCred = await vigil.api('POST', `/v1/devices/${lone.body.id}/credentials`)

const topic = `devices/${device.deviceId}/telemetry`
const cases: Array<[string, string, string]> = [
  ['payload_not_json', topic, '{"seq": 1, "readings": ['],
  ['payload_schema', topic, JSON.stringify({ seq: 1, readings: [{ metric: 'heart_rate', value: '72', unit: '/min', ts: Date.now() }] })],
  ['unknown_metric', topic, telemetry(2, [{ metric: 'mood', value: 5, unit: '1' }])],
  ['unit_unsupported', topic, telemetry(3, [{ metric: 'heart_rate', value: 72, unit: 'Hz' }])],
  ['value_out_of_range', topic, telemetry(4, [{ metric: 'spo2', value: 140, unit: '%' }])],
  ['timestamp_in_future', topic, telemetry(5, [{ metric: 'heart_rate', value: 72, unit: '/min', ts: Date.now() + 3_600_000 }])],
  ['senml_invalid', `devices/${device.deviceId}/senml`, JSON.stringify([{ n: 'heart_rate', vs: 'seventy' }])],
  // Before the device's assignment began (assigned an hour ago by provision()).
  ['device_unassigned', topic, telemetry(6, [{ metric: 'heart_rate', value: 72, unit: '/min', ts: Date.now() - 7_200_000 }])]
]

t.test('each invalid payload is acknowledged and logged with a distinct reason', async (t) => {
  for (const [, topicName, payload] of cases) {
    await client.publishAsync(topicName, payload, { qos: 1 })
  }
  const res = await vigil.api('GET', `/v1/devices/${device.deviceId}/rejections?limit=100`)
  t.equal(res.status, 200)
  const reasons = res.body.items.map((r: any) => r.reason).reverse()
  t.same(reasons, cases.map(([reason]) => reason))
  t.equal(new Set(reasons).size, cases.length, 'reasons are distinct')
  t.equal(res.body.items.at(-1).payload, cases[0]![2], 'the refused payload is kept for debugging')

  const readings = await vigil.api('GET', `/v1/patients/${device.patientId}/readings`)
  t.equal(readings.body.items.length, 0, 'nothing invalid was stored')

  const metrics = await fetch(`http://127.0.0.1:${vigil.httpPort}/metrics`).then((r) => r.text())
  for (const [reason] of cases) t.match(metrics, new RegExp(`vigil_rejections_total\\{reason="${reason}"\\} 1`))
})

t.test('a device with no assignment has its readings rejected, not lost', async (t) => {
  const c = await vigil.connect(lone.body.id, loneCred.body.password)
  t.teardown(() => c.endAsync())
  await c.publishAsync(`devices/${lone.body.id}/telemetry`, telemetry(1, [{ metric: 'body_weight', value: 70, unit: 'kg' }]), { qos: 1 })
  const res = await vigil.api('GET', `/v1/devices/${lone.body.id}/rejections`)
  t.same(res.body.items.map((r: any) => r.reason), ['device_unassigned'])
})

t.test('one bad reading rejects the whole message', async (t) => {
  await client.publishAsync(topic, telemetry(9, [
    { metric: 'heart_rate', value: 70, unit: '/min' },
    { metric: 'heart_rate', value: 7000, unit: '/min' }
  ]), { qos: 1 })
  const readings = await vigil.api('GET', `/v1/patients/${device.patientId}/readings`)
  t.equal(readings.body.items.length, 0)
})

t.test('valid readings after rejections are stored, converted to canonical units', async (t) => {
  await client.publishAsync(topic, telemetry(10, [
    { metric: 'body_temp', value: 98.6, unit: '[degF]' },
    { metric: 'glucose', value: 5.5, unit: 'mmol/L' }
  ]), { qos: 1 })
  const readings = await vigil.api('GET', `/v1/patients/${device.patientId}/readings`)
  t.same(readings.body.items.map((r: any) => [r.metric, r.value, r.unit]).sort(), [['body_temp', 37, 'Cel'], ['glucose', 99.1, 'mg/dL']])
})

t.test('control characters in a payload cannot block its rejection from being recorded', async (t) => {
  // A NUL in a JSON key ends up quoted in the message; Postgres text cannot hold U+0000.
  await client.publishAsync(topic, '{"seq": 1, "readings": [], "a\\u0000b": 1}', { qos: 1 })
  const res = await vigil.api('GET', `/v1/devices/${device.deviceId}/rejections?limit=1`)
  t.equal(res.body.items[0].reason, 'payload_schema')
  t.notMatch(res.body.items[0].message, /\u0000/)
})

t.test('an unassigned backlog is kept whole in the rejection log, so it can be recovered', async (t) => {
  const old = Date.now() - 7_200_000
  const readings = Array.from({ length: 400 }, (_, i) => ({ metric: 'heart_rate', value: 60 + (i % 40), unit: '/min', ts: old + i * 1000 }))
  const payload = telemetry(77, readings)
  t.ok(payload.length > 4096)
  await client.publishAsync(topic, payload, { qos: 1 })
  const res = await vigil.api('GET', `/v1/devices/${device.deviceId}/rejections?limit=1`)
  t.equal(res.body.items[0].reason, 'device_unassigned')
  t.equal(res.body.items[0].payload, payload)
})
