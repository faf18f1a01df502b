import t from 'tap'
import { startInfluxd } from '../helpers/influxd.ts'
import { createTestDatabase } from '../helpers/postgres.ts'
import { createCuttableDisk, publishThenCut, spoolDepth, verifyAcknowledged } from '../helpers/power-cut.ts'
import { provisionDevice } from '../helpers/provision.ts'
import { spawnVigil } from '../helpers/vigil-process.ts'

// Issue 12: SIGKILL keeps the page cache, so a missing fsync passes every crash test. Here the
// data directory is a filesystem whose power is cut (test/helpers/power-cut.ts: what was not
// synced is gone, and a control file checks that on every run): what Vigil acknowledged must
// be on it afterwards.
const token = 'power-cut-admin-token-0123456789abcdef'
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))
// A first embedded start runs PGlite's initdb: about 50 s on a loaded 2-core machine.
const FIRST_START_MS = 120_000

t.test('Postgres + InfluxDB: the spool survives a power cut with InfluxDB down', async (t) => {
  const database = await createTestDatabase()
  t.teardown(() => database.drop())
  const influxd = await startInfluxd()
  t.teardown(() => influxd.close())
  const disk = await createCuttableDisk(256)
  t.teardown(() => disk.close())
  const env = { VIGIL_ADMIN_TOKEN: token, DATABASE_URL: database.url, INFLUX_URL: influxd.url, INFLUX_BUCKET: 'powercut' }
  const first = await spawnVigil(env, disk.dir, { startTimeoutMs: FIRST_START_MS })
  t.teardown(() => { first.child.kill('SIGKILL') })
  const base = `http://127.0.0.1:${first.httpPort}`
  const devices = await Promise.all(Array.from({ length: 10 }, () => provisionDevice(base, token)))
  // InfluxDB away: every acknowledgement rests on the spool's fsync alone.
  await influxd.stop()
  const fleet = await publishThenCut(t, first, disk, devices)

  await influxd.start()
  const second = await spawnVigil(env, disk.dir, { startTimeoutMs: FIRST_START_MS })
  t.teardown(() => { second.child.kill('SIGKILL') })
  const deadline = Date.now() + 30_000
  while (await spoolDepth(second) > 0) {
    if (Date.now() > deadline) throw new Error(`the spool did not drain within 30 s (depth ${await spoolDepth(second)})`)
    await sleep(200)
  }
  await verifyAcknowledged(t, second, token, fleet, devices)
  second.child.kill('SIGTERM')
  t.equal(await second.exited, 0)
})
