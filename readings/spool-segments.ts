import type { FileHandle } from 'node:fs/promises'
import fs from 'node:fs/promises'
import path from 'node:path'
import type { Logger } from 'pino'
import type { LogThrottle } from '../observability/log-throttle.ts'
import type { StoredReading } from './reading.ts'
import { appendedAtOfPrefix, declaredRecordLength, decodeRecordBody, recordHeaderBytes, recordPrefixBytes, scanRecord } from './spool-record.ts'

/*
 * The spool's segment files: an append-only log of records (readings/spool-record.ts) in
 * numbered files, read from a delivery cursor, with a durable checkpoint behind it.
 *
 *   0000000000000001.wal …  segments, appended in order, rolled at `segmentBytes`
 *   checkpoint.json          {"segment": n, "offset": bytes, "evaluated": {"segment": n, "offset": bytes}}:
 *                            everything before the first position is delivered, everything before
 *                            `evaluated` was evaluated by the alert engine with its state saved
 *
 * append() resolves once its record is durable (group commit: what queues during one
 * durable write goes out in the next; a write that would start less than `appendLingerMs` after
 * the last one ended waits out the rest of that time for company first). The active segment is
 * open with O_DSYNC where the platform has it, so each write returns only once its data (and the
 * file size) is on the device, as write + fdatasync would, in one trip to libuv's thread pool
 * instead of two (at a small site every message pays that trip alone). The cursor marks what
 * delivery has handed to the store; the checkpoint follows it when asked, deleting the segments
 * wholly before it first. A second mark, `evaluated`, says up to where the alert engine has
 * evaluated the records and saved the state that came of them: segments are kept until both
 * have passed them (at most `maxEvaluationLagBytes` for the engine), so after a crash the records
 * past it are evaluated again (spool.ts evaluationBacklog).
 */

export interface Position { segment: number, offset: number }

/** Where one appended record lies. */
export interface RecordSpan { start: Position, end: Position }

/** One record read back, with when it was appended. */
export interface SpooledRecord extends RecordSpan {
  readings: StoredReading[]
  appendedAt: number
}

/** Negative when `a` comes before `b`. */
export function comparePositions (a: Position, b: Position): number {
  return a.segment - b.segment || a.offset - b.offset
}

/** Whole records read from the cursor (or a position past it) on, not yet consumed. */
export interface RecordRun {
  readings: StoredReading[]
  bytes: number
  start: Position
  end: Position
}

export interface Backlog {
  /** Undelivered (past the cursor), on disk. */
  readings: number
  bytes: number
  /** appendedAt of the oldest undelivered record; null when none. */
  oldestAppendedAt: number | null
}

export interface OpenSegmentsOptions {
  dir: string
  /** Roll to a new segment file past this size. */
  segmentBytes: number
  log: Logger
  /** For errors that repeat with one cause (a full disk). */
  throttled: LogThrottle
  /**
   * After records were made durable, after an append failed for lack of space, and after the
   * evaluation mark moved (so an idle delivery loop wakes to checkpoint it).
   */
  onChange: () => void
  /**
   * The least time from the end of one durable write to the start of the next, unless
   * `lingerEnoughAppends` appends wait (default 4 ms; 0: none). Each O_DSYNC write costs 100–160 µs
   * of CPU (the kernel's, and libuv's thread hand-off); at 1,000 msg/s the earlier rule (a 1 ms
   * wait) made ~440 writes a second, this one ~260. An append after a quiet spell that long starts
   * its write at once, so a lone message at a small site never waits; one that finds a write in
   * flight goes in the next, at once behind it, as always.
   */
  appendLingerMs?: number
  /**
   * Keep records until the alert engine has evaluated them (markEvaluated) as well as delivered
   * them (default false: the evaluation mark is not kept, and delivered segments go at once).
   */
  keepForEvaluation?: boolean
  /**
   * How far (bytes) the evaluation mark may fall behind the delivery cursor before delivered
   * segments are deleted anyway (default 64 MiB): an alert engine stalled for long (its database
   * down) drops readings from its queue well before that (alerts/engine).
   */
  maxEvaluationLagBytes?: number
}

export interface Segments {
  backlog (): Backlog
  /** Bytes queued for append, not yet durable. */
  pendingBytes (): number
  /** Set when a failed write could not be undone: every later append throws it. */
  broken (): Error | null
  /** Durable writes made by append() so far (O_DSYNC writes, or write + fdatasync). */
  appendSyncs (): number
  /**
   * Resolves once `record` (of `count` readings) is written durably, with where it lies.
   * `readings`, the record's readings as encoded: kept in memory once written, so the next read of
   * that record takes them instead of reading and decoding it back (RECENT_READINGS at most).
   */
  append (record: Buffer, count: number, appendedAt: number, readings?: readonly StoredReading[]): Promise<RecordSpan>
  /**
   * Records from `from` (default: the cursor) on, up to maxReadings (at least one record); null
   * when nothing follows. `from` must be the cursor or a run's end read since (delivery reads
   * ahead while earlier runs are still being written).
   */
  read (maxReadings: number, from?: Position): Promise<RecordRun | null>
  /** Whole records from `from` on, each apart, up to maxReadings (at least one record); null when nothing follows. */
  readRecords (maxReadings: number, from: Position): Promise<{ records: SpooledRecord[], bytes: number, end: Position } | null>
  /** Where the alert engine's evaluation mark is (checkpointed with the cursor). */
  evaluated (): Position
  /** While pinned (the evaluation backlog is being read) the mark is not moved up to the cursor by the lag bound. */
  pinEvaluation (pinned: boolean): void
  /** The alert engine has evaluated (and saved) everything before `pos`; a mark behind the current one is ignored. */
  markEvaluated (pos: Position): void
  /** Moves the cursor past `run` (delivered or dead-lettered); runs are consumed in the order read, with no gap. */
  consume (run: RecordRun): Promise<void>
  /** The cursor or the evaluation mark has moved since the checkpoint was last written. */
  checkpointBehind (): boolean
  /**
   * Deletes the segments wholly before the cursor and the evaluation mark, then records both as the checkpoint.
   * Throws when the checkpoint file cannot be written (the deletions stand).
   */
  checkpoint (): Promise<void>
  /**
   * Caught up with delivered bytes stuck in the active segment: rolls to a new segment so the
   * next checkpoint can delete it. True when it did.
   */
  reclaim (): Promise<boolean>
  /** Refuses further appends and waits for those queued. */
  stopAppends (): Promise<void>
  /** Closes the files; call after stopAppends and once nothing reads. */
  close (): Promise<void>
}

const segmentPattern = /^(\d{16})\.wal$/
const segmentName = (seq: number): string => `${String(seq).padStart(16, '0')}.wal`
const checkpointName = 'checkpoint.json'
const readChunkBytes = 4 * 1024 * 1024
/** A lingering write starts at once when this many appends wait. */
const lingerEnoughAppends = 16

interface Segment { seq: number, size: number }

interface PendingAppend {
  record: Buffer
  count: number
  appendedAt: number
  /** The record's readings as appended: kept after the write, for delivery to take instead of reading them back. */
  readings: readonly StoredReading[] | undefined
  resolve: (span: RecordSpan) => void
  reject: (err: Error) => void
}

export function ioCode (err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code
  return typeof code === 'string' ? code : 'I/O error'
}

export async function fsyncDir (dir: string): Promise<void> {
  const handle = await fs.open(dir, 'r')
  try {
    await handle.sync()
  } finally {
    await handle.close()
  }
}

// O_DSYNC: a write returns once it is durable. Where the platform lacks it, fdatasync follows each write.
const DSYNC: number | undefined = fs.constants.O_DSYNC
const openWriteFlags = DSYNC === undefined ? 'r+' : fs.constants.O_RDWR | DSYNC
const createWriteFlags = DSYNC === undefined ? 'w+' : fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_TRUNC | DSYNC

async function writeAll (handle: FileHandle, buf: Buffer, position: number): Promise<void> {
  let written = 0
  while (written < buf.length) {
    const { bytesWritten } = await handle.write(buf, written, buf.length - written, position + written)
    written += bytesWritten
  }
}

/** Readings kept in memory after their records' write (openSegments' `recent`), at most: ~10–20 MB. */
const RECENT_READINGS = 100_000

/** A record's readings kept after its write (openSegments' `recent`), with what its read would give. */
interface KeptRecord { readings: readonly StoredReading[], appendedAt: number, length: number }

async function readAt (handle: FileHandle, position: number, length: number): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(length)
  let read = 0
  while (read < length) {
    const { bytesRead } = await handle.read(buf, read, length - read, position + read)
    if (bytesRead === 0) break
    read += bytesRead
  }
  return buf.subarray(0, read)
}

function isPosition (p: Partial<Position> | undefined): p is Position {
  return p !== undefined && p !== null && Number.isSafeInteger(p.segment) && Number.isSafeInteger(p.offset)
}

async function readCheckpoint (dir: string): Promise<{ head: Position, evaluated: Position | null } | null> {
  let text: string
  try {
    text = await fs.readFile(path.join(dir, checkpointName), 'utf8')
  } catch (err) {
    if (ioCode(err) === 'ENOENT') return null
    throw err
  }
  // Written by rename of an fsync'd temp file, so it is whole or absent: garbage is corruption.
  const parsed = JSON.parse(text) as Partial<Position> & { evaluated?: Partial<Position> }
  const evaluated = parsed.evaluated
  if (!isPosition(parsed) || (evaluated !== undefined && !isPosition(evaluated))) {
    throw new Error(`spool checkpoint ${path.join(dir, checkpointName)} is invalid`)
  }
  // A checkpoint written before the evaluation mark existed: evaluation resumes at the cursor.
  return { head: { segment: parsed.segment, offset: parsed.offset }, evaluated: evaluated === undefined ? null : { segment: evaluated.segment, offset: evaluated.offset } }
}

interface Recovered { head: Position, evaluated: Position, segments: Segment[], backlog: Backlog }

/**
 * What the files say at open: the checkpoint, the segments from it on (delivered and evaluated
 * ones deleted, a torn tail of the newest cut off) and the undelivered backlog. Creates the
 * first segment of an empty spool.
 */
async function recover (dir: string, log: Logger, keepForEvaluation: boolean): Promise<Recovered> {
  await fs.rm(path.join(dir, `${checkpointName}.tmp`), { force: true })
  const names = await fs.readdir(dir)
  let seqs = names.map((n) => segmentPattern.exec(n)?.[1]).filter((s) => s !== undefined).map(Number).sort((a, b) => a - b)
  const saved = await readCheckpoint(dir)
  let head: Position = saved?.head ?? { segment: seqs[0] ?? 1, offset: 0 }
  let evaluated: Position = (keepForEvaluation ? saved?.evaluated : null) ?? head
  const keepFrom = Math.min(head.segment, evaluated.segment)

  // Segments wholly before both marks were delivered and evaluated; their deletion may not have happened.
  for (const seq of seqs.filter((s) => s < keepFrom)) await fs.rm(path.join(dir, segmentName(seq)), { force: true })
  seqs = seqs.filter((s) => s >= keepFrom)
  // Segments are deleted before the checkpoint moves past them (checkpoint()): a crash between
  // the two leaves a mark naming a deleted segment, and the oldest segment after it is where
  // that mark resumes.
  const resume = (p: Position): Position => {
    if (seqs.includes(p.segment)) return p
    const later = seqs.find((s) => s > p.segment)
    return { segment: later ?? p.segment + (p.offset === 0 ? 0 : 1), offset: 0 }
  }
  if (!seqs.includes(head.segment) && head.offset !== 0) log.info({ segment: head.segment }, 'checkpointed spool segment already deleted; resuming at the next one')
  head = resume(head)
  evaluated = resume(evaluated)

  const segments: Segment[] = []
  const backlog: Backlog = { readings: 0, bytes: 0, oldestAppendedAt: null }
  for (const [i, seq] of seqs.entries()) {
    const file = path.join(dir, segmentName(seq))
    const last = i === seqs.length - 1
    if (seq < head.segment && !last) {
      // Delivered, kept for the evaluation backlog only: read (and checked) when it is replayed.
      segments.push({ seq, size: (await fs.stat(file)).size })
      continue
    }
    const buf = await fs.readFile(file)
    let offset = seq === head.segment ? head.offset : 0
    if (offset > buf.length) throw new Error(`spool checkpoint points past the end of ${file}`)
    while (offset < buf.length) {
      const scan = scanRecord(buf, offset)
      if (scan.kind === 'record') {
        if (seq >= head.segment) {
          backlog.bytes += scan.length
          backlog.readings += scan.count
          backlog.oldestAppendedAt ??= scan.appendedAt
        }
        offset += scan.length
        continue
      }
      // A crash mid-append leaves a partial record at the end of the newest segment; appends
      // were never acknowledged for it, so dropping it loses nothing that was promised.
      if (!last) throw new Error(`spool segment ${file} is corrupt at byte ${offset} (${scan.kind === 'corrupt' ? scan.reason : 'truncated'}); it is not the newest segment, so this is not a torn write`)
      log.warn({ segment: segmentName(seq), offset, droppedBytes: buf.length - offset, reason: scan.kind === 'corrupt' ? scan.reason : 'incomplete record' }, 'spool: torn tail truncated')
      await fs.truncate(file, offset)
      const handle = await fs.open(file, 'r+')
      try {
        await handle.datasync()
      } finally {
        await handle.close()
      }
      break
    }
    segments.push({ seq, size: Math.min(offset, buf.length) })
  }
  if (segments.length === 0) {
    const handle = await fs.open(path.join(dir, segmentName(head.segment)), 'w+', 0o600)
    await handle.close()
    await fsyncDir(dir)
    segments.push({ seq: head.segment, size: 0 })
  }
  // A mark past a torn tail that was cut off (it cannot be: it follows durable records) stops at the end.
  const at = segments.find((s) => s.seq === evaluated.segment)
  if (at !== undefined && evaluated.offset > at.size) evaluated = { segment: at.seq, offset: at.size }
  return { head, evaluated, segments, backlog }
}

/** Opens (and recovers) the segment files in `dir`, which must exist. */
export async function openSegments (options: OpenSegmentsOptions): Promise<Segments> {
  const { dir, segmentBytes, log, throttled, onChange } = options
  const appendLingerMs = options.appendLingerMs ?? 4
  const maxEvaluationLagBytes = options.maxEvaluationLagBytes ?? 64 * 1024 * 1024
  const keepForEvaluation = options.keepForEvaluation === true
  const recovered = await recover(dir, log, keepForEvaluation)
  const segments = recovered.segments
  const backlog = recovered.backlog
  // The checkpoint on disk.
  let head = recovered.head
  let headEvaluated = recovered.evaluated
  // Delivered up to here; the checkpoint follows it when asked.
  let cursor: Position = head
  // Evaluated (state saved) up to here; checkpointed with the cursor.
  let evaluated: Position = headEvaluated
  let active = segments[segments.length - 1]!
  let writeHandle = await fs.open(path.join(dir, segmentName(active.seq)), openWriteFlags)
  // The opening, not the handle: two readers (delivery, the start-up evaluation replay) asking at
  // once share one open.
  const readHandles = new Map<number, Promise<FileHandle>>()
  // While the evaluation backlog is read at start, the mark is not moved up to the cursor (the
  // lag bound) under the reader's feet.
  let evaluationPinned = false
  let closing = false
  let broken: Error | null = null
  let queue: PendingAppend[] = []
  let pendingBytes = 0
  // Records written and not read since, by where they start: delivery usually reads a
  // record a few milliseconds after it was written, and taking its readings from here spares the
  // read, the checksum and the JSON decode (~4 % of the event loop at 8,500 msg/s). A record is
  // dropped from here when it is read, from here or from the file; past RECENT_READINGS (a
  // backlog: the store is down or slow) new records are not kept, and are read from the file.
  // By segment, then by offset in it.
  const recent = new Map<number, Map<number, KeptRecord>>()
  let recentReadings = 0
  const keepRecent = (segment: number, offset: number, kept: KeptRecord): void => {
    let inSegment = recent.get(segment)
    if (inSegment === undefined) recent.set(segment, inSegment = new Map())
    inSegment.set(offset, kept)
    recentReadings += kept.readings.length
  }
  const takeRecent = (segment: number, offset: number): KeptRecord | undefined => {
    const inSegment = recent.get(segment)
    const hit = inSegment?.get(offset)
    if (hit !== undefined) {
      inSegment!.delete(offset)
      if (inSegment!.size === 0) recent.delete(segment)
      recentReadings -= hit.readings.length
    }
    return hit
  }
  let writing: Promise<void> | null = null
  // When the last durable write ended (performance.now()): the next starts appendLingerMs later.
  let lastWriteEndedAt = Number.NEGATIVE_INFINITY
  // Ends a lingering write's wait early, once enough appends joined it; null while none lingers.
  let endLinger: (() => void) | null = null
  let appendSyncs = 0
  // An append failed with ENOSPC/EDQUOT: the active segment is rolled as soon as it is delivered.
  let outOfSpace = false
  // Delivered bytes worth a new segment when caught up (see reclaim).
  const reclaimBytes = Math.min(segmentBytes, 1024 * 1024)
  log.info({ dir, segments: segments.length, depthReadings: backlog.readings, depthBytes: backlog.bytes }, 'spool opened')

  // --- writing ----------------------------------------------------------------------------

  async function roll (): Promise<void> {
    const seq = active.seq + 1
    const file = path.join(dir, segmentName(seq))
    const handle = await fs.open(file, createWriteFlags, 0o600)
    try {
      // The new name must survive a crash before any record in it is acknowledged.
      await fsyncDir(dir)
    } catch (err) {
      await handle.close().catch(() => {})
      await fs.rm(file, { force: true }).catch(() => {})
      throw err
    }
    await writeHandle.close().catch((err: unknown) => log.warn({ code: ioCode(err) }, 'spool: closing a full segment failed'))
    writeHandle = handle
    active = { seq, size: 0 }
    segments.push(active)
  }

  async function writeBatch (batch: PendingAppend[]): Promise<RecordSpan[]> {
    if (active.size >= segmentBytes) await roll()
    const buf = Buffer.concat(batch.map((p) => p.record))
    const start = active.size
    try {
      await writeAll(writeHandle, buf, start)
      appendSyncs++
      if (DSYNC === undefined) await writeHandle.datasync()
    } catch (err) {
      // Cut the partial batch off so the segment stays a sequence of whole records; if even
      // that fails, refuse further appends (reopening truncates the torn tail).
      try {
        await writeHandle.truncate(start)
        await writeHandle.datasync()
      } catch (undoErr) {
        broken = new Error(`spool is unusable after a failed write (${ioCode(undoErr)}); reopen it`, { cause: undoErr })
        log.error({ code: ioCode(undoErr) }, 'spool: could not undo a failed write')
      }
      throw err
    }
    const spans: RecordSpan[] = []
    let offset = start
    for (const p of batch) {
      spans.push({ start: { segment: active.seq, offset }, end: { segment: active.seq, offset: offset + p.record.length } })
      if (p.readings !== undefined && recentReadings + p.readings.length <= RECENT_READINGS) {
        keepRecent(active.seq, offset, { readings: p.readings, appendedAt: p.appendedAt, length: p.record.length })
      }
      offset += p.record.length
    }
    active.size += buf.length
    backlog.bytes += buf.length
    backlog.readings += batch.reduce((n, p) => n + p.count, 0)
    backlog.oldestAppendedAt ??= batch[0]!.appendedAt
    onChange()
    return spans
  }

  /** Group commit: whatever queued while one durable write ran goes out in the next. */
  async function drainQueue (): Promise<void> {
    try {
      while (queue.length > 0) {
        const batch = queue
        queue = []
        const bytes = batch.reduce((n, p) => n + p.record.length, 0)
        try {
          if (broken !== null) throw broken
          const spans = await writeBatch(batch)
          for (const [i, p] of batch.entries()) p.resolve(spans[i]!)
        } catch (err) {
          const error = err instanceof Error ? err : new Error(String(err))
          const code = ioCode(err)
          throttled.log('error', `append:${code}`, { code, count: batch.length }, 'spool append failed')
          if (code === 'ENOSPC' || code === 'EDQUOT') {
            // Delivered bytes in the active segment may be what fills the disk: let delivery free them.
            outOfSpace = true
            onChange()
          }
          for (const p of batch) p.reject(error)
        } finally {
          pendingBytes -= bytes
          lastWriteEndedAt = performance.now()
        }
      }
    } finally {
      // Cleared synchronously with the loop's last empty-queue check (no await in between),
      // so an append queued after that check always starts a new drain.
      writing = null
    }
  }

  /** Resolves after `ms`, or as soon as endLinger is called. */
  function linger (ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(() => { endLinger = null; resolve() }, ms)
      endLinger = () => { clearTimeout(timer); endLinger = null; resolve() }
    })
  }

  async function append (record: Buffer, count: number, appendedAt: number, readings?: readonly StoredReading[]): Promise<RecordSpan> {
    if (closing) throw new Error('spool is closed')
    if (broken !== null) throw broken
    pendingBytes += record.length
    const done = new Promise<RecordSpan>((resolve, reject) => {
      queue.push({ record, count, appendedAt, readings, resolve, reject })
    })
    // Started on the next microtask (or after the linger) so `writing` is set before drainQueue
    // can clear it; stopAppends waits for it either way.
    if (writing === null) {
      // Writes at most one per appendLingerMs while they come few at a time (a small site's
      // rates); after a quiet spell at once. Past those rates a write is mostly in flight when an
      // append comes and the queue goes out right behind it; when one does wait here, 16 appends
      // come within a few milliseconds and end the wait.
      const wait = appendLingerMs > 0 ? lastWriteEndedAt + appendLingerMs - performance.now() : 0
      writing = wait > 0 ? linger(wait).then(drainQueue) : Promise.resolve().then(drainQueue)
    } else if (endLinger !== null && queue.length >= lingerEnoughAppends) {
      // Company came: no need to wait out the rest (a busy event loop may run the timer late).
      endLinger()
    }
    return await done
  }

  // --- reading ----------------------------------------------------------------------------

  async function readHandle (seq: number): Promise<FileHandle> {
    let opening = readHandles.get(seq)
    if (opening === undefined) {
      opening = fs.open(path.join(dir, segmentName(seq)), 'r')
      readHandles.set(seq, opening)
      // A failed open is not kept: the next read tries again.
      opening.catch(() => { if (readHandles.get(seq) === opening) readHandles.delete(seq) })
    }
    return await opening
  }

  async function closeReadHandle (seq: number): Promise<void> {
    const opening = readHandles.get(seq)
    readHandles.delete(seq)
    await opening?.then((handle) => handle.close()).catch(() => {})
  }

  function segmentAt (seq: number): { segment: Segment, next: Segment | undefined } | null {
    const i = segments.findIndex((s) => s.seq === seq)
    return i < 0 ? null : { segment: segments[i]!, next: segments[i + 1] }
  }

  async function read (maxReadings: number, from: Position = cursor): Promise<RecordRun | null> {
    const run = await readRecords(maxReadings, from)
    if (run === null) return null
    const { records } = run
    const readings = records.length === 1 ? records[0]!.readings : records.flatMap((r) => r.readings)
    // (No records but an end further on: the run crosses into the next segment.)
    return { readings, bytes: run.bytes, start: from, end: run.end }
  }

  async function readRecords (maxReadings: number, from: Position): Promise<{ records: SpooledRecord[], bytes: number, end: Position } | null> {
    const records: SpooledRecord[] = []
    let count = 0
    let bytes = 0
    let pos = { ...from }
    while (count < maxReadings) {
      const at = segmentAt(pos.segment)
      if (at === null) throw new Error(`spool segment ${segmentName(pos.segment)} is missing`)
      if (pos.offset >= at.segment.size) {
        if (at.next === undefined) break
        pos = { segment: at.next.seq, offset: 0 }
        continue
      }
      const kept = takeRecent(pos.segment, pos.offset)
      if (kept !== undefined) {
        const end = { segment: pos.segment, offset: pos.offset + kept.length }
        records.push({ readings: kept.readings as StoredReading[], appendedAt: kept.appendedAt, start: pos, end })
        count += kept.readings.length
        bytes += kept.length
        pos = end
        continue
      }
      const handle = await readHandle(pos.segment)
      let chunk = await readAt(handle, pos.offset, Math.min(at.segment.size - pos.offset, readChunkBytes))
      let offset = 0
      let progressed = false
      while (count < maxReadings) {
        let scan = scanRecord(chunk, offset)
        if (scan.kind === 'incomplete' && !progressed && chunk.length >= recordHeaderBytes) {
          // One record larger than the read chunk: read exactly that record.
          chunk = await readAt(handle, pos.offset, declaredRecordLength(chunk))
          scan = scanRecord(chunk, 0)
        }
        if (scan.kind === 'incomplete') break
        if (scan.kind === 'corrupt') throw new Error(`spool segment ${segmentName(pos.segment)} is corrupt at byte ${pos.offset + offset} (${scan.reason})`)
        const readings = decodeRecordBody(scan.body)
        const start = pos.offset + offset
        if (recent.size > 0) takeRecent(pos.segment, start)
        records.push({ readings, appendedAt: scan.appendedAt, start: { segment: pos.segment, offset: start }, end: { segment: pos.segment, offset: start + scan.length } })
        count += readings.length
        bytes += scan.length
        offset += scan.length
        progressed = true
      }
      pos = { segment: pos.segment, offset: pos.offset + offset }
      if (!progressed) throw new Error(`spool segment ${segmentName(pos.segment)} ends inside a record at byte ${pos.offset}`)
    }
    if (bytes === 0 && pos.segment === from.segment && pos.offset === from.offset) return null
    return { records, bytes, end: pos }
  }

  /** appendedAt of the first undelivered record, for stats. */
  async function appendedAtOf (pos: Position): Promise<number | null> {
    let at = segmentAt(pos.segment)
    let offset = pos.offset
    while (at !== null && offset >= at.segment.size) {
      if (at.next === undefined) return null
      offset = 0
      at = segmentAt(at.next.seq)
    }
    if (at === null) return null
    const kept = recent.get(at.segment.seq)?.get(offset)
    if (kept !== undefined) return kept.appendedAt
    const handle = await readHandle(at.segment.seq)
    return appendedAtOfPrefix(await readAt(handle, offset, recordPrefixBytes))
  }

  async function consume (run: RecordRun): Promise<void> {
    // The checkpoint follows the cursor: it may only ever pass a contiguous delivered prefix.
    if (run.start.segment !== cursor.segment || run.start.offset !== cursor.offset) {
      throw new Error(`spool: a run starting at ${segmentName(run.start.segment)}:${run.start.offset} consumed with the cursor at ${segmentName(cursor.segment)}:${cursor.offset}`)
    }
    cursor = run.end
    backlog.bytes -= run.bytes
    backlog.readings -= run.readings.length
    backlog.oldestAppendedAt = backlog.bytes === 0 ? null : await appendedAtOf(cursor).catch(() => backlog.oldestAppendedAt)
  }

  // --- checkpoint and freeing space ---------------------------------------------------------

  /**
   * Deleting first means a full disk never keeps delivered data (the checkpoint's temp file
   * needs space; deleting needs none). A crash between the two leaves a checkpoint naming a
   * deleted segment: recover() then starts at the oldest segment left, at offset 0, which
   * re-delivers at most what followed the old checkpoint there (harmless: writes are
   * idempotent). Oldest first, stopping at the first failure, so the segments left are always a
   * contiguous run.
   */
  async function checkpoint (): Promise<void> {
    const pos = cursor
    const ev = boundedEvaluated()
    const keepFrom = Math.min(pos.segment, startOfNext(ev).segment)
    for (const s of segments.filter((s) => s.seq < keepFrom)) {
      await closeReadHandle(s.seq)
      try {
        await fs.rm(path.join(dir, segmentName(s.seq)), { force: true })
      } catch (err) {
        throttled.log('warn', `rm:${ioCode(err)}`, { code: ioCode(err), segment: segmentName(s.seq) }, 'spool: could not delete a delivered and evaluated segment; retried at the next checkpoint')
        break
      }
      segments.splice(segments.indexOf(s), 1)
    }
    // write temp + fsync + rename + fsync dir: the checkpoint is the old one or the new one.
    const tmp = path.join(dir, `${checkpointName}.tmp`)
    const handle = await fs.open(tmp, 'w', 0o600)
    try {
      await handle.writeFile(JSON.stringify(keepForEvaluation ? { segment: pos.segment, offset: pos.offset, evaluated: ev } : pos))
      await handle.sync()
    } finally {
      await handle.close()
    }
    await fs.rename(tmp, path.join(dir, checkpointName))
    await fsyncDir(dir)
    head = pos
    headEvaluated = ev
  }

  /** A position at the end of a segment that has a successor is that successor's start. */
  function startOfNext (p: Position): Position {
    const at = segmentAt(p.segment)
    return at !== null && at.next !== undefined && p.offset >= at.segment.size ? { segment: at.next.seq, offset: 0 } : p
  }

  /** The evaluation mark, moved up to the cursor when it lags it by more than maxEvaluationLagBytes. */
  function boundedEvaluated (): Position {
    if (!keepForEvaluation) evaluated = cursor
    if (evaluationPinned || comparePositions(evaluated, cursor) >= 0) return evaluated
    let lag = cursor.offset - evaluated.offset
    for (const s of segments) if (s.seq >= evaluated.segment && s.seq < cursor.segment) lag += s.size
    if (lag <= maxEvaluationLagBytes) return evaluated
    throttled.log('warn', 'evaluation-lag', { lagBytes: lag, maxEvaluationLagBytes }, 'spool: alert evaluation is far behind delivery; delivered segments are deleted without waiting for it')
    evaluated = cursor
    return evaluated
  }

  /**
   * When everything is delivered, the active segment holds only delivered bytes, which no
   * checkpoint can free while appends still go there: start a new segment so the old one can be
   * deleted. Done once it holds reclaimBytes, or as soon as an append failed for lack of space.
   * Runs only while no append is being written, holding `writing` so none starts meanwhile.
   */
  async function reclaim (): Promise<boolean> {
    if (cursor.segment !== active.seq || cursor.offset !== active.size || active.size === 0) return false
    if (active.size < reclaimBytes && !outOfSpace) return false
    if (writing !== null || queue.length > 0 || closing) return false
    let release!: () => void
    writing = new Promise<void>((resolve) => { release = resolve })
    try {
      await roll()
      outOfSpace = false
      cursor = { segment: active.seq, offset: 0 }
      return true
    } catch (err) {
      throttled.log('warn', `rotate:${ioCode(err)}`, { code: ioCode(err) }, 'spool: could not start a new segment to free the delivered one')
      return false
    } finally {
      writing = null
      release()
      if (queue.length > 0) writing = Promise.resolve().then(drainQueue)
    }
  }

  return {
    backlog: () => ({ ...backlog }),
    pendingBytes: () => pendingBytes,
    broken: () => broken,
    appendSyncs: () => appendSyncs,
    append,
    read,
    readRecords,
    consume,
    evaluated: () => evaluated,
    pinEvaluation (pinned: boolean): void {
      evaluationPinned = pinned
    },
    markEvaluated (pos: Position): void {
      if (!keepForEvaluation || comparePositions(pos, evaluated) <= 0) return
      evaluated = pos
      onChange()
    },
    checkpointBehind: () => cursor !== head || (keepForEvaluation && evaluated !== headEvaluated),
    checkpoint,
    reclaim,
    async stopAppends () {
      closing = true
      endLinger?.()
      while (writing !== null) await writing
    },
    async close () {
      for (const seq of [...readHandles.keys()]) await closeReadHandle(seq)
      await writeHandle.close()
    }
  }
}
