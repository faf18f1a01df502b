import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import pino from 'pino'
import t from 'tap'
import type { Test } from 'tap'
import { createLogThrottle } from '../../observability/log-throttle.ts'
import type { StoredReading } from '../../readings/reading.ts'
import { encodeRecord } from '../../readings/spool-record.ts'
import { openSegments } from '../../readings/spool-segments.ts'
import type { Segments } from '../../readings/spool-segments.ts'

// The spool's segment files alone (readings/spool-segments.ts), without delivery.

const log = pino({ level: 'silent' })

function readings (count: number, start: number): StoredReading[] {
  return Array.from({ length: count }, (_, i) => ({ patientId: 'p', deviceId: 'd', metric: 'heart_rate', value: 60, unit: '/min', ts: start + i, seq: null }))
}

async function open (t: Test, dir: string, segmentBytes: number): Promise<Segments> {
  const throttled = createLogThrottle(log)
  const segments = await openSegments({ dir, segmentBytes, log, throttled, onChange: () => {} })
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
