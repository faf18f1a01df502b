import { randomUUID } from 'node:crypto'
import fs from 'node:fs/promises'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import os from 'node:os'
import path from 'node:path'
import pino from 'pino'
import t from 'tap'
import type { Test } from 'tap'
import type { StoredReading } from '../../readings/reading.ts'
import { openDatabase } from '../../store/database.ts'
import {
  apiForVersion, createInfluxReadingStore, createLineEncoder, encodeReading, escapeStringField, escapeTagValue,
  influxqlIdentifier, influxqlString, InfluxStoreError, readingsWhere
} from '../../readings/influx-store.ts'
import { createPostgresReadingStore } from '../../readings/postgres-store.ts'
import { aggregateBuckets, compareReadingPositions, timedReads } from '../../readings/reading-store.ts'
import type { ReadingQuery, ReadingStore } from '../../readings/reading-store.ts'
import { startInfluxd } from '../helpers/influxd.ts'
import { createTestDatabase } from '../helpers/postgres.ts'
import { seedEmbeddedDatabase } from '../helpers/pglite-template.ts'

const log = pino({ level: 'silent' })
/** 2025-11-26T00:00:00Z: a minute boundary, so bucket arithmetic below is easy to read. */
const base = Date.UTC(2025, 10, 26)
const minute = 60_000

// Sorted, so ReadingPosition order (deviceId asc) is obvious in expectations.
const deviceA = '0a000000-0000-4000-8000-000000000001'
const deviceB = '0b000000-0000-4000-8000-000000000002'
const deviceC = '0c000000-0000-4000-8000-000000000003'

function reading (patientId: string, over: Partial<StoredReading> = {}): StoredReading {
  return { patientId, deviceId: deviceA, metric: 'heart_rate', value: 72, unit: '/min', ts: base, seq: null, ...over }
}

function sorted (readings: StoredReading[]): StoredReading[] {
  return [...readings].sort(compareReadingPositions)
}

async function allPages (store: ReadingStore, q: Omit<ReadingQuery, 'after'>): Promise<{ rows: StoredReading[], pages: number }> {
  const rows: StoredReading[] = []
  let pages = 0
  let after: ReadingQuery['after']
  for (;;) {
    const page = await store.query({ ...q, after })
    pages++
    rows.push(...page)
    if (page.length < q.limit) return { rows, pages }
    const last = page[page.length - 1]!
    after = { ts: last.ts, deviceId: last.deviceId, metric: last.metric }
    if (pages > 100) throw new Error('paging does not end')
  }
}

interface Subject {
  store: ReadingStore
  /** InfluxDB tags take any string; the Postgres table keys patients and devices by uuid. */
  arbitraryIds: boolean
}

/** The contract every ReadingStore meets, whatever holds the readings. */
function readingStoreContract (t: Test, name: string, open: (t: Test) => Promise<Subject>): void {
  t.test(name, async (t) => {
    const { store, arbitraryIds } = await open(t)

    t.test('write then query round-trips every field', async (t) => {
      const p = randomUUID()
      const written = [
        reading(p, { value: 72, seq: 42 }),
        reading(p, { metric: 'body_temp', value: 36.65, unit: 'Cel', ts: base + 1, seq: null }),
        reading(p, { deviceId: deviceB, metric: 'spo2', value: 97.5, unit: '%', ts: base - 1000, seq: 0 })
      ]
      await store.write(written)
      t.strictSame(await store.query({ patientId: p, limit: 100 }), sorted(written))
      await store.write([])
      t.pass('an empty write is a no-op')
    })

    t.test('rewriting a reading is idempotent and the later write wins', async (t) => {
      const p = randomUUID()
      await store.write([reading(p, { value: 70, seq: 1 })])
      await store.write([reading(p, { value: 75, unit: '/min', seq: 2 })])
      t.strictSame(await store.query({ patientId: p, limit: 10 }), [reading(p, { value: 75, seq: 2 })])
      // The same key twice in one batch (a redelivered message inside a larger batch).
      await store.write([reading(p, { value: 80, seq: 3 }), reading(p, { ts: base + 5, value: 1, seq: 4 }), reading(p, { value: 81, seq: 5 })])
      t.strictSame(await store.query({ patientId: p, limit: 10 }), [reading(p, { ts: base + 5, value: 1, seq: 4 }), reading(p, { value: 81, seq: 5 })])
    })

    t.test('uuids match whatever their letter case', async (t) => {
      const p = randomUUID()
      const upper = { patientId: p.toUpperCase(), deviceId: deviceC.toUpperCase() }
      await store.write([reading(p.toUpperCase(), { deviceId: deviceC.toUpperCase(), value: 1 }), reading(p, { deviceId: deviceC, ts: base + 1, value: 2 })])
      const expected = [reading(p, { deviceId: deviceC, ts: base + 1, value: 2 }), reading(p, { deviceId: deviceC, value: 1 })]
      t.strictSame(await store.query({ patientId: p, limit: 10 }), expected)
      t.strictSame(await store.query({ patientId: upper.patientId, limit: 10 }), expected)
      t.strictSame(await store.query({ patientId: p, limit: 10, after: { ts: base + 1, deviceId: upper.deviceId, metric: 'heart_rate' } }), expected.slice(1))
      t.strictSame(await store.latest(upper.patientId), expected.slice(0, 1))
    })

    t.test('paging with limit 7 over ties at one timestamp neither skips nor repeats', async (t) => {
      const p = randomUUID()
      const written: StoredReading[] = []
      const metrics = ['heart_rate', 'resp_rate', 'spo2']
      // 20 readings at distinct times, plus two tie groups of 5 and 4 readings.
      for (let i = 0; i < 20; i++) {
        written.push(reading(p, { deviceId: i % 2 === 0 ? deviceA : deviceB, metric: metrics[i % 3]!, ts: base + i * 1000, value: i, seq: i }))
      }
      const tieA = base + 14_500
      for (const [deviceId, metric] of [[deviceC, 'heart_rate'], [deviceA, 'spo2'], [deviceB, 'heart_rate'], [deviceA, 'heart_rate'], [deviceB, 'spo2']] as const) {
        written.push(reading(p, { deviceId, metric, ts: tieA, value: 100, seq: null }))
      }
      const tieB = base + 4_500
      for (const [deviceId, metric] of [[deviceB, 'resp_rate'], [deviceA, 'resp_rate'], [deviceA, 'glucose'], [deviceC, 'spo2']] as const) {
        written.push(reading(p, { deviceId, metric, ts: tieB, value: 200, seq: 7 }))
      }
      // Written in an order unrelated to the reading order.
      await store.write(written.filter((_, i) => i % 2 === 1))
      await store.write(written.filter((_, i) => i % 2 === 0))
      const expected = sorted(written)
      t.equal(expected.length, 29)
      t.ok([7, 14, 21, 28].some((b) => expected[b - 1]!.ts === expected[b]!.ts), 'a page boundary falls inside a tie group')

      const { rows, pages } = await allPages(store, { patientId: p, limit: 7 })
      t.equal(pages, 5)
      t.strictSame(rows, expected)
      t.equal(new Set(rows.map((r) => `${r.ts} ${r.deviceId} ${r.metric}`)).size, rows.length, 'no repeats')

      for (const limit of [1, 2, 3, 4, 5]) {
        t.strictSame((await allPages(store, { patientId: p, limit })).rows, expected, `limit ${limit}`)
      }
      const filtered = await allPages(store, { patientId: p, metric: 'heart_rate', from: base + 4_000, to: base + 15_000, limit: 2 })
      t.strictSame(filtered.rows, expected.filter((r) => r.metric === 'heart_rate' && r.ts >= base + 4_000 && r.ts < base + 15_000))
    })

    t.test('metric, from and to filter; from is inclusive and to exclusive', async (t) => {
      const p = randomUUID()
      const written = [
        reading(p, { ts: base }),
        reading(p, { ts: base + 10 }),
        reading(p, { ts: base + 20 }),
        reading(p, { metric: 'spo2', unit: '%', value: 98, ts: base + 10 })
      ]
      await store.write(written)
      const hr = written.slice(0, 3).reverse()
      t.strictSame(await store.query({ patientId: p, metric: 'heart_rate', limit: 10 }), hr)
      t.strictSame(await store.query({ patientId: p, from: base + 10, limit: 10 }), sorted(written.slice(1)))
      t.strictSame(await store.query({ patientId: p, to: base + 10, limit: 10 }), [written[0]])
      t.strictSame(await store.query({ patientId: p, metric: 'heart_rate', from: base + 10, to: base + 20, limit: 10 }), [written[1]])
      t.strictSame(await store.query({ patientId: p, metric: 'glucose', limit: 10 }), [])
      t.strictSame(await store.query({ patientId: p, limit: 2 }), sorted(written).slice(0, 2))
    })

    t.test('latest gives the newest reading of each metric', async (t) => {
      const p = randomUUID()
      await store.write([
        reading(p, { ts: base, value: 60 }),
        reading(p, { deviceId: deviceB, ts: base + 5 * minute, value: 65, seq: 9 }),
        reading(p, { ts: base + 2 * minute, value: 61 }),
        reading(p, { metric: 'spo2', unit: '%', deviceId: deviceC, ts: base + minute, value: 96 }),
        // Same ts on two devices: the first in ReadingPosition order (deviceId asc) wins.
        reading(p, { metric: 'spo2', unit: '%', deviceId: deviceB, ts: base + 3 * minute, value: 97 }),
        reading(p, { metric: 'spo2', unit: '%', deviceId: deviceC, ts: base + 3 * minute, value: 99 }),
        reading(p, { metric: 'body_temp', unit: 'Cel', ts: base - minute, value: 37.2, seq: 3 })
      ])
      t.strictSame(await store.latest(p), [
        reading(p, { metric: 'body_temp', unit: 'Cel', ts: base - minute, value: 37.2, seq: 3 }),
        reading(p, { deviceId: deviceB, ts: base + 5 * minute, value: 65, seq: 9 }),
        reading(p, { metric: 'spo2', unit: '%', deviceId: deviceB, ts: base + 3 * minute, value: 97 })
      ])
      t.strictSame(await store.latest(randomUUID()), [])
    })

    t.test('latestForPatients and recentForPatients: the per-patient answers, for many patients at once', async (t) => {
      const [p, q, none] = [randomUUID(), randomUUID(), randomUUID()]
      await store.write([
        reading(p, { ts: base, value: 60 }),
        reading(p, { deviceId: deviceB, ts: base + 5 * minute, value: 65 }),
        reading(p, { metric: 'spo2', unit: '%', ts: base + minute, value: 96 }),
        reading(p, { metric: 'news2_score', unit: '{score}', ts: base, value: 2 }),
        reading(p, { metric: 'news2_score', unit: '{score}', deviceId: deviceB, ts: base + minute, value: 3 }),
        reading(p, { metric: 'news2_score', unit: '{score}', ts: base + 2 * minute, value: 5 }),
        reading(q, { metric: 'body_temp', unit: 'Cel', ts: base, value: 37.5 }),
        reading(q, { metric: 'news2_score', unit: '{score}', ts: base, value: 1 })
      ])
      const latest = await store.latestForPatients([p, q, none])
      t.strictSame(latest.get(p), await store.latest(p))
      t.strictSame(latest.get(q), await store.latest(q))
      t.notOk(latest.has(none), 'no readings: no entry')
      const news2 = await store.recentForPatients([p, q, none], 'news2_score', 2)
      t.strictSame(news2.get(p), await store.query({ patientId: p, metric: 'news2_score', limit: 2 }))
      t.strictSame(news2.get(p)?.map((r) => r.value), [5, 3], 'newest first, across devices')
      t.strictSame(news2.get(q)?.map((r) => r.value), [1])
      t.notOk(news2.has(none))
      t.strictSame(await store.latestForPatients([]), new Map())
    })

    t.test('aggregate: epoch-aligned buckets over [from, to), empty buckets null (count 0)', async (t) => {
      const p = randomUUID()
      await store.write([
        reading(p, { ts: base + 10_000, value: 999 }), // before `from`: excluded though its bucket is not
        reading(p, { ts: base + 40_000, value: 60 }),
        reading(p, { ts: base + 50_000, value: 70, deviceId: deviceB }),
        reading(p, { ts: base + 3 * minute + 1, value: 80 }),
        reading(p, { ts: base + 3 * minute + 2, value: 90 }),
        reading(p, { ts: base + 3 * minute + 3, value: 100 }),
        reading(p, { ts: base + 4 * minute + 30_000, value: 1000 }), // at `to`: excluded
        reading(p, { metric: 'spo2', unit: '%', ts: base + 40_000, value: 1 })
      ])
      const q = { patientId: p, metric: 'heart_rate', from: base + 30_000, to: base + 4 * minute + 30_000, everyMs: minute }
      const starts = [base, base + minute, base + 2 * minute, base + 3 * minute, base + 4 * minute]
      const expect = (values: Array<number | null>) => starts.map((ts, i) => ({ ts, value: values[i] }))
      t.strictSame(await store.aggregate({ ...q, fn: 'mean' }), expect([65, null, null, 90, null]))
      t.strictSame(await store.aggregate({ ...q, fn: 'min' }), expect([60, null, null, 80, null]))
      t.strictSame(await store.aggregate({ ...q, fn: 'max' }), expect([70, null, null, 100, null]))
      t.strictSame(await store.aggregate({ ...q, fn: 'count' }), expect([2, 0, 0, 3, 0]))
      t.strictSame(await store.aggregate({ ...q, patientId: randomUUID(), fn: 'count' }), expect([0, 0, 0, 0, 0]))
      t.strictSame(await store.aggregate({ ...q, to: q.from, fn: 'mean' }), [])
      await t.rejects(store.aggregate({ ...q, from: 0, to: base, everyMs: 1000, fn: 'mean' }), RangeError, 'too many buckets')
      await t.rejects(store.aggregate({ ...q, everyMs: 0, fn: 'mean' }), RangeError)
    })

    t.test("one patient's readings never show up for another", async (t) => {
      const a = randomUUID()
      const b = randomUUID()
      await store.write([reading(a, { value: 1 }), reading(b, { value: 2 }), reading(b, { metric: 'spo2', unit: '%', value: 3 })])
      t.strictSame(await store.query({ patientId: a, limit: 10 }), [reading(a, { value: 1 })])
      t.strictSame((await store.latest(a)).map((r) => r.value), [1])
      const agg = await store.aggregate({ patientId: a, metric: 'heart_rate', from: base, to: base + minute, everyMs: minute, fn: 'count' })
      t.strictSame(agg, [{ ts: base, value: 1 }])
    })

    t.test('injection-ish ids neither break nor widen queries', async (t) => {
      const victim = randomUUID()
      await store.write([reading(victim, { value: 50 })])
      const hostile = [
        "x' OR '1'='1",
        `${victim}' OR "patient_id" != '`,
        '\\',
        "\\' OR 1=1 --",
        'a\nb',
        "'; DROP TABLE readings; --",
        '/.*/'
      ]
      for (const id of hostile) {
        t.strictSame(await store.query({ patientId: id, limit: 10 }), [], `query ${JSON.stringify(id)}`)
        t.strictSame(await store.query({ patientId: victim, metric: id, limit: 10 }), [], `metric ${JSON.stringify(id)}`)
        t.strictSame(await store.latest(id), [], `latest ${JSON.stringify(id)}`)
        t.strictSame(await store.aggregate({ patientId: id, metric: 'heart_rate', from: base, to: base + minute, everyMs: minute, fn: 'count' }), [{ ts: base, value: 0 }])
        t.strictSame(await store.query({ patientId: victim, limit: 10, after: { ts: base + 1, deviceId: id, metric: id } }), [reading(victim, { value: 50 })], `cursor ${JSON.stringify(id)}`)
      }
      if (arbitraryIds) {
        const odd = `o'brien "x", y=z ${randomUUID()}`
        const written = [reading(odd, { unit: 'q"uo\\te', value: 7 }), reading(odd, { metric: 'heart rate,x=y', ts: base + 1 })]
        await store.write(written)
        t.strictSame(await store.query({ patientId: odd, limit: 10 }), sorted(written), 'quotes, commas, spaces and = survive a round trip')
        t.strictSame(await store.latest(odd), sorted(written).sort((a, b) => a.metric < b.metric ? -1 : 1))
        await t.rejects(store.write([reading('back\\slash')]), RangeError, 'a backslash in a tag is refused, not mangled')
      } else {
        await t.rejects(store.write([reading("x' OR '1'='1")]), RangeError, 'non-uuid patient ids are refused')
      }
      t.strictSame(await store.query({ patientId: victim, limit: 10 }), [reading(victim, { value: 50 })], 'victim intact')
    })

    t.test('ping', async (t) => {
      await store.ping()
      t.pass('reachable')
    })
  })
}

const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-store-contract-'))
t.teardown(() => fs.rm(tmp, { recursive: true, force: true }))

// influxd is a separate process: let it boot while the PostgreSQL suite runs.
const influxdStarting = startInfluxd()
influxdStarting.catch(() => {}) // awaited, and reported, below
t.teardown(async () => { await (await influxdStarting).close() })

readingStoreContract(t, 'postgres readings store on PostgreSQL', async (t) => {
  const database = await createTestDatabase()
  t.teardown(() => database.drop())
  const db = await openDatabase({ databaseUrl: database.url, dataDir: tmp, log })
  t.teardown(() => db.close())
  const store = createPostgresReadingStore(db.pool)
  t.teardown(() => store.close())
  return { store, arbitraryIds: false }
})

// The second also gzips its write bodies (INFLUX_WRITE_GZIP=true), so both bodies meet a real influxd.
for (const [api, gzipWrites] of [['auto', false], ['v1', true]] as const) {
  readingStoreContract(t, `influx readings store on influxd 1.6 (api ${api}${gzipWrites ? ', gzip' : ''})`, async (t) => {
    const influxd = await influxdStarting
    const store = await createInfluxReadingStore({ url: influxd.url, token: '', org: 'vigil', bucket: `vigil_${api}`, api, gzipWrites }, log)
    t.teardown(() => store.close())
    return { store, arbitraryIds: true }
  })
}

readingStoreContract(t, 'postgres readings store on PGlite', async (t) => {
  const db = await openDatabase({ databaseUrl: null, dataDir: await seedEmbeddedDatabase(path.join(tmp, 'pglite')), log })
  t.teardown(() => db.close())
  const store = createPostgresReadingStore(db.pool)
  t.teardown(() => store.close())
  return { store, arbitraryIds: false }
})

const influxd = await influxdStarting

t.test('influx store: errors are mapped and carry no reading data', async (t) => {
  const bucket = 'conflict'
  const store = await createInfluxReadingStore({ url: influxd.url, token: '', org: 'vigil', bucket, api: 'auto' }, log)
  t.teardown(() => store.close())
  // An integer `value` field first, so our float write conflicts (HTTP 400 from InfluxDB,
  // whose body quotes the offending line).
  const seed = await fetch(`${influxd.url}/write?db=${bucket}&precision=ms`, { method: 'POST', body: `reading,device_id=${deviceA},metric=heart_rate,patient_id=p value=1i ${base}` })
  t.equal(seed.status, 204)
  const patientId = 'secret-patient-0001'
  const err = await store.write([reading(patientId, { value: 123.456 })]).then(() => null, (e: unknown) => e)
  t.type(err, InfluxStoreError)
  const e = err as InfluxStoreError
  t.equal(e.statusCode, 400)
  t.match(e.message, /field type conflict/)
  t.notMatch(e.message, /secret-patient|123\.456|heart_rate/, 'no reading data in the message')
  t.equal(e.retriable, false)
})

t.test('influx store: write bodies are gzipped only with gzipWrites, and both are stored', async (t) => {
  // A forwarding proxy in front of the real influxd notes each write's Content-Encoding.
  const encodings: string[] = []
  const proxy = http.createServer((req, res) => {
    if (req.url?.startsWith('/write') === true || req.url?.startsWith('/api/v2/write') === true) encodings.push(req.headers['content-encoding'] ?? 'identity')
    const upstream = http.request(new URL(req.url!, influxd.url), { method: req.method, headers: req.headers }, (answer) => {
      res.writeHead(answer.statusCode!, answer.headers)
      answer.pipe(res)
    })
    upstream.on('error', (err) => res.destroy(err))
    req.pipe(upstream)
  })
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => proxy.close(() => resolve())))
  const url = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`
  for (const gzipWrites of [false, true]) {
    encodings.length = 0
    const store = await createInfluxReadingStore({ url, token: '', org: 'vigil', bucket: `gzip_${String(gzipWrites)}`, api: 'auto', gzipWrites }, log)
    t.teardown(() => store.close())
    const patientId = randomUUID()
    // 100 lines: ~15 KB, past the 4 KiB below which nothing is compressed.
    const readings = Array.from({ length: 100 }, (_, i) => reading(patientId, { ts: base + i, value: 60 + i }))
    await store.write(readings)
    t.same(encodings, [gzipWrites ? 'gzip' : 'identity'], `gzipWrites ${String(gzipWrites)}: one write, ${gzipWrites ? 'gzipped' : 'as it is'}`)
    const { rows } = await allPages(store, { patientId, limit: 1000 })
    t.same(sorted(rows), sorted(readings), `gzipWrites ${String(gzipWrites)}: every reading stored`)
  }
  // Small bodies are not worth compressing either way.
  encodings.length = 0
  const store = await createInfluxReadingStore({ url, token: '', org: 'vigil', bucket: 'gzip_small', api: 'auto', gzipWrites: true }, log)
  t.teardown(() => store.close())
  await store.write([reading(randomUUID())])
  t.same(encodings, ['identity'], 'one line: not gzipped')
})

t.test('influx store: write and ping reject while InfluxDB is down', async (t) => {
  const own = await startInfluxd()
  t.teardown(() => own.close())
  const store = await createInfluxReadingStore({ url: own.url, token: '', org: 'vigil', bucket: 'down', api: 'auto' }, log, { timeoutMs: 2000 })
  t.teardown(() => store.close())
  const p = randomUUID()
  await store.write([reading(p)])
  await own.stop()
  const err = await store.write([reading(p, { value: 99.5 })]).then(() => null, (e: unknown) => e)
  t.type(err, InfluxStoreError)
  t.equal((err as InfluxStoreError).retriable, true)
  t.notMatch((err as Error).message, /99\.5|heart_rate/)
  await t.rejects(store.ping(), InfluxStoreError)
  await own.start()
  await store.ping()
  t.strictSame(await store.query({ patientId: p, limit: 10 }), [reading(p)], 'data written before the restart is there')
  // Vigil must start while InfluxDB is down (the spool holds readings): opening succeeds,
  // and every operation fails until it answers.
  const unreachable = await createInfluxReadingStore({ url: 'http://127.0.0.1:1', token: '', org: 'vigil', bucket: 'x', api: 'auto' }, log)
  t.teardown(() => unreachable.close())
  await t.rejects(unreachable.ping(), InfluxStoreError, 'ping fails when unreachable')
  await t.rejects(unreachable.write([reading(p)]), InfluxStoreError, 'write fails when unreachable')

  // A rewrite without seq must clear it: InfluxDB merges a rewritten point's fields.
  await store.write([reading(p, { seq: 5, ts: 1_000_000 })])
  await store.write([reading(p, { seq: null, ts: 1_000_000 })])
  const [rewritten] = await store.query({ patientId: p, from: 1_000_000, to: 1_000_001, limit: 10 })
  t.equal(rewritten?.seq, null, 'seq cleared by the rewrite')
})

t.test('line protocol and InfluxQL encoding', async (t) => {
  t.equal(escapeTagValue('a,b c=d', 'x'), 'a\\,b\\ c\\=d')
  t.equal(escapeTagValue("o'brien", 'x'), "o'brien")
  t.throws(() => escapeTagValue('', 'patientId'), RangeError)
  t.throws(() => escapeTagValue('a\\', 'patientId'), RangeError)
  t.throws(() => escapeTagValue('a\nb', 'patientId'), RangeError)
  t.equal(escapeStringField('say "hi" \\o/'), '"say \\"hi\\" \\\\o/"')
  t.equal(
    encodeReading({ patientId: 'p 1', deviceId: 'd,1', metric: 'heart_rate', value: 72, unit: '/min', ts: 1764115200000, seq: 42 }),
    'reading,device_id=d\\,1,metric=heart_rate,patient_id=p\\ 1 value=72,unit="/min",seq=42i 1764115200000'
  )
  t.equal(
    encodeReading({ patientId: 'p', deviceId: 'd', metric: 'body_temp', value: 36.6, unit: 'Cel', ts: 5, seq: null }),
    'reading,device_id=d,metric=body_temp,patient_id=p value=36.6,unit="Cel",seq=-1i 5'
  )
  t.throws(() => encodeReading(reading('p', { value: Number.NaN })), RangeError)
  t.throws(() => encodeReading(reading('p', { value: Number.POSITIVE_INFINITY })), RangeError)
  t.throws(() => encodeReading(reading('p', { ts: 1.5 })), RangeError)
  t.throws(() => encodeReading(reading('p', { seq: 2.5 })), RangeError)
  // A store's encoder caches encoded ids, metrics and units: the second encoding of each is
  // the same line, an upper-case uuid is still written lower-case, a string used as a device id
  // and as a patient id is right in both places, and a refused value is refused every time.
  const lines = createLineEncoder(2)
  const upper = { patientId: 'AAAAAAAA-AAAA-4AAA-8AAA-AAAAAAAAAAAA', deviceId: 'BBBBBBBB-BBBB-4BBB-8BBB-BBBBBBBBBBBB', metric: 'spo2', value: 97, unit: '%', ts: 7, seq: 1 }
  const line = 'reading,device_id=bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb,metric=spo2,patient_id=aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa value=97,unit="%",seq=1i 7'
  t.equal(lines.line(upper), line)
  t.equal(lines.line(upper), line, 'the same line from the cache')
  t.equal(lines.line({ ...upper, deviceId: upper.patientId, patientId: upper.deviceId }),
    'reading,device_id=aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa,metric=spo2,patient_id=bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb value=97,unit="%",seq=1i 7', 'one id as device and as patient')
  t.equal(lines.lines([upper, { ...upper, patientId: 'p 1', deviceId: 'd,1', unit: 'a"b' }, upper]),
    `${line}\nreading,device_id=d\\,1,metric=spo2,patient_id=p\\ 1 value=97,unit="a\\"b",seq=1i 7\n${line}`, 'past the cache\'s size (2 here) it starts again')
  for (let i = 0; i < 2; i++) {
    t.throws(() => lines.line({ ...upper, deviceId: 'd\\' }), /deviceId must not contain a backslash/, `a refused device id, time ${i + 1}`)
    t.throws(() => lines.line({ ...upper, patientId: '' }), /patientId must not be empty/, `an empty patient id, time ${i + 1}`)
  }
  t.equal(influxqlString("it's"), "'it\\'s'")
  t.equal(influxqlString('a\\b'), "'a\\\\b'")
  t.equal(influxqlString("\\' OR 1=1"), "'\\\\\\' OR 1=1'")
  t.equal(influxqlString('a\nb'), "'a\\nb'")
  t.equal(influxqlIdentifier('my"db'), '"my\\"db"')
  t.equal(readingsWhere({ patientId: "x'", metric: 'hr', from: 1, to: 2 }), `"patient_id" = 'x\\'' AND "metric" = 'hr' AND time >= 1ms AND time < 2ms`)
  t.throws(() => readingsWhere({ patientId: 'x', from: 1.5 }), RangeError)
  t.equal(apiForVersion('1.6.7~rc0'), 'v1')
  t.equal(apiForVersion('1.7.10'), 'v1')
  t.equal(apiForVersion('1.8.10'), 'v2')
  t.equal(apiForVersion('v2.7.11'), 'v2')
  t.equal(apiForVersion('3.0.1'), 'v2')
  t.equal(apiForVersion(undefined), 'v2')
})

t.test('aggregate buckets and reading order (pure)', async (t) => {
  t.strictSame(aggregateBuckets({ from: 1500, to: 3000, everyMs: 1000, fn: 'mean' }), [{ ts: 1000, value: null }, { ts: 2000, value: null }])
  t.strictSame(aggregateBuckets({ from: 1000, to: 3001, everyMs: 1000, fn: 'count' }), [{ ts: 1000, value: 0 }, { ts: 2000, value: 0 }, { ts: 3000, value: 0 }])
  t.strictSame(aggregateBuckets({ from: -1500, to: -500, everyMs: 1000, fn: 'max' }), [{ ts: -2000, value: null }, { ts: -1000, value: null }])
  t.equal(aggregateBuckets({ from: 0, to: 10_000, everyMs: 1, fn: 'mean' }).length, 10_000)
  t.throws(() => aggregateBuckets({ from: 0, to: 10_001, everyMs: 1, fn: 'mean' }), RangeError)
  t.throws(() => aggregateBuckets({ from: 0, to: 10, everyMs: 1.5, fn: 'mean' }), RangeError)
  const order = [
    { ts: 2, deviceId: 'b', metric: 'a' },
    { ts: 1, deviceId: 'a', metric: 'b' },
    { ts: 1, deviceId: 'b', metric: 'a' },
    { ts: 1, deviceId: 'b', metric: 'b' }
  ]
  t.strictSame([...order].reverse().sort(compareReadingPositions), order)
})

t.test('timedReads times each read once it settles, answered or failed, and passes writes through', async (t) => {
  const observed: string[] = []
  let written = 0
  const failing = new Error('store down')
  const inner: ReadingStore = {
    kind: 'influxdb',
    write: async (r) => { written += r.length },
    query: async () => [],
    latest: async () => { await new Promise((resolve) => setTimeout(resolve, 20)); return [] },
    latestForPatients: async () => new Map(),
    recentForPatients: async () => new Map(),
    aggregate: async () => { throw failing },
    ping: async () => {},
    close: async () => {}
  }
  const seconds: number[] = []
  const store = timedReads(inner, (read, s) => { observed.push(read); seconds.push(s) })
  await store.latest('p')
  await t.rejects(store.aggregate({ patientId: 'p', metric: 'heart_rate', from: base, to: base + minute, everyMs: minute, fn: 'mean' }), failing)
  await store.write([reading('p')])
  await store.latestForPatients(['p'])
  t.same(observed, ['latest', 'aggregate', 'latestForPatients'])
  t.ok(seconds[0]! >= 0.015, `latest took its 20 ms (${seconds[0]} s)`)
  t.equal(written, 1)
  t.equal(store.kind, 'influxdb')
})
