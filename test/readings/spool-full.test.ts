import t from 'tap'
import { startInfluxd } from '../helpers/influxd.ts'
import { createTestDatabase } from '../helpers/postgres.ts'
import { startTestVigil, telemetry } from '../helpers/vigil.ts'
import { waitForValue, within } from '../helpers/wait.ts'

// Past VIGIL_SPOOL_MAX_BYTES (InfluxDB down long enough) new publishes are refused without
// PUBACK, so devices keep their data; what was acknowledged before is delivered later.
t.test('a full spool refuses publishes without PUBACK and harms nothing acknowledged', async (t) => {
  const database = await createTestDatabase()
  t.teardown(() => database.drop())
  const influxd = await startInfluxd()
  t.teardown(() => influxd.close())
  const bucket = 'spool_full'
  const vigil = await startTestVigil({
    DATABASE_URL: database.url, INFLUX_URL: influxd.url, INFLUX_BUCKET: bucket, VIGIL_SPOOL_MAX_BYTES: String(64 * 1024)
  })
  t.teardown(() => vigil.close())
  const device = await vigil.provision()
  await influxd.stop()

  const acked: number[] = []
  let refusedAt: number | null = null
  const base = Date.now() - 600_000
  for (let seq = 1; seq <= 5000 && refusedAt === null; seq++) {
    const client = await vigil.connect(device.deviceId, device.password)
    const closed = new Promise<'closed'>((resolve) => client.once('close', () => resolve('closed')))
    const readings = Array.from({ length: 20 }, (_, i) => ({ metric: 'heart_rate', value: 70, unit: '/min', ts: base + seq * 100 + i }))
    const outcome = await Promise.race([
      client.publishAsync(`devices/${device.deviceId}/telemetry`, telemetry(seq, readings), { qos: 1 }).then(() => 'acked' as const, () => 'closed' as const),
      closed
    ])
    if (outcome === 'acked') acked.push(seq)
    else refusedAt = seq
    client.end(true)
  }
  t.ok(refusedAt !== null, `publish ${refusedAt} refused without PUBACK once the spool was full`)
  const metrics = await fetch(`http://127.0.0.1:${vigil.httpPort}/metrics`).then((r) => r.text())
  t.match(metrics, /vigil_mqtt_refused_total\{reason="spool_full"\} [1-9]/, 'counted with its reason')

  await influxd.start()
  const q = new URLSearchParams({ db: bucket, q: 'SELECT count("value") FROM "reading"' })
  const stored = await waitForValue(`the ${acked.length * 20} acknowledged readings in InfluxDB`, async () => {
    const body = await fetch(`${influxd.url}/query?${q.toString()}`).then((r) => r.json()) as { results: Array<{ series?: Array<{ values: Array<[string, number]> }> }> }
    return body.results[0]?.series?.[0]?.values[0]?.[1] ?? 0
  }, (n) => n >= acked.length * 20, { everyMs: 250 })
  t.comment(`acknowledged ${acked.length} messages (${acked.length * 20} readings) before the spool filled; stored ${stored}`)
  t.equal(stored, acked.length * 20, 'every acknowledged reading delivered once InfluxDB returned')

  // With room again, the same device is acknowledged.
  const client = await vigil.connect(device.deviceId, device.password)
  t.teardown(() => client.endAsync())
  await within('a PUBACK once the spool drained', client.publishAsync(`devices/${device.deviceId}/telemetry`, telemetry(9999, [{ metric: 'heart_rate', value: 71, unit: '/min' }]), { qos: 1 }))
  t.pass('accepted again after the spool drained')
})
