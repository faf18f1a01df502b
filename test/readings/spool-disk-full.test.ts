import t from 'tap'
import { startInfluxd } from '../helpers/influxd.ts'
import { createTestDatabase } from '../helpers/postgres.ts'
import { mountTmpfs, tmpfsUnavailable } from '../helpers/tmpfs.ts'
import { startTestVigil, telemetry, type TestVigil } from '../helpers/vigil.ts'
import { waitFor } from '../helpers/wait.ts'

// Issue 12 item 1: InfluxDB down until the spool fills the data dir's disk (ENOSPC, publishes
// refused without PUBACK). Once InfluxDB is back and the spool delivered everything, the disk
// must be reclaimed by Vigil itself — the checkpoint used to need free space before any
// delivered segment could go, so the disk stayed full and every publish was refused forever.
const perMessage = 500

async function storedCount (influxUrl: string, bucket: string): Promise<number> {
  const q = new URLSearchParams({ db: bucket, q: 'SELECT count("value") FROM "reading"' })
  const body = await fetch(`${influxUrl}/query?${q.toString()}`).then((r) => r.json()) as { results: Array<{ series?: Array<{ values: Array<[string, number]> }> }> }
  return body.results[0]?.series?.[0]?.values[0]?.[1] ?? 0
}

/** 'acked' or 'refused' (connection closed without PUBACK). */
async function publish (vigil: TestVigil, device: { deviceId: string, password: string }, seq: number, base: number): Promise<'acked' | 'refused'> {
  const client = await vigil.connect(device.deviceId, device.password)
  try {
    const closed = new Promise<'refused'>((resolve) => client.once('close', () => resolve('refused')))
    const readings = Array.from({ length: perMessage }, (_, i) => ({ metric: 'heart_rate', value: 70, unit: '/min', ts: base + seq * perMessage + i }))
    return await Promise.race([
      client.publishAsync(`devices/${device.deviceId}/telemetry`, telemetry(seq, readings), { qos: 1 }).then(() => 'acked' as const, () => 'refused' as const),
      closed
    ])
  } finally {
    client.end(true)
  }
}

t.test('a spool that filled its disk reclaims it once InfluxDB is back, and publishes are acknowledged again', { skip: tmpfsUnavailable() ?? false }, async (t) => {
  const disk = await mountTmpfs(8)
  const database = await createTestDatabase()
  const influxd = await startInfluxd()
  let vigil: TestVigil | null = null
  t.teardown(async () => {
    await vigil?.close()
    await influxd.close()
    await database.drop()
    await disk.close()
  })
  const bucket = 'disk_full'
  // The reserve (VIGIL_DISK_RESERVE_MB, 48 MB) would refuse everything on this 8 MB disk: this tests the spool's own recovery behind it.
  vigil = await startTestVigil({ DATABASE_URL: database.url, INFLUX_URL: influxd.url, INFLUX_BUCKET: bucket, VIGIL_DISK_RESERVE_MB: '0' }, disk.dir)
  const device = await vigil.provision()
  await influxd.stop()

  const base = Date.now() - 1_800_000
  let acked = 0
  let seq = 1
  for (; seq <= 1000; seq++) {
    if (await publish(vigil, device, seq, base) === 'refused') break
    acked++
  }
  t.ok(seq <= 1000, `publish ${seq} refused without PUBACK once the disk was full (${acked} acknowledged)`)
  t.equal(await vigil.refusedCount('store_unavailable'), 1, 'counted as store_unavailable')
  t.comment(`free on the 8 MB tmpfs when full: ${await disk.freeBytes()} bytes`)

  await influxd.start()
  await waitFor(`all ${acked * perMessage} acknowledged readings in InfluxDB`, async () => await storedCount(influxd.url, bucket) >= acked * perMessage)
  t.equal(await storedCount(influxd.url, bucket), acked * perMessage, 'every acknowledged reading delivered')

  // Nobody frees space from outside: Vigil must reclaim the delivered segments itself.
  const free = await waitFor('the spool to give back the disk', async () => {
    const bytes = await disk.freeBytes()
    return bytes > 4 * 1024 * 1024 ? bytes : false
  }, 20_000)
  t.ok(free > 4 * 1024 * 1024, `disk reclaimed (${free} bytes free)`)
  let next = seq + 1
  const outcome = await waitFor('a publish to be acknowledged again', async () => (await publish(vigil!, device, next++, base)) === 'acked' ? 'acked' : false, { timeoutMs: 20_000, everyMs: 500 })
  t.equal(outcome, 'acked', 'acknowledged again without help from outside')
})
