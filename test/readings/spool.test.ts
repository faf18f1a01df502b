import { randomUUID } from 'node:crypto'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import pino from 'pino'
import t from 'tap'
import type { Test } from 'tap'
import type { StoredReading } from '../../readings/reading.ts'
import { deadLetterName, encodeRecord, openSpool, readAfterDelivery, SpoolFullError } from '../../readings/spool.ts'
import type { OpenSpoolOptions, Spool } from '../../readings/spool.ts'
import { createInfluxReadingStore } from '../../readings/influx-store.ts'
import type { ReadingStore } from '../../readings/reading-store.ts'
import { startInfluxd } from '../helpers/influxd.ts'
// Polled every 10 ms (as before the shared helper): some tests look between a failure and the next retry.
import { waitFor } from '../helpers/wait.ts'

const log = pino({ level: 'silent' })
const patientId = '11111111-1111-4111-8111-111111111111'
const deviceId = '22222222-2222-4222-8222-222222222222'
let nextTs = Date.UTC(2025, 10, 26)

/** `count` distinct readings (distinct ts), so duplicates and gaps are visible. */
function readings (count: number, patient = patientId): StoredReading[] {
  return Array.from({ length: count }, () => {
    const ts = nextTs++
    return { patientId: patient, deviceId, metric: 'heart_rate', value: 60 + (ts % 40) + 0.5, unit: '/min', ts, seq: ts % 1000 }
  })
}

/** A ReadingStore double that records writes (unit tests of the spool only). */
function recordingStore (fail: (call: number, batch: readonly StoredReading[]) => Promise<void> | void = () => {}): ReadingStore & { writes: StoredReading[][], all: () => StoredReading[] } {
  const writes: StoredReading[][] = []
  let calls = 0
  const unused = async (): Promise<never> => { throw new Error('not used by the spool') }
  return {
    kind: 'influxdb',
    writes,
    all: () => writes.flat(),
    write: async (batch) => {
      await fail(++calls, batch)
      writes.push([...batch])
    },
    query: unused,
    latest: unused,
    latestForPatients: unused,
    recentForPatients: unused,
    aggregate: unused,
    ping: async () => {},
    close: async () => {}
  }
}

async function tempDir (t: Test): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-spool-'))
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  return dir
}

async function open (t: Test, dir: string, options: Partial<OpenSpoolOptions> = {}): Promise<Spool> {
  const spool = await openSpool({ dir, maxBytes: 64 * 1024 * 1024, log, ...options })
  t.teardown(() => spool.close())
  return spool
}

/** Reopens the spool in `dir` and delivers all it holds to a fresh store: the depth it reopened with, and what the store received. */
async function reopenAndReplay (t: Test, dir: string): Promise<{ depth: number, delivered: StoredReading[] }> {
  const reopened = await open(t, dir)
  const depth = reopened.stats().depthReadings
  const store = recordingStore()
  reopened.startDelivery(store)
  await waitFor('replay', () => reopened.stats().depthReadings === 0, { timeoutMs: 15_000, everyMs: 10 })
  return { depth, delivered: store.all() }
}

async function segmentFiles (dir: string): Promise<string[]> {
  return (await fs.readdir(dir)).filter((f) => f.endsWith('.wal')).sort()
}

interface DeadLetter { deadAt: string, reason: string, reading: StoredReading }

async function deadLetters (dir: string): Promise<DeadLetter[]> {
  const text = await fs.readFile(path.join(dir, deadLetterName), 'utf8').catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return ''
    throw err
  })
  return text.split('\n').filter((line) => line !== '').map((line) => JSON.parse(line) as DeadLetter)
}

/** An error shaped like InfluxStoreError (statusCode null: a network error). */
function storeError (statusCode: number | null, message = `InfluxDB write failed: HTTP ${statusCode ?? 'ECONNREFUSED'}`): Error {
  // As readings/influx-store.ts says of these tests' 400/422 (retention, line protocol): data it never takes.
  return Object.assign(new Error(message), { statusCode, retriable: statusCode === null || statusCode >= 500, rejectsData: statusCode === 400 || statusCode === 422 })
}

/**
 * Whether the checkpoint reaches the end of the newest segment, i.e. everything was passed,
 * within 5 s: it trails delivery by up to checkpointIntervalMs (250 ms by default).
 */
async function checkpointAtEnd (dir: string): Promise<boolean> {
  for (let waited = 0; waited < 5000; waited += 25) {
    if (await checkpointAtEndNow(dir)) return true
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
  return false
}

async function checkpointAtEndNow (dir: string): Promise<boolean> {
  // Delivered segments are deleted before the checkpoint is written: it may not exist yet.
  const text = await fs.readFile(path.join(dir, 'checkpoint.json'), 'utf8').catch(() => null)
  if (text === null) return false
  const checkpoint = JSON.parse(text) as { segment: number, offset: number }
  const last = (await segmentFiles(dir)).at(-1)!
  return `${String(checkpoint.segment).padStart(16, '0')}.wal` === last && checkpoint.offset === (await fs.stat(path.join(dir, last))).size
}

t.test('append, deliver in order, checkpoint, delete delivered segments', async (t) => {
  const dir = await tempDir(t)
  const spool = await open(t, dir, { segmentBytes: 1024 })
  const store = recordingStore()
  const delivered: number[] = []
  const latencies: number[] = []
  spool.on('delivered', (count, latencyMs) => {
    delivered.push(count)
    latencies.push(latencyMs)
  })
  const written: StoredReading[] = []
  for (let i = 0; i < 20; i++) {
    const batch = readings(1 + (i % 4))
    written.push(...batch)
    await spool.append(batch)
  }
  t.equal(spool.stats().depthReadings, written.length)
  t.ok(spool.stats().depthBytes > 0)
  t.ok((await segmentFiles(dir)).length > 1, 'rotated into several segments')

  spool.startDelivery(store)
  await waitFor('delivery', () => spool.stats().depthReadings === 0, { timeoutMs: 15_000, everyMs: 10 })
  t.strictSame(store.all(), written, 'every reading once, in order')
  t.equal(delivered.reduce((a, b) => a + b, 0), written.length)
  t.ok(latencies.every((ms) => ms >= 0))
  t.strictSame(spool.stats(), { depthReadings: 0, depthBytes: 0, oldestUnwrittenAgeMs: 0, appendSyncs: 20, deadLettered: 0, deliveryBlocked: false })
  // The checkpoint trails delivery by up to checkpointIntervalMs; then the segments go.
  await waitFor('the checkpoint to pass the delivered segments', async () => (await segmentFiles(dir)).length === 1, { timeoutMs: 15_000, everyMs: 10 })
  t.pass('delivered segments are deleted')
  t.ok(await checkpointAtEnd(dir), 'the checkpoint names the segment left')

  // An idle delivery loop wakes on the next append without polling.
  const more = readings(2)
  const started = Date.now()
  await spool.append(more)
  await waitFor('prompt delivery', () => spool.stats().depthReadings === 0, { timeoutMs: 15_000, everyMs: 10 })
  t.ok(Date.now() - started < 1000, 'woken promptly')
  t.strictSame(store.all().slice(-2), more)
})

t.test('group commit: concurrent appends share fdatasyncs', async (t) => {
  const dir = await tempDir(t)
  const spool = await open(t, dir)
  const batches = Array.from({ length: 200 }, () => readings(2))
  await Promise.all(batches.map((b) => spool.append(b)))
  const { appendSyncs, depthReadings } = spool.stats()
  t.equal(depthReadings, 400)
  t.ok(appendSyncs < 50, `${appendSyncs} fdatasyncs for 200 appends`)
  const store = recordingStore()
  spool.startDelivery(store, { maxBatchReadings: 64 })
  await waitFor('delivery', () => spool.stats().depthReadings === 0, { timeoutMs: 15_000, everyMs: 10 })
  t.strictSame(store.all(), batches.flat())
  t.ok(store.writes.every((w) => w.length <= 64), 'batches capped at maxBatchReadings')
})

t.test('a restart replays exactly the undelivered records', async (t) => {
  const dir = await tempDir(t)
  const first = await openSpool({ dir, maxBytes: 1 << 20, log, segmentBytes: 512 })
  const written: StoredReading[] = []
  for (let i = 0; i < 12; i++) {
    const batch = readings(5)
    written.push(...batch)
    await first.append(batch)
  }
  // Two batches of 10 get through, then the store fails until we close.
  const failing = recordingStore((call) => { if (call > 2) throw new Error('store down') })
  let failures = 0
  first.on('deliveryFailed', () => { failures++ })
  first.startDelivery(failing, { maxBatchReadings: 10, minBackoffMs: 5, maxBackoffMs: 20 })
  await waitFor('failures', () => failures >= 3, { timeoutMs: 15_000, everyMs: 10 })
  t.equal(first.stats().depthReadings, 40)
  t.ok(first.stats().oldestUnwrittenAgeMs >= 0)
  await first.close()
  t.strictSame(failing.all(), written.slice(0, 20))

  const second = await open(t, dir, { segmentBytes: 512 })
  t.equal(second.stats().depthReadings, 40, 'depth survives the restart')
  const store = recordingStore()
  second.startDelivery(store)
  await waitFor('replay', () => second.stats().depthReadings === 0, { timeoutMs: 15_000, everyMs: 10 })
  t.strictSame(store.all(), written.slice(20), 'the rest, each once, in order')
  await second.close()

  const third = await open(t, dir)
  t.equal(third.stats().depthReadings, 0, 'nothing left to replay')
})

t.test('a crash after deleting delivered segments but before the checkpoint: the restart resumes at the oldest segment left', async (t) => {
  const dir = await tempDir(t)
  const first = await openSpool({ dir, maxBytes: 1 << 20, log, segmentBytes: 512 })
  const written: StoredReading[] = []
  for (let i = 0; i < 12; i++) {
    const batch = readings(5)
    written.push(...batch)
    await first.append(batch)
  }
  const segmentsBefore = await segmentFiles(dir)
  // Only the first two writes (10 readings each) succeed, so delivery stops inside a later segment.
  const failing = recordingStore((call) => { if (call > 2) throw new Error('store down') })
  let failures = 0
  first.on('deliveryFailed', () => { failures++ })
  first.startDelivery(failing, { maxBatchReadings: 10, minBackoffMs: 5, maxBackoffMs: 20, checkpointIntervalMs: 0 })
  await waitFor('failures', () => failures >= 3, { timeoutMs: 15_000, everyMs: 10 })
  await first.close()
  const left = await segmentFiles(dir)
  t.ok(left.length < segmentsBefore.length, 'delivered segments deleted')
  // The crash: the segments are gone, but the checkpoint still names the first one, mid-file.
  await fs.writeFile(path.join(dir, 'checkpoint.json'), JSON.stringify({ segment: Number(segmentsBefore[0]!.slice(0, 16)), offset: 100 }))

  const second = await open(t, dir, { segmentBytes: 512 })
  const store = recordingStore()
  second.startDelivery(store)
  await waitFor('replay', () => second.stats().depthReadings === 0, { timeoutMs: 15_000, everyMs: 10 })
  const delivered = new Set(store.all().map((r) => r.ts))
  t.strictSame(written.slice(20).filter((r) => !delivered.has(r.ts)), [], 'every undelivered reading delivered after the restart')
  t.ok(store.all().length >= 40, 're-delivery from the start of the oldest segment left is allowed (writes are idempotent)')
})

t.test('close waits for the in-flight write and drops nothing', async (t) => {
  const dir = await tempDir(t)
  const spool = await openSpool({ dir, maxBytes: 1 << 20, log })
  let release!: () => void
  const gate = new Promise<void>((resolve) => { release = resolve })
  const store = recordingStore(async (call) => { if (call === 1) await gate })
  const batch = readings(3)
  await spool.append(batch)
  // No linger: the write must be in flight before close() is called.
  spool.startDelivery(store, { lingerMs: 0 })
  await sleep(50)
  let closed = false
  const closing = spool.close().then(() => { closed = true })
  await sleep(50)
  t.notOk(closed, 'close waits for the store write')
  await t.rejects(spool.append(readings(1)), /closed/, 'no appends while closing')
  release()
  await closing
  t.strictSame(store.all(), batch)
  const reopened = await open(t, dir)
  t.equal(reopened.stats().depthReadings, 0, 'the finished write was checkpointed')
})

t.test('poison: a reading the store never accepts is dead-lettered, the rest are delivered', async (t) => {
  const dir = await tempDir(t)
  const lines: string[] = []
  const capture = pino({ level: 'info' }, { write: (line: string) => { lines.push(line) } })
  const spool = await open(t, dir, { log: capture })
  const batch = readings(10)
  // A distinctive value, to prove it is not logged.
  const poison = { ...batch[6]!, value: 123.456 }
  batch[6] = poison
  const rejected = storeError(400, 'InfluxDB write failed: HTTP 400 (points beyond the retention policy)')
  const store = recordingStore((_call, written) => { if (written.some((r) => r.ts === poison.ts)) throw rejected })
  const dead: Array<[number, string]> = []
  let failures = 0
  spool.on('deadLettered', (count, reason) => { dead.push([count, reason]) })
  spool.on('deliveryFailed', () => { failures++ })
  await spool.append(batch)
  spool.startDelivery(store, { minBackoffMs: 5 })
  await waitFor('delivery', () => spool.stats().depthReadings === 0, { timeoutMs: 15_000, everyMs: 10 })

  t.strictSame(store.all(), batch.filter((r) => r !== poison), 'the 9 others delivered once each, in order')
  const letters = await deadLetters(dir)
  t.equal(letters.length, 1, 'one dead letter')
  t.strictSame(letters[0]!.reading, poison, 'holding the whole reading')
  t.equal(letters[0]!.reason, rejected.message)
  t.equal(new Date(letters[0]!.deadAt).toISOString(), letters[0]!.deadAt, 'deadAt is an ISO timestamp')
  t.strictSame(dead, [[1, rejected.message]], 'deadLettered event')
  t.equal(spool.stats().deadLettered, 1)
  t.equal(failures, 0, 'handled poison is not a delivery failure')
  t.ok(await checkpointAtEnd(dir), 'checkpoint advanced past the record')

  const logged = lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => /dead-letter/.test(String(l.msg)))
  t.equal(logged.length, 1, 'logged once')
  t.equal(logged[0]?.level, 50, 'at error level')
  t.match(logged[0], { deviceId, metric: 'heart_rate', ts: poison.ts, reason: rejected.message })
  t.notOk(lines.some((l) => l.includes(patientId)), 'no patient id in any log line')
  t.notOk(lines.some((l) => l.includes('123.456')), 'no value in any log line')

  const later = readings(3)
  await spool.append(later)
  await waitFor('later delivery', () => spool.stats().depthReadings === 0, { timeoutMs: 15_000, everyMs: 10 })
  t.strictSame(store.all().slice(-3), later, 'delivery continues behind it')
  t.equal((await deadLetters(dir)).length, 1)
})

t.test('poison: several per batch across records and slices, with an outage mid-bisection', async (t) => {
  const dir = await tempDir(t)
  const spool = await open(t, dir)
  const written: StoredReading[] = []
  for (let i = 0; i < 4; i++) {
    const batch = readings(5)
    written.push(...batch)
    await spool.append(batch)
  }
  const poisoned = new Set([written[0]!.ts, written[8]!.ts, written[9]!.ts, written[19]!.ts])
  let failures = 0
  spool.on('deliveryFailed', () => { failures++ })
  const store = recordingStore((call, batch) => {
    // The store goes away during the bisection: retried with backoff, nothing dropped or repeated.
    if (call === 4 || call === 5) throw storeError(503)
    if (batch.some((r) => poisoned.has(r.ts))) throw storeError(422, 'InfluxDB write failed: HTTP 422 (line protocol rejected)')
  })
  spool.startDelivery(store, { maxBatchReadings: 7, minBackoffMs: 5, maxBackoffMs: 20 })
  await waitFor('delivery', () => spool.stats().depthReadings === 0, { timeoutMs: 15_000, everyMs: 10 })
  t.equal(failures, 2, 'the 503s were retried')
  t.strictSame(store.all(), written.filter((r) => !poisoned.has(r.ts)), 'the others, each once, in order')
  t.strictSame((await deadLetters(dir)).map((d) => d.reading), written.filter((r) => poisoned.has(r.ts)), 'each poison reading dead-lettered once, in order')
  t.equal(spool.stats().deadLettered, 4)
  t.ok(await checkpointAtEnd(dir))
})

t.test('401/403/404/5xx/network errors retry forever and dead-letter nothing', async (t) => {
  const dir = await tempDir(t)
  const spool = await open(t, dir)
  const batch = readings(10)
  const statuses = [401, 403, 404, 500, 503, null]
  let failures = 0
  spool.on('deliveryFailed', () => { failures++ })
  let dead = 0
  spool.on('deadLettered', (count) => { dead += count })
  // Fails whenever the batch holds reading #7 too, so only the status code tells poison apart.
  const store = recordingStore((call, written) => {
    if (call <= statuses.length * 2 && written.some((r) => r.ts === batch[6]!.ts)) throw storeError(statuses[(call - 1) % statuses.length]!)
  })
  await spool.append(batch)
  spool.startDelivery(store, { minBackoffMs: 1, maxBackoffMs: 2 })
  await waitFor('failures', () => failures >= statuses.length, { timeoutMs: 15_000, everyMs: 10 })
  t.equal(spool.stats().depthReadings, 10, 'nothing dropped while failing')
  t.strictSame(store.all(), [], 'no half of the batch was written on its own')
  await waitFor('delivery', () => spool.stats().depthReadings === 0, { timeoutMs: 15_000, everyMs: 10 })
  t.equal(failures, statuses.length * 2)
  t.strictSame(store.all(), batch)
  t.equal(dead, 0)
  t.equal(spool.stats().deadLettered, 0)
  await t.rejects(fs.access(path.join(dir, deadLetterName)), 'no dead-letter file')
})

t.test('a 400 the store does not call bad data (a series limit) keeps the readings, reports delivery blocked, dead-letters nothing', async (t) => {
  const dir = await tempDir(t)
  const spool = await open(t, dir)
  const batch = readings(10)
  let failures = 0
  spool.on('deliveryFailed', () => { failures++ })
  let limited = true
  const store = recordingStore(() => {
    if (limited) throw Object.assign(new Error('InfluxDB write failed: HTTP 400 (series limit reached)'), { statusCode: 400, retriable: false, rejectsData: false })
  })
  await spool.append(batch)
  spool.startDelivery(store, { minBackoffMs: 1, maxBackoffMs: 5 })
  await waitFor('failures', () => failures >= 3, { timeoutMs: 15_000, everyMs: 10 })
  t.equal(spool.stats().deliveryBlocked, true, 'blocked')
  t.equal(spool.stats().depthReadings, 10, 'kept')
  limited = false
  await waitFor('delivery', () => spool.stats().depthReadings === 0, { timeoutMs: 15_000, everyMs: 10 })
  t.strictSame(store.all(), batch, 'delivered once the store was fixed')
  t.equal(spool.stats().deliveryBlocked, false, 'no longer blocked')
  t.equal(spool.stats().deadLettered, 0)
  await t.rejects(fs.access(path.join(dir, deadLetterName)), 'no dead-letter file')
})

t.test('replayDeadLetters: dead letters go back through the spool, an interrupted replay is finished, the file is removed', async (t) => {
  const dir = await tempDir(t)
  const spool = await open(t, dir)
  const first = readings(3)
  const second = readings(2)
  const line = (r: StoredReading): string => JSON.stringify({ deadAt: new Date().toISOString(), reason: 'x', reading: r }) + '\n'
  // Left by a replay that crashed after claiming its file, and a newer dead-letter file.
  await fs.writeFile(path.join(dir, `${deadLetterName}.replaying`), first.map(line).join(''))
  await fs.writeFile(path.join(dir, deadLetterName), second.map(line).join(''))
  t.strictSame(await spool.replayDeadLetters(), { replayed: 5 })
  t.strictSame((await fs.readdir(dir)).filter((f) => f.startsWith('dead-letter')), [], 'both files gone')
  const store = recordingStore()
  spool.startDelivery(store)
  await waitFor('delivery', () => spool.stats().depthReadings === 0, { timeoutMs: 15_000, everyMs: 10 })
  t.strictSame(store.all(), [...first, ...second], 'delivered, older first')
  t.strictSame(await spool.replayDeadLetters(), { replayed: 0 }, 'nothing left')
})

t.test('close gives up on a never-settling write after closeTimeoutMs; a reopened spool replays it', async (t) => {
  const dir = await tempDir(t)
  const spool = await openSpool({ dir, maxBytes: 1 << 20, log, closeTimeoutMs: 300 })
  let calls = 0
  const hung = recordingStore(async () => {
    calls++
    await new Promise<never>(() => {})
  })
  const batch = readings(5)
  await spool.append(batch)
  spool.startDelivery(hung)
  await waitFor('write in flight', () => calls === 1, { timeoutMs: 15_000, everyMs: 10 })
  const started = performance.now()
  await spool.close()
  const elapsed = performance.now() - started
  t.ok(elapsed >= 250 && elapsed < 1500, `close took ${Math.round(elapsed)} ms`)
  t.equal(calls, 1, 'no further write was started')

  const replay = await reopenAndReplay(t, dir)
  t.equal(replay.depth, 5, 'the records are still spooled')
  t.strictSame(replay.delivered, batch)
})

t.test('an abandoned write that settles after close changes nothing', async (t) => {
  for (const outcome of ['resolves', 'rejects'] as const) {
    const dir = await tempDir(t)
    const spool = await openSpool({ dir, maxBytes: 1 << 20, log, closeTimeoutMs: 100 })
    let settle!: () => void
    const gate = new Promise<void>((resolve) => { settle = resolve })
    let calls = 0
    const store = recordingStore(async () => {
      calls++
      await gate
      if (outcome === 'rejects') throw storeError(400)
    })
    const events: string[] = []
    spool.on('delivered', () => { events.push('delivered') })
    spool.on('deliveryFailed', () => { events.push('deliveryFailed') })
    spool.on('deadLettered', () => { events.push('deadLettered') })
    await spool.append(readings(4))
    spool.startDelivery(store)
    await waitFor('write in flight', () => calls === 1, { timeoutMs: 15_000, everyMs: 10 })
    await spool.close()
    const files = await fs.readdir(dir)
    const segment = await fs.readFile(path.join(dir, (await segmentFiles(dir))[0]!))
    settle()
    await sleep(100)
    t.strictSame(await fs.readdir(dir), files, `${outcome}: no file created or removed`)
    t.notOk(files.includes('checkpoint.json'), `${outcome}: no checkpoint written`)
    t.ok(segment.equals(await fs.readFile(path.join(dir, (await segmentFiles(dir))[0]!))), `${outcome}: segment untouched`)
    t.strictSame(events, [], `${outcome}: the loop stayed stopped`)
    t.equal(calls, 1)
    const reopened = await openSpool({ dir, maxBytes: 1 << 20, log })
    t.equal(reopened.stats().depthReadings, 4, `${outcome}: replayed at the next start`)
    await reopened.close()
  }
})

t.test('close during a long backoff leaves no timer behind', async (t) => {
  const dir = await tempDir(t)
  const timers = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length
  const before = timers()
  const spool = await openSpool({ dir, maxBytes: 1 << 20, log })
  let failures = 0
  spool.on('deliveryFailed', () => { failures++ })
  await spool.append(readings(2))
  spool.startDelivery(recordingStore(() => { throw storeError(503) }), { minBackoffMs: 60_000 })
  await waitFor('a failure', () => failures === 1, { timeoutMs: 15_000, everyMs: 10 })
  const started = performance.now()
  await spool.close()
  t.ok(performance.now() - started < 1000, 'close does not wait out the backoff')
  t.equal(timers(), before, 'no timer left running')
})

t.test('a torn final record is truncated on open; earlier records survive', async (t) => {
  const dir = await tempDir(t)
  const written: StoredReading[] = []
  const first = await openSpool({ dir, maxBytes: 1 << 20, log })
  for (let i = 0; i < 5; i++) {
    const batch = readings(3)
    written.push(...batch)
    await first.append(batch)
  }
  const depthBytes = first.stats().depthBytes
  await first.close()
  const [segment] = await segmentFiles(dir)
  const file = path.join(dir, segment!)
  const validSize = (await fs.stat(file)).size

  // A crash mid-write: the start of a record (valid length prefix) whose body never made it.
  const torn = encodeRecord(readings(4), Date.now())
  await fs.appendFile(file, torn.subarray(0, torn.length - 7))
  let spool = await openSpool({ dir, maxBytes: 1 << 20, log })
  t.equal(spool.stats().depthReadings, 15)
  t.equal(spool.stats().depthBytes, depthBytes)
  t.equal((await fs.stat(file)).size, validSize, 'torn tail truncated')
  await spool.close()

  // Garbage after the last record (length prefix and CRC that do not match anything).
  await fs.appendFile(file, Buffer.from('\x20\x00\x00\x00garbage-garbage-garbage-garbage-garbage'))
  spool = await open(t, dir)
  t.equal(spool.stats().depthReadings, 15)
  t.equal((await fs.stat(file)).size, validSize)

  const after = readings(2)
  await spool.append(after)
  const store = recordingStore()
  spool.startDelivery(store)
  await waitFor('delivery', () => spool.stats().depthReadings === 0, { timeoutMs: 15_000, everyMs: 10 })
  t.strictSame(store.all(), [...written, ...after])
})

t.test('SpoolFullError at the cap; room again once delivered', async (t) => {
  const dir = await tempDir(t)
  const recordBytes = encodeRecord(readings(10), 0).length
  const spool = await open(t, dir, { maxBytes: recordBytes * 5 + 10 })
  for (let i = 0; i < 5; i++) await spool.append(readings(10))
  const err = await spool.append(readings(10)).then(() => null, (e: unknown) => e)
  t.type(err, SpoolFullError)
  t.equal((err as Error).name, 'SpoolFullError')
  t.equal(spool.stats().depthReadings, 50, 'the refused append left nothing behind')
  // Concurrent appends are counted against the cap before they are written.
  await t.rejects(Promise.all([spool.append(readings(1)), spool.append(readings(1))]), SpoolFullError)
  const store = recordingStore()
  spool.startDelivery(store)
  await waitFor('delivery', () => spool.stats().depthReadings === 0, { timeoutMs: 15_000, everyMs: 10 })
  t.equal(store.all().length, 50)
  await spool.append(readings(10))
  t.pass('appends accepted again')
})

t.test('append rejects when the spool directory is unwritable, and recovers', async (t) => {
  const dir = await tempDir(t)
  const spoolDir = path.join(dir, 'spool')
  // segmentBytes 1: every append rotates, i.e. creates a file in the directory.
  const spool = await open(t, spoolDir, { segmentBytes: 1 })
  const ok = readings(2)
  await spool.append(ok)
  const before = spool.stats()
  const moved = path.join(dir, 'moved')
  const root = process.getuid?.() === 0
  // root ignores permission bits: put a file where the directory was instead.
  if (root) {
    await fs.rename(spoolDir, moved)
    await fs.writeFile(spoolDir, 'not a directory')
  } else {
    await fs.chmod(spoolDir, 0o500)
  }
  const err = await spool.append(readings(2)).then(() => null, (e: unknown) => e as NodeJS.ErrnoException)
  t.ok(err !== null, 'append rejected')
  t.match(err?.code, /^(ENOTDIR|EACCES|EPERM)$/)
  t.strictSame(spool.stats().depthBytes, before.depthBytes, 'nothing half-written')
  if (root) {
    await fs.rm(spoolDir)
    await fs.rename(moved, spoolDir)
  } else {
    await fs.chmod(spoolDir, 0o700)
  }
  const later = readings(2)
  await spool.append(later)
  const store = recordingStore()
  spool.startDelivery(store)
  await waitFor('delivery', () => spool.stats().depthReadings === 0, { timeoutMs: 15_000, everyMs: 10 })
  t.strictSame(store.all(), [...ok, ...later], 'the rejected append was not stored, the others were')
})

t.test('a failed write (ENOSPC) rejects the append and earlier records survive', async (t) => {
  const dir = await tempDir(t)
  const spool = await openSpool({ dir, maxBytes: 1 << 20, log, segmentBytes: 1 })
  const ok = readings(2)
  await spool.append(ok)
  // The next append rotates into segment 2, which we make a disk that is always full.
  const full = path.join(dir, '0000000000000002.wal')
  await fs.symlink('/dev/full', full)
  const err = await spool.append(readings(2)).then(() => null, (e: unknown) => e as NodeJS.ErrnoException)
  t.equal(err?.code, 'ENOSPC')
  t.equal(spool.stats().depthReadings, 2, 'the failed append is not counted')
  // /dev/full cannot be truncated back either, so the spool refuses further appends rather
  // than risk a torn record in the middle of the log.
  await t.rejects(spool.append(readings(1)), /unusable/)
  await spool.close()
  await fs.rm(full)
  const replay = await reopenAndReplay(t, dir)
  t.equal(replay.depth, 2)
  t.strictSame(replay.delivered, ok)
})

t.test('openSpool fails when the directory cannot be created', async (t) => {
  const dir = await tempDir(t)
  await fs.writeFile(path.join(dir, 'file'), '')
  await t.rejects(openSpool({ dir: path.join(dir, 'file', 'spool'), maxBytes: 1 << 20, log }))
})

t.test('with a real InfluxDB: outage grows the spool, recovery drains it exactly once', async (t) => {
  const influxd = await startInfluxd()
  t.teardown(() => influxd.close())
  const store = await createInfluxReadingStore({ url: influxd.url, token: '', org: 'vigil', bucket: 'spool', api: 'auto' }, log, { timeoutMs: 2000 })
  t.teardown(() => store.close())
  const dir = await tempDir(t)
  const spool = await openSpool({ dir, maxBytes: 1 << 24, log, segmentBytes: 4096 })
  t.teardown(() => spool.close())
  let failures = 0
  spool.on('deliveryFailed', () => { failures++ })
  spool.startDelivery(store, { minBackoffMs: 20, maxBackoffMs: 200, maxBatchReadings: 100 })

  const patient = randomUUID()
  const warmup = readings(5, patient)
  await spool.append(warmup)
  await waitFor('warm-up delivery', () => spool.stats().depthReadings === 0, { timeoutMs: 15_000, everyMs: 10 })

  await influxd.stop()
  const outage: StoredReading[] = []
  for (let i = 0; i < 30; i++) {
    const batch = readings(10, patient)
    outage.push(...batch)
    await spool.append(batch)
  }
  await waitFor('failed deliveries', () => failures >= 2, { timeoutMs: 15_000, everyMs: 10 })
  t.equal(spool.stats().depthReadings, 300, 'depth grows while InfluxDB is down')
  t.ok(spool.stats().oldestUnwrittenAgeMs >= 0)

  await influxd.start()
  await waitFor('drain', () => spool.stats().depthReadings === 0, { timeoutMs: 30_000, everyMs: 10 })
  const stored = await store.query({ patientId: patient, limit: 1000 })
  const expected = [...warmup, ...outage].sort((a, b) => b.ts - a.ts)
  t.equal(stored.length, expected.length, 'each reading stored exactly once')
  t.strictSame(stored, expected)
  const count = await store.aggregate({ patientId: patient, metric: 'heart_rate', from: expected.at(-1)!.ts, to: expected[0]!.ts + 1, everyMs: 3_600_000, fn: 'count' })
  t.equal(count.reduce((n, b) => n + (b.value ?? 0), 0), 305)
})

t.test('with a real InfluxDB: a reading beyond the retention policy is dead-lettered, current ones arrive', async (t) => {
  const influxd = await startInfluxd()
  t.teardown(() => influxd.close())
  // A 1 h retention policy (InfluxDB's minimum): a point 2 h old is refused with HTTP 400.
  const created = await fetch(`${influxd.url}/query`, { method: 'POST', body: new URLSearchParams({ q: 'CREATE DATABASE "retention" WITH DURATION 1h' }) })
  t.equal(created.status, 200)
  t.notMatch(await created.text(), /"error"/)
  const store = await createInfluxReadingStore({ url: influxd.url, token: '', org: 'vigil', bucket: 'retention', api: 'auto' }, log, { timeoutMs: 2000 })
  t.teardown(() => store.close())
  const dir = await tempDir(t)
  const spool = await openSpool({ dir, maxBytes: 1 << 24, log })
  t.teardown(() => spool.close())

  const patient = randomUUID()
  const now = Date.now()
  const reading = (ts: number, i: number): StoredReading => ({ patientId: patient, deviceId, metric: 'heart_rate', value: 60 + i, unit: '/min', ts, seq: i })
  const current = Array.from({ length: 12 }, (_, i) => reading(now - 60_000 + i * 1000, i))
  const old = reading(now - 2 * 3_600_000, 99)
  await spool.append([...current.slice(0, 5), old, ...current.slice(5, 9)])
  await spool.append(current.slice(9))
  const dead: string[] = []
  spool.on('deadLettered', (_count, reason) => { dead.push(reason) })
  spool.startDelivery(store, { minBackoffMs: 20, maxBackoffMs: 200 })
  await waitFor('delivery', () => spool.stats().depthReadings === 0, { timeoutMs: 30_000, everyMs: 10 })

  const stored = await store.query({ patientId: patient, from: now - 3 * 3_600_000, limit: 100 })
  t.strictSame(stored, [...current].reverse(), 'every current reading arrived')
  const letters = await deadLetters(dir)
  t.equal(letters.length, 1)
  t.strictSame(letters[0]?.reading, old, 'the old reading is in the dead-letter file')
  t.match(letters[0]?.reason, /HTTP 400 \(points beyond the retention policy\)/)
  t.strictSame(dead, [letters[0]?.reason])
  t.equal(spool.stats().deadLettered, 1)
  t.ok(await checkpointAtEnd(dir))
})

t.test('the checkpoint trails delivery: a crash before it moves re-delivers, loses nothing', async (t) => {
  const dir = await tempDir(t)
  const spool = await open(t, dir)
  const store = recordingStore()
  spool.startDelivery(store, { checkpointIntervalMs: 60_000, lingerMs: 0 })
  const first = readings(5)
  await spool.append(first)
  await waitFor('the first delivery', () => store.all().length === 5, { timeoutMs: 15_000, everyMs: 10 })
  // Delivered, and the checkpoint (at most once a minute here) has moved once at most: the
  // files as a crash would leave them now.
  const second = readings(3)
  await spool.append(second)
  await waitFor('the second delivery', () => store.all().length === 8, { timeoutMs: 15_000, everyMs: 10 })
  t.equal(spool.stats().depthReadings, 0, 'stats count what is delivered, not what is checkpointed')
  const crashed = await tempDir(t)
  await fs.cp(dir, crashed, { recursive: true })

  const reopened = await open(t, crashed)
  const replay = recordingStore()
  reopened.startDelivery(replay, { lingerMs: 0 })
  await waitFor('the replay', () => reopened.stats().depthReadings === 0, { timeoutMs: 15_000, everyMs: 10 })
  const replayed = replay.all()
  t.ok(replayed.length > 0, 'readings delivered after the last checkpoint are delivered again')
  t.strictSame(replayed, [...first, ...second].slice(-replayed.length), 'a tail of what was delivered, in order: writes are idempotent')
})

t.test('linger: a trickle of appends goes out in fewer writes', async (t) => {
  const dir = await tempDir(t)
  const spool = await open(t, dir)
  const store = recordingStore()
  spool.startDelivery(store, { lingerMs: 200, lingerReadings: 1000 })
  const all: StoredReading[] = []
  for (let i = 0; i < 10; i++) {
    const batch = readings(1)
    all.push(...batch)
    await spool.append(batch)
  }
  await waitFor('delivery', () => store.all().length === all.length, { timeoutMs: 15_000, everyMs: 10 })
  t.strictSame(store.all(), all, 'every reading once, in order')
  t.ok(store.writes.length < all.length, `${store.writes.length} writes for ${all.length} appends`)
})

t.test('caughtUp: cuts a linger short and resolves once what was acknowledged is in the store', async (t) => {
  const dir = await tempDir(t)
  const spool = await open(t, dir)
  const store = recordingStore()
  t.equal(await spool.caughtUp(10), true, 'nothing spooled: caught up at once')
  const first = readings(3)
  await spool.append(first)
  t.equal(await spool.caughtUp(10), false, 'no delivery started: not caught up')
  // A linger far longer than the test: only caughtUp can end it.
  spool.startDelivery(store, { lingerMs: 60_000, lingerReadings: 1000 })
  await sleep(50)
  t.equal(store.all().length, 0, 'the readings linger')
  const started = performance.now()
  t.equal(await spool.caughtUp(10_000), true)
  t.ok(performance.now() - started < 5_000, 'well before the linger would have ended')
  t.strictSame(store.all(), first, 'every acknowledged reading is in the store when it resolves')
  // The next append lingers again: caughtUp hurries only the readings it waits for.
  await spool.append(readings(1))
  await sleep(50)
  t.equal(store.all().length, 3, 'lingering again after the catch-up')
})

t.test('caughtUp: false after maxWaitMs while the store does not answer; readAfterDelivery then reads anyway', async (t) => {
  const dir = await tempDir(t)
  const spool = await open(t, dir, { closeTimeoutMs: 50 })
  const hung = gate()
  t.teardown(() => hung.open())
  const store = recordingStore(async () => { await hung.wait })
  const latest: StoredReading[] = []
  store.latest = async () => latest
  spool.startDelivery(store, { lingerMs: 0 })
  await spool.append(readings(2))
  t.equal(await spool.caughtUp(100), false, 'not caught up: the write hangs')
  const reader = readAfterDelivery(store, spool, 100)
  const started = performance.now()
  t.equal(await reader.latest(patientId), latest, 'the read goes to the store after the wait')
  t.ok(performance.now() - started >= 90, 'it waited for delivery first')
})

t.test('readAfterDelivery: a read right after an append sees it, whatever the linger', async (t) => {
  const dir = await tempDir(t)
  const spool = await open(t, dir)
  const store = recordingStore()
  store.query = async () => store.all()
  spool.startDelivery(store, { lingerMs: 60_000 })
  const reader = readAfterDelivery(store, spool)
  const batch = readings(2)
  await spool.append(batch)
  t.strictSame(await reader.query({ patientId, limit: 10 } as never), batch)
  t.strictSame(await store.query({ patientId, limit: 10 } as never), batch, 'and the store itself holds them')
})

// --- several store writes in flight (maxWritesInFlight) --------------------------------------

/** Small batches and a low read-ahead threshold, so a backlog of a few records goes out as concurrent writes. */
const concurrent = { maxBatchReadings: 10, lingerReadings: 5, lingerMs: 0, checkpointIntervalMs: 0 }

/** A gate a store write can wait on. */
function gate (): { wait: Promise<void>, open: () => void } {
  let open!: () => void
  const wait = new Promise<void>((resolve) => { open = resolve })
  return { wait, open }
}

t.test('two writes in flight: a later batch finishing first moves neither the cursor nor the checkpoint past the earlier one', async (t) => {
  const dir = await tempDir(t)
  const spool = await open(t, dir)
  const first = gate()
  let inFlight = 0
  let most = 0
  const store = recordingStore(async (call) => {
    inFlight++
    most = Math.max(most, inFlight)
    try {
      if (call === 1) await first.wait
    } finally {
      inFlight--
    }
  })
  const written: StoredReading[] = []
  for (let i = 0; i < 4; i++) {
    const batch = readings(10)
    written.push(...batch)
    await spool.append(batch)
  }
  spool.startDelivery(store, concurrent)
  await waitFor('the second write to finish while the first is held', () => store.writes.length >= 1, { timeoutMs: 15_000, everyMs: 10 })
  t.equal(most, 2, 'two writes were in flight at once')
  t.strictSame(store.writes[0], written.slice(10, 20), 'the second batch finished first')
  await sleep(100)
  t.equal(store.writes.length, 1, 'no third write while the first is unanswered (the window is two)')
  t.equal(spool.stats().depthReadings, 40, 'nothing counts as delivered before the first batch is')
  // The files as a crash would leave them now: everything is replayed.
  const crashed = await tempDir(t)
  await fs.cp(dir, crashed, { recursive: true })
  const reopened = await open(t, crashed)
  t.equal(reopened.stats().depthReadings, 40, 'the checkpoint did not pass the unanswered first batch')

  first.open()
  await waitFor('delivery', () => spool.stats().depthReadings === 0, { timeoutMs: 15_000, everyMs: 10 })
  t.equal(store.all().length, 40, 'each reading written once')
  t.strictSame([...store.all()].sort((a, b) => a.ts - b.ts), written, 'every reading arrived')
  t.ok(await checkpointAtEnd(dir), 'the checkpoint reaches the end once the front is delivered')
})

t.test('two writes in flight: a batch that writes a point an earlier unconsumed batch writes waits for it, so the later value wins', async (t) => {
  const dir = await tempDir(t)
  const spool = await open(t, dir)
  const first = gate()
  const calls: number[] = []
  const store = recordingStore(async (call) => {
    calls.push(call)
    if (call === 1) await first.wait
  })
  const a = readings(10)
  const b = readings(10)
  // A correction: b rewrites a's fourth point (same device, metric and time) with a new value.
  b[5] = { ...a[3]!, value: a[3]!.value + 10 }
  await spool.append(a)
  await spool.append(b)
  spool.startDelivery(store, concurrent)
  await waitFor('the first write', () => calls.length === 1, { timeoutMs: 15_000, everyMs: 10 })
  await sleep(150)
  t.strictSame(calls, [1], 'the overlapping batch is not written beside the first')
  first.open()
  await waitFor('delivery', () => spool.stats().depthReadings === 0, { timeoutMs: 15_000, everyMs: 10 })
  t.strictSame(store.writes, [a, b], 'written one after the other, in order')
  const last = store.all().filter((r) => r.ts === a[3]!.ts).at(-1)
  t.equal(last?.value, a[3]!.value + 10, 'the correction is the last write of the point')
})

t.test('two writes in flight: the earlier fails and is retried, the later is not written twice', async (t) => {
  const dir = await tempDir(t)
  const spool = await open(t, dir)
  const first = gate()
  let failures = 0
  spool.on('deliveryFailed', () => { failures++ })
  const store = recordingStore(async (call) => {
    if (call === 1) {
      await first.wait
      throw storeError(503)
    }
  })
  const a = readings(10)
  const b = readings(10)
  await spool.append(a)
  await spool.append(b)
  spool.startDelivery(store, { ...concurrent, minBackoffMs: 20 })
  await waitFor('the second write', () => store.writes.length === 1, { timeoutMs: 15_000, everyMs: 10 })
  first.open()
  await waitFor('delivery', () => spool.stats().depthReadings === 0, { timeoutMs: 15_000, everyMs: 10 })
  t.equal(failures, 1)
  t.strictSame(store.writes, [b, a], 'the failed batch was retried; the delivered one was kept')
  t.ok(await checkpointAtEnd(dir))
})

t.test('close with two writes hung: both are abandoned, nothing is checkpointed, a reopened spool replays them', async (t) => {
  const dir = await tempDir(t)
  const spool = await openSpool({ dir, maxBytes: 1 << 20, log, closeTimeoutMs: 200 })
  let calls = 0
  const hung = recordingStore(async () => {
    calls++
    await new Promise<never>(() => {})
  })
  const written = [...readings(10), ...readings(10)]
  await spool.append(written.slice(0, 10))
  await spool.append(written.slice(10))
  spool.startDelivery(hung, concurrent)
  await waitFor('two writes in flight', () => calls === 2, { timeoutMs: 15_000, everyMs: 10 })
  const started = performance.now()
  await spool.close()
  t.ok(performance.now() - started < 1500, 'close gave up on both after closeTimeoutMs')
  const replay = await reopenAndReplay(t, dir)
  t.equal(replay.depth, 20, 'both batches are still spooled')
  t.strictSame(replay.delivered, written)
})

t.test('maxWritesInFlight 1: one write at a time', async (t) => {
  const dir = await tempDir(t)
  const spool = await open(t, dir)
  const first = gate()
  const calls: number[] = []
  const store = recordingStore(async (call) => {
    calls.push(call)
    if (call === 1) await first.wait
  })
  for (let i = 0; i < 3; i++) await spool.append(readings(10))
  spool.startDelivery(store, { ...concurrent, maxWritesInFlight: 1 })
  await waitFor('the first write', () => calls.length === 1, { timeoutMs: 15_000, everyMs: 10 })
  await sleep(150)
  t.strictSame(calls, [1])
  first.open()
  await waitFor('delivery', () => spool.stats().depthReadings === 0, { timeoutMs: 15_000, everyMs: 10 })
  t.equal(store.all().length, 30)
})

t.test('close after the earlier write failed waits for the later one still in flight', async (t) => {
  // Review of the two-writes change: stop() returned during A's backoff while B was still
  // writing, so close() resolved with a store request running (and never abandoned).
  const dir = await tempDir(t)
  const spool = await openSpool({ dir, maxBytes: 1 << 20, log, closeTimeoutMs: 5000 })
  const failA = gate()
  const finishB = gate()
  let calls = 0
  let bFinished = false
  let failures = 0
  spool.on('deliveryFailed', () => { failures++ })
  const store = recordingStore(async (call) => {
    calls++
    if (call === 1) {
      await failA.wait
      throw storeError(503)
    }
    await finishB.wait
    bFinished = true
  })
  await spool.append(readings(10))
  await spool.append(readings(10))
  spool.startDelivery(store, { ...concurrent, minBackoffMs: 60_000 })
  await waitFor('two writes in flight', () => calls === 2, { timeoutMs: 15_000, everyMs: 10 })
  failA.open()
  await waitFor('the first write to fail', () => failures === 1, { timeoutMs: 15_000, everyMs: 10 })
  setTimeout(() => finishB.open(), 300)
  await spool.close()
  t.ok(bFinished, 'close returned only after the write in flight finished')
  const reopened = await open(t, dir)
  t.equal(reopened.stats().depthReadings, 20, 'nothing checkpointed past the failed first batch')
})

t.test('the evaluation mark: checkpointed once delivery is idle too, and what follows it is read back after a reopen', async (t) => {
  const dir = await tempDir(t)
  const spool = await open(t, dir, { keepForEvaluation: true })
  const store = recordingStore()
  spool.startDelivery(store, { lingerMs: 0, checkpointIntervalMs: 10 })
  const first = await spool.append(readings(2))
  const second = await spool.append(readings(3))
  await waitFor('delivered', () => store.all().length === 5)
  const checkpoint = async (): Promise<{ evaluated?: unknown }> => JSON.parse(await fs.readFile(path.join(dir, 'checkpoint.json'), 'utf8'))
  await waitFor('the delivery checkpoint', async () => (await checkpoint().catch(() => ({ evaluated: undefined }))).evaluated !== undefined)
  t.strictSame((await checkpoint()).evaluated, first!.start, 'delivered, not evaluated: the mark stays at the start')
  // No append follows: the mark alone must wake the idle delivery loop to checkpoint it.
  spool.markEvaluated(first!.end)
  await waitFor('the mark checkpointed', async () => JSON.stringify((await checkpoint()).evaluated) === JSON.stringify(first!.end), { timeoutMs: 2000 })
  await spool.close()

  const reopened = await open(t, dir, { keepForEvaluation: true })
  const backlog: Array<{ count: number, start: unknown }> = []
  for await (const records of reopened.evaluationBacklog()) backlog.push(...records.map((r) => ({ count: r.readings.length, start: r.start })))
  t.strictSame(backlog, [{ count: 3, start: second!.start }], 'only the record after the mark is read back')
})
