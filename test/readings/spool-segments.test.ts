import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import pino from 'pino'
import t from 'tap'
import type { Test } from 'tap'
import { createLogThrottle } from '../../observability/log-throttle.ts'
import type { StoredReading } from '../../readings/reading.ts'
import { encodeRecord } from '../../readings/spool-record.ts'
import { openSegments } from '../../readings/spool-segments.ts'
import type { OpenSegmentsOptions, RecordSpan, Segments } from '../../readings/spool-segments.ts'

// The spool's segment files alone (readings/spool-segments.ts), without delivery.

const log = pino({ level: 'silent' })

function readings (count: number, start: number): StoredReading[] {
  return Array.from({ length: count }, (_, i) => ({ patientId: 'p', deviceId: 'd', metric: 'heart_rate', value: 60, unit: '/min', ts: start + i, seq: null }))
}

async function open (t: Test, dir: string, segmentBytes: number, appendLingerMs?: number, more: Partial<OpenSegmentsOptions> = {}): Promise<Segments> {
  const throttled = createLogThrottle(log)
  const segments = await openSegments({ dir, segmentBytes, log, throttled, onChange: () => {}, ...(appendLingerMs === undefined ? {} : { appendLingerMs }), ...more })
  t.teardown(async () => {
    await segments.stopAppends()
    await segments.close()
    throttled.close()
  })
  return segments
}

async function tempDir (t: Test): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-segments-'))
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  return dir
}

const walFiles = async (dir: string): Promise<string[]> => (await fs.readdir(dir)).filter((f) => f.endsWith('.wal')).sort()

t.test('delivered segments are deleted before the checkpoint file is written, so a checkpoint that fails still frees them', async (t) => {
  const dir = await tempDir(t)
  const segments = await open(t, dir, 64)
  for (let i = 0; i < 4; i++) await segments.append(encodeRecord(readings(2, i * 10), i), 2, i)
  t.equal((await walFiles(dir)).length, 4, 'one record per segment (64-byte segments)')
  for (let run = await segments.read(3); run !== null; run = await segments.read(3)) await segments.consume(run)
  t.equal(segments.backlog().readings, 0)
  // The checkpoint's temp file cannot be created (as on a full disk: ENOSPC; here EISDIR).
  await fs.mkdir(path.join(dir, 'checkpoint.json.tmp'))
  await t.rejects(segments.checkpoint())
  t.strictSame(await walFiles(dir), ['0000000000000004.wal'], 'every segment before the cursor deleted anyway')
  t.ok(segments.checkpointBehind(), 'the checkpoint is still to be written')
  await fs.rmdir(path.join(dir, 'checkpoint.json.tmp'))
  await segments.checkpoint()
  t.notOk(segments.checkpointBehind())
  t.strictSame(JSON.parse(await fs.readFile(path.join(dir, 'checkpoint.json'), 'utf8')), { segment: 4, offset: (await fs.stat(path.join(dir, '0000000000000004.wal'))).size })
})

t.test('the evaluation mark: delivered segments are kept until the alert engine passed them, and it is checkpointed and read back at open', async (t) => {
  const dir = await tempDir(t)
  const first = await open(t, dir, 64, undefined, { keepForEvaluation: true })
  const spans: RecordSpan[] = []
  for (let i = 0; i < 4; i++) spans.push(await first.append(encodeRecord(readings(2, i * 10), 1000 + i), 2, 1000 + i))
  t.strictSame(spans.map((s) => s.start), [1, 2, 3, 4].map((segment) => ({ segment, offset: 0 })), 'each record at the start of its own segment')
  t.ok(spans.every((s) => s.end.offset > 0 && s.end.segment === s.start.segment), 'and ends in it')
  for (let run = await first.read(3); run !== null; run = await first.read(3)) await first.consume(run)
  await first.checkpoint()
  t.equal((await walFiles(dir)).length, 4, 'all delivered, none evaluated: every segment kept')

  first.markEvaluated(spans[1]!.end)
  first.markEvaluated(spans[0]!.end)
  t.strictSame(first.evaluated(), spans[1]!.end, 'a mark behind the current one is ignored')
  t.ok(first.checkpointBehind(), 'a moved mark is a checkpoint to write')
  await first.checkpoint()
  t.strictSame(await walFiles(dir), ['0000000000000003.wal', '0000000000000004.wal'], 'segments wholly before the mark deleted')
  t.strictSame(JSON.parse(await fs.readFile(path.join(dir, 'checkpoint.json'), 'utf8')).evaluated, spans[1]!.end)
  await first.stopAppends()
  await first.close()

  // Reopened: the mark names the deleted segment 2, so evaluation resumes at the start of 3.
  const second = await open(t, dir, 64, undefined, { keepForEvaluation: true })
  t.strictSame(second.evaluated(), { segment: 3, offset: 0 })
  t.equal(second.backlog().readings, 0, 'nothing undelivered')
  const run = await second.readRecords(100, second.evaluated())
  t.strictSame(run?.records.map((r) => [r.appendedAt, r.readings.map((x) => x.ts), r.start, r.end]),
    [2, 3].map((i) => [1000 + i, [i * 10, i * 10 + 1], spans[i]!.start, spans[i]!.end]), 'the records past the mark, each with when it was appended')
  await second.stopAppends()
  await second.close()

  // A spool opened without keepForEvaluation ignores the mark: delivered segments go.
  const third = await open(t, dir, 64)
  await third.checkpoint()
  t.strictSame(await walFiles(dir), ['0000000000000004.wal'])
  t.strictSame(JSON.parse(await fs.readFile(path.join(dir, 'checkpoint.json'), 'utf8')), { segment: 4, offset: spans[3]!.end.offset })
})

t.test('the evaluation mark holds delivered segments back by at most maxEvaluationLagBytes', async (t) => {
  const dir = await tempDir(t)
  const segments = await open(t, dir, 64, undefined, { keepForEvaluation: true, maxEvaluationLagBytes: 300 })
  for (let i = 0; i < 2; i++) await segments.append(encodeRecord(readings(2, i * 10), i), 2, i)
  for (let run = await segments.read(3); run !== null; run = await segments.read(3)) await segments.consume(run)
  await segments.checkpoint()
  t.equal((await walFiles(dir)).length, 2, 'within the bound: kept')
  for (let i = 2; i < 6; i++) await segments.append(encodeRecord(readings(2, i * 10), i), 2, i)
  for (let run = await segments.read(3); run !== null; run = await segments.read(3)) await segments.consume(run)
  segments.pinEvaluation(true)
  await segments.checkpoint()
  t.equal((await walFiles(dir)).length, 6, 'past it, but pinned (the backlog is being read): kept')
  segments.pinEvaluation(false)
  await segments.checkpoint()
  t.strictSame(await walFiles(dir), ['0000000000000006.wal'], 'past it: deleted as delivered')
  t.strictSame(segments.evaluated(), { segment: 6, offset: (await fs.stat(path.join(dir, '0000000000000006.wal'))).size }, 'and the mark moved up to the cursor')
})

t.test('a record read soon after its write is taken from memory, as the file has it; read again, from the file', async (t) => {
  const dir = await tempDir(t)
  const segments = await open(t, dir, 160)
  const appended = [readings(2, 0), readings(1, 10), readings(3, 20), readings(2, 30)]
  const spans: RecordSpan[] = []
  for (const [i, r] of appended.entries()) spans.push(await segments.append(encodeRecord(r, 100 + i), r.length, 100 + i, r))
  t.ok(new Set(spans.map((s) => s.start.segment)).size > 1, 'the records span segments')
  const first = await segments.readRecords(5, spans[0]!.start)
  t.equal(first?.records.length, 3, 'as many records as maxReadings allows (2 + 1 + 3)')
  t.ok(first!.records.every((r, i) => r.readings === appended[i]), 'the readings appended, not decoded again')
  t.strictSame(first!.records.map((r) => [r.appendedAt, r.start, r.end]), spans.slice(0, 3).map((s, i) => [100 + i, s.start, s.end]), 'at their positions')
  // A second read of the same records (a failed delivery retried) finds them in the file.
  const again = await segments.readRecords(5, spans[0]!.start)
  t.ok(again!.records.every((r, i) => r.readings !== appended[i]), 'read back from the file')
  t.strictSame(again, first, 'the same records, readings, positions and end')
  // The fourth was never read: still in memory; and a reopened spool reads the same from the file.
  const rest = await segments.readRecords(100, first!.end)
  t.equal(rest!.records[0]!.readings, appended[3])
  await segments.stopAppends()
  await segments.close()
  const reopened = await open(t, dir, 160)
  const all = await reopened.readRecords(100, spans[0]!.start)
  t.strictSame(all!.records, [...first!.records, ...rest!.records], 'what memory gave is what the files hold')
})

t.test('open: a torn tail of the newest segment is cut off; a corrupt older segment refuses to open', async (t) => {
  const dir = await tempDir(t)
  const first = encodeRecord(readings(2, 0), 1)
  const second = encodeRecord(readings(3, 10), 2)
  await fs.writeFile(path.join(dir, '0000000000000001.wal'), first)
  await fs.writeFile(path.join(dir, '0000000000000002.wal'), Buffer.concat([second, second.subarray(0, 20)]))
  const segments = await open(t, dir, 1024)
  t.strictSame(segments.backlog(), { readings: 5, bytes: first.length + second.length, oldestAppendedAt: 1 })
  t.equal((await fs.stat(path.join(dir, '0000000000000002.wal'))).size, second.length, 'torn tail truncated')
  const run = await segments.read(100)
  t.strictSame(run?.readings, [...readings(2, 0), ...readings(3, 10)])

  const broken = await tempDir(t)
  await fs.writeFile(path.join(broken, '0000000000000001.wal'), first.subarray(0, 20))
  await fs.writeFile(path.join(broken, '0000000000000002.wal'), second)
  await t.rejects(open(t, broken, 1024), /0000000000000001\.wal is corrupt at byte 0 .*not the newest segment/)
})

t.test('appends soon after a durable write wait for company: one write for two; after a quiet spell, at once', async (t) => {
  // A linger long enough that the second append (5 ms later) is always inside it, on any machine:
  // timers fire in the order they expire.
  const lingerMs = 200
  const segments = await open(t, await tempDir(t), 1024 * 1024, lingerMs)
  const append = async (i: number): Promise<void> => { await segments.append(encodeRecord(readings(1, i), i), 1, i) }
  await append(0)
  t.equal(segments.appendSyncs(), 1, 'the first append after opening is written at once')

  // Right after that write: the next one lingers, and an append 5 ms later joins it.
  const first = append(1)
  await sleep(5)
  const second = append(2)
  await Promise.all([first, second])
  t.equal(segments.appendSyncs(), 2, 'two appends, one durable write')

  // After a quiet spell (longer than the linger since the last write), no linger: the append
  // 5 ms later finds the first one's write started (or done) and goes in a write of its own.
  await sleep(lingerMs + 50)
  const third = append(3)
  await sleep(5)
  const fourth = append(4)
  await Promise.all([third, fourth])
  t.equal(segments.appendSyncs(), 4, 'an append after a quiet spell is not held back')
  t.equal(segments.backlog().readings, 5, 'every append is durable')
})

t.test('a write waits only for what is left of the linger since the last write ended', async (t) => {
  // 2 s of linger, the append 1.6 s after the last write: it waits the remaining ~0.4 s, not 2 s
  // (the bound leaves over a second for a slow disk's write).
  const lingerMs = 2_000
  const segments = await open(t, await tempDir(t), 1024 * 1024, lingerMs)
  await segments.append(encodeRecord(readings(1, 0), 0), 1, 0)
  await sleep(1_600)
  const started = performance.now()
  await segments.append(encodeRecord(readings(1, 1), 1), 1, 1)
  const waited = performance.now() - started
  t.ok(waited < 1_500, `written ${Math.round(waited)} ms after its append, within the rest of the linger`)
  t.equal(segments.appendSyncs(), 2)
})

t.test('stopAppends writes a lingering append at once and waits for it', async (t) => {
  const segments = await open(t, await tempDir(t), 1024 * 1024, 10_000)
  await segments.append(encodeRecord(readings(1, 0), 0), 1, 0)
  const lingering = segments.append(encodeRecord(readings(1, 1), 1), 1, 1)
  await segments.stopAppends()
  t.equal(segments.backlog().readings, 2, 'the lingering append was written before stopAppends resolved')
  await lingering
})

t.test('a lingering write starts at once when enough appends wait', async (t) => {
  // A linger no test would wait for: the sixteen appends are durable long before it ends.
  const segments = await open(t, await tempDir(t), 1024 * 1024, 10_000)
  const append = async (i: number): Promise<void> => { await segments.append(encodeRecord(readings(1, i), i), 1, i) }
  await append(0)
  const sixteen = Promise.all(Array.from({ length: 16 }, (_, i) => append(i + 1)))
  const outcome = await Promise.race([sixteen.then(() => 'written'), sleep(5_000).then(() => 'still lingering')])
  t.equal(outcome, 'written', 'sixteen waiting appends end the linger')
  t.equal(segments.appendSyncs(), 2, 'the sixteen went in one write')
})
