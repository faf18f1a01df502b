import fs from 'node:fs/promises'
import path from 'node:path'
import t from 'tap'
import { startInfluxd } from '../helpers/influxd.ts'
import { createTestDatabase } from '../helpers/postgres.ts'
import { startTestVigil, telemetry } from '../helpers/vigil.ts'
import { waitFor, within } from '../helpers/wait.ts'

// Issue 12 item 4: InfluxDB answering 400 "max-values-per-tag limit exceeded" (a store
// configuration problem: 30 patients, limit 20) made the spool dead-letter a third of the
// acknowledged readings, and nothing replayed them. Such errors must keep the readings and retry
// until the store is fixed; only data InfluxDB will never take is dead-lettered, and an admin
// route replays the dead letters.
const patients = 30
const limit = 20
const perDevice = 20

async function storedCount (influxUrl: string, bucket: string): Promise<number> {
  const q = new URLSearchParams({ db: bucket, q: 'SELECT count("value") FROM "reading"' })
  const body = await fetch(`${influxUrl}/query?${q.toString()}`).then((r) => r.json()) as { results: Array<{ series?: Array<{ values: Array<[string, number]> }> }> }
  return body.results[0]?.series?.[0]?.values[0]?.[1] ?? 0
}

t.test('a series limit keeps every acknowledged reading in the spool until InfluxDB is reconfigured; dead letters replay', async (t) => {
  const [database, influxd] = await Promise.all([createTestDatabase(), startInfluxd({ maxValuesPerTag: limit })])
  t.teardown(() => database.drop())
  t.teardown(() => influxd.close())
  const bucket = 'series_limit'
  const vigil = await startTestVigil({ DATABASE_URL: database.url, INFLUX_URL: influxd.url, INFLUX_BUCKET: bucket })
  t.teardown(() => vigil.close())
  const metric = async (name: string): Promise<number> => {
    const text = await fetch(`http://127.0.0.1:${vigil.httpPort}/metrics`).then((r) => r.text())
    const line = text.split('\n').find((l) => l.startsWith(`${name} `))
    return Number(line?.split(' ')[1] ?? Number.NaN)
  }

  const devices = await Promise.all(Array.from({ length: patients }, async () => await vigil.provision()))
  const base = Date.now() - 600_000
  const publish = async (from: number, to: number): Promise<void> => {
    await Promise.all(devices.slice(from, to).map(async (device, k) => {
      const n = from + k
      const client = await vigil.connect(device.deviceId, device.password)
      const readings = Array.from({ length: perDevice }, (_, i) => ({ metric: 'heart_rate', value: 70 + i, unit: '/min', ts: base + n * 1000 + i }))
      await within(`the PUBACK for device ${n}`, client.publishAsync(`devices/${device.deviceId}/telemetry`, telemetry(1, readings), { qos: 1 }))
      await client.endAsync()
    }))
  }
  // InfluxDB 1.x checks max-values-per-tag against the series it held before a write: one write
  // bringing all 30 patients at once is taken whole. So the limit's 20 patients are stored first,
  // and the other 10 arrive once they are (in any batching, every write with them then fails).
  await publish(0, limit)
  await waitFor(`the first ${limit} patients' readings in InfluxDB`, async () => await storedCount(influxd.url, bucket) === limit * perDevice)
  await publish(limit, patients)
  const acked = patients * perDevice
  t.pass(`${acked} readings acknowledged`)

  await waitFor('delivery to be blocked (or readings dead-lettered)', async () =>
    await metric('vigil_spool_delivery_blocked') === 1 || await metric('vigil_readings_dead_lettered_total') > 0)
  t.equal(await metric('vigil_readings_dead_lettered_total'), 0, 'no acknowledged reading dead-lettered for a configuration problem')
  await t.rejects(fs.access(path.join(vigil.dataDir, 'spool', 'dead-letter.ndjson')), 'no dead-letter file')
  t.equal(await metric('vigil_spool_delivery_blocked'), 1, 'the blocked delivery is visible as a metric')
  t.ok(await metric('vigil_spool_depth_readings') > 0, 'the refused readings are still in the spool')

  // The cause fixed: the limit lifted. The spool delivers on its own (backoff ≤ 10 s).
  await influxd.configure({ maxValuesPerTag: 0 })
  await influxd.stop()
  await influxd.start()
  await waitFor(`all ${acked} readings in InfluxDB`, async () => await storedCount(influxd.url, bucket) === acked, 60_000)
  t.equal(await storedCount(influxd.url, bucket), acked, 'every acknowledged reading stored once the limit was lifted')
  await waitFor('the spool to drain', async () => await metric('vigil_spool_depth_readings') === 0)
  t.equal(await metric('vigil_spool_delivery_blocked'), 0, 'no longer blocked')

  // Dead letters (here written as the spool writes them) come back through the admin route.
  const device = devices[0]!
  const letters = Array.from({ length: 5 }, (_, i) => ({
    deadAt: new Date().toISOString(),
    reason: 'InfluxDB write failed: HTTP 400 (points beyond the retention policy)',
    reading: { patientId: device.patientId, deviceId: device.deviceId, metric: 'heart_rate', value: 80 + i, unit: '/min', ts: base + 100_000 + i, seq: 2 }
  }))
  await fs.writeFile(path.join(vigil.dataDir, 'spool', 'dead-letter.ndjson'), letters.map((l) => JSON.stringify(l) + '\n').join(''))
  const replay = await vigil.api<{ replayed: number }>('POST', '/v1/admin/spool/dead-letter/replay')
  t.equal(replay.status, 200)
  t.strictSame(replay.body, { replayed: 5 }, 'five dead letters replayed')
  await waitFor('the replayed readings in InfluxDB', async () => await storedCount(influxd.url, bucket) === acked + 5)
  t.pass('delivered')
  await t.rejects(fs.access(path.join(vigil.dataDir, 'spool', 'dead-letter.ndjson')), 'the dead-letter file is gone')
  t.strictSame((await vigil.api('POST', '/v1/admin/spool/dead-letter/replay')).body, { replayed: 0 }, 'a second replay finds nothing')
  const audit = await vigil.api<{ items: Array<{ action: string, outcome: string }> }>('GET', '/v1/audit?limit=20')
  t.equal(audit.body.items.filter((row) => row.action === 'spool:replay').length, 2, 'each replay audited')
})
