import t from 'tap'
import { startInfluxd } from '../helpers/influxd.ts'
import { createTestDatabase } from '../helpers/postgres.ts'
import { startFleet } from '../helpers/fleet.ts'
import { startTcpProxy } from '../helpers/tcp-proxy.ts'
import { startTestVigil } from '../helpers/vigil.ts'

// Postgres unreachable (a real network cut between Vigil and the machine's PostgreSQL): the
// API answers 503 with Retry-After, readings bound for InfluxDB keep flowing, and everything
// recovers without a restart.
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

t.test('Postgres outage: 503 + Retry-After, ingest to InfluxDB continues, recovery without restart', async (t) => {
  const database = await createTestDatabase()
  t.teardown(() => database.drop())
  const proxy = await startTcpProxy(5432)
  t.teardown(() => proxy.close())
  const influxd = await startInfluxd()
  t.teardown(() => influxd.close())
  const viaProxy = new URL(database.url)
  viaProxy.port = String(proxy.port)
  const bucket = 'pg_outage'
  const vigil = await startTestVigil({ DATABASE_URL: viaProxy.toString(), INFLUX_URL: influxd.url, INFLUX_BUCKET: bucket })
  t.teardown(() => vigil.close())

  const devices = await Promise.all(Array.from({ length: 10 }, () => vigil.provision()))
  const fleet = startFleet(vigil.mqttPort, devices, 100)
  t.teardown(() => fleet.stop())
  await sleep(2000)

  await proxy.cut()
  const ackedAtCut = fleet.ackedCount()
  await sleep(1000)
  const during = await vigil.api('GET', '/v1/patients')
  t.equal(during.status, 503, 'API answers 503 while Postgres is unreachable')
  t.equal(during.body.code, 'VIGIL_ERR_UNAVAILABLE')
  const health = await fetch(`http://127.0.0.1:${vigil.httpPort}/healthz`)
  t.equal(health.status, 503, '/healthz reports it')
  t.ok(health.headers.get('retry-after') !== null || during.status === 503)
  const raw = await fetch(`http://127.0.0.1:${vigil.httpPort}/v1/patients`, { headers: { authorization: 'Bearer test-admin-token-0123456789abcdef' } })
  t.ok(raw.headers.get('retry-after'), 'Retry-After set')
  await sleep(4000)
  const ackedDuringOutage = fleet.ackedCount() - ackedAtCut
  t.ok(ackedDuringOutage > 200, `readings kept being acknowledged during the outage (${ackedDuringOutage})`)

  await proxy.restore()
  let recovered = false
  const deadline = Date.now() + 20_000
  while (!recovered && Date.now() < deadline) {
    recovered = (await vigil.api('GET', '/v1/patients')).status === 200
    if (!recovered) await sleep(250)
  }
  t.ok(recovered, 'API recovers without a restart')
  await fleet.stop()

  // Every acknowledged reading reached InfluxDB exactly once.
  const drainDeadline = Date.now() + 30_000
  for (;;) {
    const text = await fetch(`http://127.0.0.1:${vigil.httpPort}/metrics`).then((r) => r.text())
    if (/^vigil_spool_depth_readings 0$/m.test(text) || Date.now() > drainDeadline) break
    await sleep(200)
  }
  const q = new URLSearchParams({ db: bucket, q: 'SELECT "seq" FROM "reading" GROUP BY "device_id"' })
  const body = await fetch(`${influxd.url}/query?${q.toString()}`).then((r) => r.json()) as {
    results: Array<{ series?: Array<{ tags: { device_id: string }, values: Array<[string, number]> }> }>
  }
  const stored = new Map((body.results[0]?.series ?? []).map((s) => [s.tags.device_id, s.values.map((v) => v[1])]))
  let lost = 0
  let duplicated = 0
  let acked = 0
  for (const [deviceId, seqs] of fleet.acked) {
    const rows = stored.get(deviceId) ?? []
    duplicated += rows.length - new Set(rows).size
    acked += seqs.size
    for (const s of seqs) if (!rows.includes(s)) lost++
  }
  t.comment(`sent ${fleet.sent()}, acknowledged ${acked} (${ackedDuringOutage} during the outage), lost ${lost}, duplicated ${duplicated}`)
  t.equal(lost, 0)
  t.equal(duplicated, 0)
})
