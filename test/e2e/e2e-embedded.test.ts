import t from 'tap'
import { startTestVigil, telemetry } from '../helpers/vigil.ts'

// The default a new user gets from `npm start`: Aedes + PGlite + readings in Postgres.
t.test('embedded default: publish over MQTT, read back over HTTP', async (t) => {
  const vigil = await startTestVigil()
  t.teardown(() => vigil.close())
  t.equal(vigil.readings.kind, 'postgres')

  const { patientId, deviceId, password } = await vigil.provision()
  const client = await vigil.connect(deviceId, password)
  t.teardown(() => client.endAsync())

  const ts = Date.now() - 1000
  const packet = await client.publishAsync(`devices/${deviceId}/telemetry`, telemetry(1, [
    { metric: 'heart_rate', value: 72, unit: '/min', ts },
    { metric: 'spo2', value: 97, unit: '%', ts }
  ]), { qos: 1 })
  t.ok(packet, 'PUBACK received')

  // PUBACK means stored: no waiting or polling needed.
  const readings = await vigil.api('GET', `/v1/patients/${patientId}/readings`)
  t.equal(readings.status, 200)
  t.same(readings.body.items.map((r: any) => [r.metric, r.value, r.unit, r.deviceId, r.seq, r.ts]).sort(), [
    ['heart_rate', 72, '/min', deviceId, 1, new Date(ts).toISOString()],
    ['spo2', 97, '%', deviceId, 1, new Date(ts).toISOString()]
  ])

  const senml = JSON.stringify([{ bn: `urn:dev:${deviceId}:`, bt: (ts + 1000) / 1000, n: 'body_temp', u: 'Cel', v: 37.2 }])
  await client.publishAsync(`devices/${deviceId}/senml`, senml, { qos: 1 })
  const latest = await vigil.api('GET', `/v1/patients/${patientId}/readings/latest`)
  t.same(latest.body.items.map((r: any) => r.metric).sort(), ['body_temp', 'heart_rate', 'spo2'])

  const missing = await fetch(`http://127.0.0.1:${vigil.httpPort}/v1/no-such-thing/${patientId}`)
  t.equal(missing.status, 404)
  await missing.arrayBuffer()

  const metrics = await fetch(`http://127.0.0.1:${vigil.httpPort}/metrics`).then((r) => r.text())
  t.match(metrics, /vigil_readings_stored_total 3/)
  // Answers and store reads are timed by route template and read, never by a path with ids in it.
  t.match(metrics, /^vigil_http_request_seconds_count\{method="GET",route="\/v1\/patients\/:id\/readings\/latest",status="2xx"\} 1$/m)
  t.match(metrics, /^vigil_http_request_seconds_count\{method="GET",route="\/v1\/patients\/:id\/readings",status="2xx"\} 1$/m)
  t.match(metrics, /^vigil_http_request_seconds_count\{method="GET",route="unmatched",status="4xx"\} 1$/m)
  t.match(metrics, /^vigil_reading_store_read_seconds_count\{read="latest"\} 1$/m)
  t.match(metrics, /^vigil_reading_store_read_seconds_count\{read="query"\} 1$/m)
  t.notMatch(metrics, new RegExp(`${patientId}|${deviceId}|no-such-thing`), 'no id or path in any label')
})

t.test('embedded data survives a restart', async (t) => {
  const first = await startTestVigil()
  const { patientId, deviceId, password } = await first.provision()
  const client = await first.connect(deviceId, password)
  await client.publishAsync(`devices/${deviceId}/telemetry`, telemetry(7, [{ metric: 'heart_rate', value: 64, unit: '/min' }]), { qos: 1 })
  await client.endAsync()
  await first.close()

  const second = await startTestVigil({}, first.dataDir)
  t.teardown(() => second.close())
  const readings = await second.api('GET', `/v1/patients/${patientId}/readings`)
  t.equal(readings.body.items.length, 1)
  t.equal(readings.body.items[0].seq, 7)
  const again = await second.connect(deviceId, password)
  t.teardown(() => again.endAsync())
  t.ok(again.connected, 'credential still valid after restart')

  // While this Vigil runs (one start fewer than a Vigil of its own for this check).
  t.test('a second Vigil on the same data directory is refused with a clear error', async (t) => {
    const err = await startTestVigil({}, second.dataDir).then(async (v) => { await v.close(); return null }, (e: unknown) => e)
    t.equal((err as Error | null)?.name, 'DataDirLockedError')
    t.match((err as Error).message, /VIGIL_DATA_DIR/)
  })
})
