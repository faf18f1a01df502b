import t from 'tap'
import { createTestDatabase } from '../helpers/postgres.ts'
import { startInfluxd } from '../helpers/influxd.ts'
import { startTestVigil, telemetry } from '../helpers/vigil.ts'
import { waitFor } from '../helpers/wait.ts'

// Production shape: the machine's PostgreSQL for metadata, a real influxd for readings,
// with the on-disk spool between the broker's PUBACK and InfluxDB.
const database = await createTestDatabase()
t.teardown(() => database.drop())
const influxd = await startInfluxd()
t.teardown(() => influxd.close())
const env = { DATABASE_URL: database.url, INFLUX_URL: influxd.url, INFLUX_BUCKET: 'vigil_e2e' }

t.test('Postgres + InfluxDB: publish over MQTT, read back over HTTP', async (t) => {
  const vigil = await startTestVigil(env)
  t.teardown(() => vigil.close())
  t.equal(vigil.readings.kind, 'influxdb')
  const { patientId, deviceId, password } = await vigil.provision()
  const client = await vigil.connect(deviceId, password)
  t.teardown(() => client.endAsync())

  const ts = Date.now() - 5000
  await client.publishAsync(`devices/${deviceId}/telemetry`, telemetry(1, [
    { metric: 'bp_systolic', value: 121, unit: 'mm[Hg]', ts },
    { metric: 'bp_diastolic', value: 79, unit: 'mmHg', ts }
  ]), { qos: 1 })
  // PUBACK means spooled durably; delivery to InfluxDB follows within moments.
  const items = await waitFor('readings in InfluxDB', async () => {
    const r = await vigil.api('GET', `/v1/patients/${patientId}/readings`)
    return r.body.items.length === 2 ? r.body.items : undefined
  })
  t.same(items.map((r: any) => [r.metric, r.value, r.unit, r.deviceId, r.seq]).sort(), [
    ['bp_diastolic', 79, 'mm[Hg]', deviceId, 1],
    ['bp_systolic', 121, 'mm[Hg]', deviceId, 1]
  ])
  const agg = await vigil.api('GET', `/v1/patients/${patientId}/readings/aggregate?metric=bp_systolic&from=${new Date(ts - 60_000).toISOString()}&to=${new Date(ts + 60_000).toISOString()}&every=1m&fn=max`)
  t.equal(agg.status, 200)
  t.same(agg.body.items.map((b: any) => b.value).filter((v: unknown) => v !== null), [121])
  const health = await vigil.api('GET', '/healthz')
  t.equal(health.status, 200)
})

t.test('spool: InfluxDB down, service restarted, InfluxDB back: every acknowledged reading arrives exactly once', async (t) => {
  const first = await startTestVigil(env)
  const { patientId, deviceId, password } = await first.provision()
  await influxd.stop()

  const client = await first.connect(deviceId, password)
  const base = Date.now() - 60_000
  const sent = 40
  for (let seq = 1; seq <= sent; seq++) {
    // Each PUBACK arrives while InfluxDB is down: it means "on disk in the spool".
    await client.publishAsync(`devices/${deviceId}/telemetry`, telemetry(seq, [{ metric: 'heart_rate', value: 60 + seq % 30, unit: '/min', ts: base + seq * 1000 }]), { qos: 1 })
  }
  const metrics = await fetch(`http://127.0.0.1:${first.httpPort}/metrics`).then((r) => r.text())
  t.match(metrics, new RegExp(`vigil_spool_depth_readings ${sent}\\b`), 'spool depth exported')
  await client.endAsync()
  await first.close()

  // Restart while InfluxDB is still down: start-up must not need it.
  const second = await startTestVigil(env, first.dataDir)
  t.teardown(() => second.close())
  await influxd.start()

  const items = await waitFor('spool replayed into InfluxDB', async () => {
    const r = await second.api('GET', `/v1/patients/${patientId}/readings?limit=1000`)
    return r.body.items.length >= sent ? r.body.items : undefined
  }, 60_000)
  t.equal(items.length, sent, 'no duplicates')
  t.same(items.map((r: any) => r.seq).sort((a: number, b: number) => a - b), Array.from({ length: sent }, (_, i) => i + 1))
  // The checkpoint advances just after InfluxDB confirms the write: the readings can be
  // queryable a moment before the spool reports itself empty.
  const drained = await waitFor('spool drained', async () => {
    const text = await fetch(`http://127.0.0.1:${second.httpPort}/metrics`).then((r) => r.text())
    return /^vigil_spool_depth_readings 0$/m.test(text) ? true : undefined
  })
  t.ok(drained, 'spool drained')
})
