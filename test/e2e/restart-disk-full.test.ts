import fs from 'node:fs/promises'
import path from 'node:path'
import mqtt from 'mqtt'
import t from 'tap'
import { startInfluxd } from '../helpers/influxd.ts'
import { createTestDatabase } from '../helpers/postgres.ts'
import { provisionDevice } from '../helpers/provision.ts'
import { mountTmpfs, tmpfsUnavailable } from '../helpers/tmpfs.ts'
import { spawnVigil, type VigilProcess } from '../helpers/vigil-process.ts'
import { waitFor } from '../helpers/wait.ts'

// Issue 12 item 2: a supervisor restarts Vigil on a disk the spool filled. Start-up must not need
// free space for anything optional (listening.json, the simulator's helper file, made it exit
// 1), and the restarted process must drain the spool and give the disk back on its own.
const token = 'restart-disk-full-admin-token-0123456789'
const perMessage = 500

async function storedCount (influxUrl: string, bucket: string): Promise<number> {
  const q = new URLSearchParams({ db: bucket, q: 'SELECT count("value") FROM "reading"' })
  const body = await fetch(`${influxUrl}/query?${q.toString()}`).then((r) => r.json()) as { results: Array<{ series?: Array<{ values: Array<[string, number]> }> }> }
  return body.results[0]?.series?.[0]?.values[0]?.[1] ?? 0
}

async function publish (mqttPort: number, device: { deviceId: string, password: string }, seq: number, base: number): Promise<'acked' | 'refused'> {
  const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${mqttPort}`, {
    clientId: device.deviceId, username: device.deviceId, password: device.password, reconnectPeriod: 0, protocolVersion: 4, connectTimeout: 5000
  })
  try {
    const closed = new Promise<'refused'>((resolve) => client.once('close', () => resolve('refused')))
    const readings = Array.from({ length: perMessage }, (_, i) => ({ metric: 'heart_rate', value: 70, unit: '/min', ts: base + seq * perMessage + i }))
    return await Promise.race([
      client.publishAsync(`devices/${device.deviceId}/telemetry`, JSON.stringify({ seq, readings }), { qos: 1 }).then(() => 'acked' as const, () => 'refused' as const),
      closed
    ])
  } finally {
    client.end(true)
  }
}

/** Whatever else shares the disk (logs, a core dump): takes every byte left. */
async function fillDisk (dir: string): Promise<void> {
  const handle = await fs.open(path.join(dir, 'filler'), 'w')
  const chunk = Buffer.alloc(64 * 1024, 1)
  try {
    for (;;) {
      try {
        await handle.write(chunk)
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOSPC') break
        throw err
      }
    }
    // The last pages one by one, so not even 4 KiB is left.
    for (;;) {
      try {
        await handle.write(chunk.subarray(0, 512))
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOSPC') return
        throw err
      }
    }
  } finally {
    await handle.close()
  }
}

async function stop (vigil: VigilProcess | null): Promise<void> {
  if (vigil === null || vigil.child.exitCode !== null) return
  vigil.child.kill('SIGKILL')
  await vigil.exited
}

t.test('restarted on a full disk, Vigil starts, drains its spool and gives the disk back', { skip: tmpfsUnavailable() ?? false }, async (t) => {
  const disk = await mountTmpfs(8)
  const database = await createTestDatabase()
  const influxd = await startInfluxd()
  let first: VigilProcess | null = null
  let second: VigilProcess | null = null
  t.teardown(async () => {
    await stop(second)
    await stop(first)
    await influxd.close()
    await database.drop()
    await disk.close()
  })
  const bucket = 'restart_disk_full'
  const env = { DATABASE_URL: database.url, INFLUX_URL: influxd.url, INFLUX_BUCKET: bucket, VIGIL_ADMIN_TOKEN: token, LOG_LEVEL: 'info', VIGIL_DISK_RESERVE_MB: '0' }
  first = await spawnVigil(env, disk.dir)
  const api = `http://127.0.0.1:${first.httpPort}`
  // The API sheds load (503) while a fresh process is busy starting: ask again.
  const device = await waitFor('a provisioned device', () => provisionDevice(api, token), { timeoutMs: 30_000, everyMs: 500 })
  await influxd.stop()

  const base = Date.now() - 1_800_000
  let acked = 0
  let seq = 1
  for (; seq <= 1000; seq++) {
    if (await publish(first.mqttPort, device, seq, base) === 'refused') break
    acked++
  }
  t.ok(seq <= 1000, `publish ${seq} refused once the disk was full (${acked} acknowledged)`)
  // A crash, then the rest of the disk taken by something else.
  await stop(first)
  // (spawnVigil removes the old helper file; done here so the space it frees is taken too)
  await fs.rm(path.join(disk.dir, 'listening.json'), { force: true })
  await fillDisk(disk.dir)
  t.equal(await disk.freeBytes(), 0, 'not a byte left on the disk')

  // Still down at the restart (so the spool cannot free anything before start-up ends).
  second = await spawnVigil(env, disk.dir)
  t.pass('started on a full disk')
  t.match(second.output(), /listening\.json/, 'the unwritable helper file is reported')
  await influxd.start()
  await waitFor(`all ${acked * perMessage} acknowledged readings in InfluxDB`, async () => await storedCount(influxd.url, bucket) >= acked * perMessage, 60_000)
  t.equal(await storedCount(influxd.url, bucket), acked * perMessage, 'every acknowledged reading delivered after the restart')
  const s = second
  let next = seq + 1
  const outcome = await waitFor('a publish to be acknowledged again', async () => (await publish(s.mqttPort, device, next++, base)) === 'acked' ? 'acked' : false, { timeoutMs: 20_000, everyMs: 500 })
  t.equal(outcome, 'acked', 'acknowledged again: the spool gave back its delivered segments')
  t.equal(s.child.exitCode, null, 'still running')
})
