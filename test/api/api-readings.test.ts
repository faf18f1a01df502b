import t from 'tap'
import type { Test } from 'tap'
import type { StoredReading } from '../../readings/reading.ts'
import { startApiFixture } from '../helpers/api-deps.ts'

const { deps, app, headers } = await startApiFixture(t, 'readings test')

const patient = await deps.patients.create('Readings patient')
const other = await deps.patients.create('Someone else')
const deviceA = '1a000000-0000-4000-8000-000000000001'
const deviceB = '2b000000-0000-4000-8000-000000000002'
const base = Date.UTC(2025, 10, 26, 9, 0, 0)

const seeded: StoredReading[] = []
for (let i = 0; i < 10; i++) {
  const ts = base + i * 60_000
  // Same ts on two devices and two metrics: the cursor must break ties.
  seeded.push({ patientId: patient.id, deviceId: deviceA, metric: 'heart_rate', value: 60 + i, unit: '/min', ts, seq: i })
  seeded.push({ patientId: patient.id, deviceId: deviceA, metric: 'spo2', value: 95, unit: '%', ts, seq: i })
  seeded.push({ patientId: patient.id, deviceId: deviceB, metric: 'heart_rate', value: 70 + i, unit: '/min', ts, seq: null })
}
seeded.push({ patientId: patient.id, deviceId: deviceB, metric: 'body_temp', value: 37.2, unit: 'Cel', ts: base + 30_000, seq: 7 })
await deps.readings.write([
  ...seeded,
  { patientId: other.id, deviceId: deviceA, metric: 'heart_rate', value: 99, unit: '/min', ts: base, seq: 1 }
])

// ReadingPosition order: ts desc, deviceId asc, metric asc.
const expected = [...seeded].sort((a, b) => b.ts - a.ts || a.deviceId.localeCompare(b.deviceId) || a.metric.localeCompare(b.metric))
const asItem = (r: StoredReading) => ({ metric: r.metric, value: r.value, unit: r.unit, ts: new Date(r.ts).toISOString(), deviceId: r.deviceId, seq: r.seq })
const readingsUrl = `/v1/patients/${patient.id}/readings`

async function pageThrough (t: Test, query: string, limit: number) {
  const items: unknown[] = []
  let cursor: string | null = null
  let pages = 0
  do {
    const url: string = `${readingsUrl}?limit=${limit}${query}${cursor === null ? '' : `&cursor=${cursor}`}`
    const res = await app.inject({ method: 'GET', url, headers })
    t.equal(res.statusCode, 200)
    const body = res.json()
    t.ok(body.items.length <= limit)
    items.push(...body.items)
    cursor = body.nextCursor
    pages++
  } while (cursor !== null && pages < 100)
  return { items, pages }
}

t.test('pages through every reading once, newest first', async (t) => {
  const { items, pages } = await pageThrough(t, '', 7)
  t.same(items, expected.map(asItem))
  t.equal(pages, Math.ceil(expected.length / 7))
})

t.test('filters by metric and time range; the last full page ends the list', async (t) => {
  const spo2 = await pageThrough(t, '&metric=spo2', 5)
  t.same(spo2.items, expected.filter((r) => r.metric === 'spo2').map(asItem))
  t.equal(spo2.pages, 2, 'no empty third page')

  const from = new Date(base + 2 * 60_000).toISOString()
  const to = new Date(base + 5 * 60_000).toISOString()
  const ranged = await pageThrough(t, `&metric=heart_rate&from=${from}&to=${to}`, 100)
  t.same(ranged.items, expected.filter((r) => r.metric === 'heart_rate' && r.ts >= base + 120_000 && r.ts < base + 300_000).map(asItem),
    'from inclusive, to exclusive')
})

t.test('default limit and an empty result', async (t) => {
  const all = await app.inject({ method: 'GET', url: readingsUrl, headers })
  t.equal(all.json().items.length, expected.length)
  t.equal(all.json().nextCursor, null)
  const none = await app.inject({ method: 'GET', url: `${readingsUrl}?from=2030-01-01T00:00:00Z`, headers })
  t.same(none.json(), { items: [], nextCursor: null })
})

t.test('bad readings queries', async (t) => {
  const badCursors = ['garbage!', Buffer.from('["x"]').toString('base64url'), 'eyJ0cyI6MX0']
  for (const cursor of badCursors) {
    const res = await app.inject({ method: 'GET', url: `${readingsUrl}?cursor=${cursor}`, headers })
    t.equal(res.statusCode, 400, cursor)
    t.equal(res.json().code, 'VIGIL_ERR_BAD_CURSOR', cursor)
  }
  const invalid = [
    'metric=pulse', 'metric=__proto__', 'limit=0', 'limit=1001', 'from=yesterday', 'from=2025-11-26',
    `from=${new Date(base).toISOString()}&to=${new Date(base).toISOString()}`, 'colour=red'
  ]
  for (const query of invalid) {
    const res = await app.inject({ method: 'GET', url: `${readingsUrl}?${query}`, headers })
    t.equal(res.statusCode, 400, query)
    t.equal(res.json().code, 'VIGIL_ERR_VALIDATION', query)
  }
  const unknown = await app.inject({ method: 'GET', url: '/v1/patients/00000000-0000-4000-8000-000000000000/readings', headers })
  t.equal(unknown.statusCode, 404)
  t.equal(unknown.json().code, 'VIGIL_ERR_UNKNOWN_PATIENT')
})

t.test('latest gives one reading per metric', async (t) => {
  const res = await app.inject({ method: 'GET', url: `${readingsUrl}/latest`, headers })
  t.equal(res.statusCode, 200)
  const items = res.json().items as Array<{ metric: string }>
  t.same(items.map((r) => r.metric).sort(), ['body_temp', 'heart_rate', 'spo2'])
  const last = base + 9 * 60_000
  t.same(items.find((r) => r.metric === 'body_temp'), asItem(seeded[seeded.length - 1]!))
  t.match(items.find((r) => r.metric === 'heart_rate'), { ts: new Date(last).toISOString() })
  t.match(items.find((r) => r.metric === 'spo2'), { ts: new Date(last).toISOString(), value: 95, deviceId: deviceA })

  const empty = await app.inject({ method: 'GET', url: `/v1/patients/${(await deps.patients.create('No data')).id}/readings/latest`, headers })
  t.same(empty.json(), { items: [] })
  const unknown = await app.inject({ method: 'GET', url: '/v1/patients/00000000-0000-4000-8000-000000000000/readings/latest', headers })
  t.equal(unknown.json().code, 'VIGIL_ERR_UNKNOWN_PATIENT')
})

t.test('aggregate', async (t) => {
  const from = new Date(base).toISOString()
  const to = new Date(base + 10 * 60_000).toISOString()
  const url = (q: string) => `${readingsUrl}/aggregate?metric=heart_rate&from=${from}&to=${to}&${q}`

  const mean = await app.inject({ method: 'GET', url: url('every=5m&fn=mean'), headers })
  t.equal(mean.statusCode, 200)
  t.same(mean.json(), {
    metric: 'heart_rate',
    fn: 'mean',
    every: '5m',
    items: [{ ts: from, value: 67 }, { ts: new Date(base + 5 * 60_000).toISOString(), value: 72 }]
  })
  const values = async (q: string) => (await app.inject({ method: 'GET', url: url(q), headers })).json().items.map((b: { value: number | null }) => b.value)
  t.same(await values('every=5m&fn=min'), [60, 65])
  t.same(await values('every=5m&fn=max'), [74, 79])
  t.same(await values('every=5m&fn=count'), [10, 10])

  const defaults = await app.inject({ method: 'GET', url: `${readingsUrl}/aggregate?metric=heart_rate&from=${from}&to=${new Date(base + 12 * 60_000).toISOString()}`, headers })
  t.equal(defaults.json().every, '1m')
  t.equal(defaults.json().fn, 'mean')
  t.equal(defaults.json().items.length, 12)
  t.same(defaults.json().items.slice(10).map((b: { value: unknown }) => b.value), [null, null], 'empty buckets are null')
})

t.test('aggregate refuses ranges with too many buckets, and says what to do', async (t) => {
  const res = await app.inject({
    method: 'GET', url: `${readingsUrl}/aggregate?metric=heart_rate&from=2025-01-01T00:00:00Z&to=2025-02-01T00:00:00Z&every=1s`, headers
  })
  t.equal(res.statusCode, 400)
  t.equal(res.json().code, 'VIGIL_ERR_VALIDATION')
  t.equal(res.json().details[0].path, 'querystring/every')
  t.match(res.json().message, /every=\d+[smhd]/, 'suggests a width')
  const suggested = /every=(\d+[smhd])/.exec(res.json().message)![1]
  const retry = await app.inject({
    method: 'GET', url: `${readingsUrl}/aggregate?metric=heart_rate&from=2025-01-01T00:00:00Z&to=2025-02-01T00:00:00Z&every=${suggested}`, headers
  })
  t.equal(retry.statusCode, 200, 'the suggestion works')
  t.ok(retry.json().items.length <= 10_000)
})

t.test('bad aggregate queries', async (t) => {
  const from = 'from=2025-11-26T09:00:00Z'
  const to = 'to=2025-11-26T10:00:00Z'
  const invalid = [
    `${from}&${to}`, // no metric
    `metric=heart_rate&${to}`, // no from
    `metric=heart_rate&${from}`, // no to
    `metric=pulse&${from}&${to}`,
    `metric=heart_rate&${from}&${to}&every=0m`,
    `metric=heart_rate&${from}&${to}&every=1w`,
    `metric=heart_rate&${from}&${to}&fn=median`,
    `metric=heart_rate&from=2025-11-26T10:00:00Z&to=2025-11-26T09:00:00Z`
  ]
  for (const query of invalid) {
    const res = await app.inject({ method: 'GET', url: `${readingsUrl}/aggregate?${query}`, headers })
    t.equal(res.statusCode, 400, query)
    t.equal(res.json().code, 'VIGIL_ERR_VALIDATION', query)
  }
  const unknown = await app.inject({
    method: 'GET', url: `/v1/patients/00000000-0000-4000-8000-000000000000/readings/aggregate?metric=spo2&${from}&${to}`, headers
  })
  t.equal(unknown.statusCode, 404)
  t.equal(unknown.json().code, 'VIGIL_ERR_UNKNOWN_PATIENT')
})
