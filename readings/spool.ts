import { EventEmitter } from 'node:events'
import type { FileHandle } from 'node:fs/promises'
import fs from 'node:fs/promises'
import path from 'node:path'
import zlib from 'node:zlib'
import type { Logger } from 'pino'
import { createLogThrottle } from '../observability/log-throttle.ts'
import type { ReadingStore } from './reading-store.ts'
import type { StoredReading } from './reading.ts'

/*
 * A write-ahead log in front of InfluxDB. append() resolves once the readings are fsync'd, so
 * the broker may PUBACK; a delivery loop copies them to the store in order and advances a
 * durable checkpoint only after the store answered 2xx. Nothing is dropped: undelivered data
 * stays on disk across store outages and restarts (re-delivery is harmless, writes are
 * idempotent). The one exception to "retry until delivered" is a reading the store rejects as
 * data it will never accept (HTTP 400/422): retrying it would block every reading behind it
 * forever, so it is isolated by bisecting its batch and moved to a dead-letter file.
 *
 * Layout of `dir`:
 *   0000000000000001.wal …  segments, appended in order, rotated at `segmentBytes`
 *   checkpoint.json          {"segment": n, "offset": bytes}: everything before it is delivered
 *   dead-letter.ndjson       {"deadAt", "reason", "reading"} per line: readings the store refused
 *
 * Record: u32le bodyLength | u32le crc32(body) | body
 * body:   u8 version (1) | u32le readingCount | f64le appendedAtMs | JSON [[patientId, deviceId, metric, value, unit, ts, seq], …]
 */

export class SpoolFullError extends Error {
  constructor (readonly depthBytes: number, readonly maxBytes: number) {
    super(`spool is full (${depthBytes} of ${maxBytes} bytes undelivered)`)
    this.name = 'SpoolFullError'
  }
}

export interface OpenSpoolOptions {
  dir: string
  /** Cap on undelivered bytes on disk; an append beyond it throws SpoolFullError. */
  maxBytes: number
  log: Logger
  /** Rotate to a new segment file past this size. */
  segmentBytes?: number
  /**
   * How long close() waits for an in-flight store write (default 2000 ms). Past it the write is
   * abandoned: its readings stay spooled and are replayed at the next start.
   */
  closeTimeoutMs?: number
}

export interface DeliveryOptions {
  /** Readings per store.write (records are never split across batches unless one is larger). */
  maxBatchReadings?: number
  minBackoffMs?: number
  maxBackoffMs?: number
  /**
   * While fewer than `lingerReadings` are waiting, the first of them waits up to this long
   * (ms, default 20) for company, so a steady stream goes out in few large writes instead of
   * many tiny ones: each write costs an HTTP request whatever its size. 0: no wait.
   */
  lingerMs?: number
  /** Backlog at which delivery starts at once, without lingering (default 1000). */
  lingerReadings?: number
  /**
   * The checkpoint (three fsyncs and a rename) moves at most this often (ms, default 250)
   * while delivery keeps up; a crash re-delivers at most this much, which is harmless
   * (writes are idempotent). 0: after every write.
   */
  checkpointIntervalMs?: number
}

export interface SpoolStats {
  depthReadings: number
  depthBytes: number
  /** Age of the oldest undelivered record; 0 when empty. */
  oldestUnwrittenAgeMs: number
  /** fdatasync calls made by append() so far (group commit makes this far fewer than appends). */
  appendSyncs: number
  /** Readings moved to the dead-letter file since the spool was opened. */
  deadLettered: number
  /**
   * Delivery is held up by an error retrying cannot cure but fixing the store can (auth, a
   * missing database, a series limit): readings are kept and retried with backoff meanwhile.
   */
  deliveryBlocked: boolean
}

export interface SpoolEvents {
  /** A batch reached the store; latencyMs is the store.write time for the batch. */
  delivered: [count: number, latencyMs: number]
  /** A delivery attempt failed; it will be retried. */
  deliveryFailed: [err: Error]
  /** Readings the store will never accept were moved to the dead-letter file (reason: the store's error message). */
  deadLettered: [count: number, reason: string]
}

export interface Spool extends EventEmitter<SpoolEvents> {
  append (readings: StoredReading[]): Promise<void>
  startDelivery (store: ReadingStore, options?: DeliveryOptions): void
  stats (): SpoolStats
  /**
   * Appends the readings of the dead-letter file to the spool again (after the store was fixed:
   * a longer retention policy …) and removes the file. Idempotent: rewriting a point is
   * harmless, and a crash mid-way leaves `dead-letter.ndjson.replaying`, replayed by the next call.
   * Whatever the store still refuses is dead-lettered again.
   */
  replayDeadLetters (): Promise<{ replayed: number }>
  /**
   * Waits for pending appends and (at most closeTimeoutMs) for the in-flight store write, then
   * stops. Undelivered data stays on disk; nothing touches the files once this resolves.
   */
  close (): Promise<void>
}

// --- record encoding (pure) -------------------------------------------------------------

const recordVersion = 1
const headerBytes = 8
const bodyFixedBytes = 13
/** No legitimate record comes near this; a larger length prefix is garbage. */
const maxRecordBytes = 256 * 1024 * 1024

const crcTable = (() => {
  const table = new Uint32Array(256)
  for (let n = 0; n < 256; n++) {
    let c = n
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
    table[n] = c >>> 0
  }
  return table
})()

/** CRC-32 (IEEE 802.3, as zlib); fallback for Node 20 before 20.15, which lacks zlib.crc32. */
export function crc32Fallback (data: Uint8Array): number {
  let crc = 0xffffffff
  for (let i = 0; i < data.length; i++) crc = crcTable[(crc ^ data[i]!) & 0xff]! ^ (crc >>> 8)
  return (crc ^ 0xffffffff) >>> 0
}

export const crc32: (data: Uint8Array) => number = typeof zlib.crc32 === 'function' ? (data) => zlib.crc32(data) : crc32Fallback

type ReadingTuple = [string, string, string, number, string, number, number | null]

export function encodeRecord (readings: readonly StoredReading[], appendedAt: number): Buffer {
  const tuples: ReadingTuple[] = readings.map((r) => [r.patientId, r.deviceId, r.metric, r.value, r.unit, r.ts, r.seq])
  const json = Buffer.from(JSON.stringify(tuples), 'utf8')
  const record = Buffer.allocUnsafe(headerBytes + bodyFixedBytes + json.length)
  const bodyLength = bodyFixedBytes + json.length
  if (bodyLength > maxRecordBytes) throw new RangeError(`spool record too large (${bodyLength} bytes)`)
  record.writeUInt32LE(bodyLength, 0)
  record.writeUInt8(recordVersion, headerBytes)
  record.writeUInt32LE(readings.length, headerBytes + 1)
  record.writeDoubleLE(appendedAt, headerBytes + 5)
  json.copy(record, headerBytes + bodyFixedBytes)
  record.writeUInt32LE(crc32(record.subarray(headerBytes)), 4)
  return record
}

export type RecordScan =
  | { kind: 'record', length: number, count: number, appendedAt: number, body: Buffer }
  | { kind: 'incomplete' }
  | { kind: 'corrupt', reason: string }

/**
 * Reads the record at `offset` of `buf`. `incomplete` means the buffer ends inside it (a torn
 * tail when the buffer is the whole file); `corrupt` means the bytes are not a record.
 */
export function scanRecord (buf: Buffer, offset: number): RecordScan {
  if (buf.length - offset < headerBytes) return { kind: 'incomplete' }
  const bodyLength = buf.readUInt32LE(offset)
  if (bodyLength < bodyFixedBytes || bodyLength > maxRecordBytes) return { kind: 'corrupt', reason: 'bad length' }
  if (buf.length - offset - headerBytes < bodyLength) return { kind: 'incomplete' }
  const body = buf.subarray(offset + headerBytes, offset + headerBytes + bodyLength)
  if (crc32(body) !== buf.readUInt32LE(offset + 4)) return { kind: 'corrupt', reason: 'checksum mismatch' }
  if (body.readUInt8(0) !== recordVersion) return { kind: 'corrupt', reason: 'unknown record version' }
  return { kind: 'record', length: headerBytes + bodyLength, count: body.readUInt32LE(1), appendedAt: body.readDoubleLE(5), body }
}

export function decodeRecordBody (body: Buffer): StoredReading[] {
  const tuples = JSON.parse(body.subarray(bodyFixedBytes).toString('utf8')) as ReadingTuple[]
  return tuples.map(([patientId, deviceId, metric, value, unit, ts, seq]) => ({ patientId, deviceId, metric, value, unit, ts, seq }))
}

// --- files ------------------------------------------------------------------------------

const segmentPattern = /^(\d{16})\.wal$/
const segmentName = (seq: number): string => `${String(seq).padStart(16, '0')}.wal`
const checkpointName = 'checkpoint.json'
export const deadLetterName = 'dead-letter.ndjson'

interface Position { segment: number, offset: number }
interface Segment { seq: number, size: number }

async function fsyncDir (dir: string): Promise<void> {
  const handle = await fs.open(dir, 'r')
  try {
    await handle.sync()
  } finally {
    await handle.close()
  }
}

async function writeAll (handle: FileHandle, buf: Buffer, position: number): Promise<void> {
  let written = 0
  while (written < buf.length) {
    const { bytesWritten } = await handle.write(buf, written, buf.length - written, position + written)
    written += bytesWritten
  }
}

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

function ioCode (err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code
  return typeof code === 'string' ? code : 'I/O error'
}

async function readCheckpoint (dir: string): Promise<Position | null> {
  let text: string
  try {
    text = await fs.readFile(path.join(dir, checkpointName), 'utf8')
  } catch (err) {
    if (ioCode(err) === 'ENOENT') return null
    throw err
  }
  // Written by rename of an fsync'd temp file, so it is whole or absent: garbage is corruption.
  const parsed = JSON.parse(text) as Partial<Position>
  if (!Number.isSafeInteger(parsed.segment) || !Number.isSafeInteger(parsed.offset)) {
    throw new Error(`spool checkpoint ${path.join(dir, checkpointName)} is invalid`)
  }
  return { segment: parsed.segment!, offset: parsed.offset! }
}

// --- the spool --------------------------------------------------------------------------

interface PendingAppend {
  record: Buffer
  count: number
  appendedAt: number
  resolve: () => void
  reject: (err: Error) => void
}

interface DeadReading { reading: StoredReading, reason: string }

interface RecordRun {
  readings: StoredReading[]
  bytes: number
  end: Position
}

interface Batch extends RecordRun {
  /** readings[0, done) were delivered or set aside as dead; kept across retries so neither repeats. */
  done: number
  /** Set aside, not yet in the dead-letter file: it must be fsync'd there before the checkpoint passes them. */
  dead: DeadReading[]
  delivered: number
  latencyMs: number
}

/**
 * Data the store will never accept as it stands: the store says so (`rejectsData`, see
 * readings/influx-store.ts: unparsable line, field type conflict, beyond the retention policy).
 * Deliberately narrow: a 400 is not proof the data is bad — series limits, auth, a missing
 * database, 5xx and network errors are cured by fixing the store, so those keep every reading
 * and retry with backoff.
 */
function isPoison (err: unknown): boolean {
  return (err as { rejectsData?: unknown } | null)?.rejectsData === true
}

/** close() stopped waiting for the store write this rejects. */
class WriteAbandoned extends Error {}

const readChunkBytes = 4 * 1024 * 1024

export async function openSpool (options: OpenSpoolOptions): Promise<Spool> {
  const dir = path.resolve(options.dir)
  const log = options.log.child({ component: 'spool' })
  const segmentBytes = options.segmentBytes ?? 16 * 1024 * 1024
  const closeTimeoutMs = options.closeTimeoutMs ?? 2000
  // Readings are PHI: only Vigil's user may read them (docs/security.md).
  await fs.mkdir(dir, { recursive: true, mode: 0o700 })
  await fs.rm(path.join(dir, `${checkpointName}.tmp`), { force: true })

  const names = await fs.readdir(dir)
  let seqs = names.map((n) => segmentPattern.exec(n)?.[1]).filter((s) => s !== undefined).map(Number).sort((a, b) => a - b)
  let head: Position = (await readCheckpoint(dir)) ?? { segment: seqs[0] ?? 1, offset: 0 }

  // Segments wholly before the checkpoint were delivered; their deletion may not have happened.
  for (const seq of seqs.filter((s) => s < head.segment)) await fs.rm(path.join(dir, segmentName(seq)), { force: true })
  seqs = seqs.filter((s) => s >= head.segment)
  if (seqs[0] !== head.segment) {
    // Delivered segments are deleted before the checkpoint moves past them (commitCheckpoint):
    // a crash between the two leaves this, and the oldest segment left is where delivery resumes.
    if (head.offset !== 0) log.info({ segment: head.segment }, 'checkpointed spool segment already deleted; resuming at the next one')
    head = { segment: seqs[0] ?? head.segment + (head.offset === 0 ? 0 : 1), offset: 0 }
  }

  const segments: Segment[] = []
  let depthBytes = 0
  let depthReadings = 0
  let oldestAppendedAt: number | null = null
  for (const [i, seq] of seqs.entries()) {
    const file = path.join(dir, segmentName(seq))
    const buf = await fs.readFile(file)
    const last = i === seqs.length - 1
    let offset = seq === head.segment ? head.offset : 0
    if (offset > buf.length) throw new Error(`spool checkpoint points past the end of ${file}`)
    while (offset < buf.length) {
      const scan = scanRecord(buf, offset)
      if (scan.kind === 'record') {
        depthBytes += scan.length
        depthReadings += scan.count
        oldestAppendedAt ??= scan.appendedAt
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
  let active = segments[segments.length - 1]!
  let writeHandle = await fs.open(path.join(dir, segmentName(active.seq)), 'r+')
  log.info({ dir, segments: segments.length, depthReadings, depthBytes }, 'spool opened')

  const emitter = new EventEmitter<SpoolEvents>()
  let closed = false
  let broken: Error | null = null
  let queue: PendingAppend[] = []
  let pendingBytes = 0
  let writing: Promise<void> | null = null
  let appendSyncs = 0
  let generation = 0
  let wakeDelivery: (() => void) | null = null
  let delivery: Promise<void> | null = null
  let stopping = false
  let stopBackoff: (() => void) | null = null
  let abandoned = false
  let abandonWrite: (() => void) | null = null
  let closing: Promise<void> | null = null
  let deadLettered = 0
  let deadLetterDirSynced = false
  let deliveryBlocked = false
  // Delivered up to here; the checkpoint (head) follows it at checkpointIntervalMs.
  let cursor: Position = head
  let lastCheckpointAt = 0
  // An append failed with ENOSPC/EDQUOT: the active segment is rotated as soon as it is delivered.
  let outOfSpace = false
  // Delivered bytes worth a new segment when caught up (see reclaimActiveSegment).
  const reclaimBytes = Math.min(segmentBytes, 1024 * 1024)
  // Errors that repeat for one cause (a full disk, a store refusing every write): a line per interval.
  const throttled = createLogThrottle(log)

  function signalDelivery (): void {
    generation++
    const wake = wakeDelivery
    wakeDelivery = null
    wake?.()
  }

  async function rotate (): Promise<void> {
    const seq = active.seq + 1
    const file = path.join(dir, segmentName(seq))
    const handle = await fs.open(file, 'w+', 0o600)
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

  async function writeBatch (batch: PendingAppend[]): Promise<void> {
    if (active.size >= segmentBytes) await rotate()
    const buf = Buffer.concat(batch.map((p) => p.record))
    const start = active.size
    try {
      await writeAll(writeHandle, buf, start)
      appendSyncs++
      await writeHandle.datasync()
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
    active.size += buf.length
    depthBytes += buf.length
    depthReadings += batch.reduce((n, p) => n + p.count, 0)
    oldestAppendedAt ??= batch[0]!.appendedAt
    signalDelivery()
  }

  /** Group commit: whatever queued while one write+fdatasync ran goes out in the next. */
  async function drainQueue (): Promise<void> {
    try {
      while (queue.length > 0) {
        const batch = queue
        queue = []
        const bytes = batch.reduce((n, p) => n + p.record.length, 0)
        try {
          if (broken !== null) throw broken
          await writeBatch(batch)
          for (const p of batch) p.resolve()
        } catch (err) {
          const error = err instanceof Error ? err : new Error(String(err))
          const code = ioCode(err)
          throttled.log('error', `append:${code}`, { code, count: batch.length }, 'spool append failed')
          if (code === 'ENOSPC' || code === 'EDQUOT') {
            // Delivered bytes in the active segment may be what fills the disk: let delivery free them.
            outOfSpace = true
            signalDelivery()
          }
          for (const p of batch) p.reject(error)
        } finally {
          pendingBytes -= bytes
        }
      }
    } finally {
      // Cleared synchronously with the loop's last empty-queue check (no await in between),
      // so an append queued after that check always starts a new drain.
      writing = null
    }
  }

  async function append (readings: StoredReading[]): Promise<void> {
    if (closed) throw new Error('spool is closed')
    if (broken !== null) throw broken
    if (readings.length === 0) return
    const appendedAt = Date.now()
    const record = encodeRecord(readings, appendedAt)
    if (depthBytes + pendingBytes + record.length > options.maxBytes) throw new SpoolFullError(depthBytes + pendingBytes, options.maxBytes)
    pendingBytes += record.length
    const done = new Promise<void>((resolve, reject) => {
      queue.push({ record, count: readings.length, appendedAt, resolve, reject })
    })
    // Started on the next microtask so `writing` is set before drainQueue can clear it.
    writing ??= Promise.resolve().then(drainQueue)
    await done
  }

  // --- delivery -------------------------------------------------------------------------

  const readHandles = new Map<number, FileHandle>()

  async function readHandle (seq: number): Promise<FileHandle> {
    let handle = readHandles.get(seq)
    if (handle === undefined) {
      handle = await fs.open(path.join(dir, segmentName(seq)), 'r')
      readHandles.set(seq, handle)
    }
    return handle
  }

  async function closeReadHandle (seq: number): Promise<void> {
    const handle = readHandles.get(seq)
    readHandles.delete(seq)
    await handle?.close().catch(() => {})
  }

  function segmentAt (seq: number): { segment: Segment, next: Segment | undefined } | null {
    const i = segments.findIndex((s) => s.seq === seq)
    return i < 0 ? null : { segment: segments[i]!, next: segments[i + 1] }
  }

  /** Undelivered records from `from` up to maxReadings (at least one record), or null when none. */
  async function readBatch (from: Position, maxReadings: number): Promise<RecordRun | null> {
    const readings: StoredReading[] = []
    let bytes = 0
    let pos = { ...from }
    while (readings.length < maxReadings) {
      const at = segmentAt(pos.segment)
      if (at === null) throw new Error(`spool segment ${segmentName(pos.segment)} is missing`)
      if (pos.offset >= at.segment.size) {
        if (at.next === undefined) break
        pos = { segment: at.next.seq, offset: 0 }
        continue
      }
      const handle = await readHandle(pos.segment)
      let chunk = await readAt(handle, pos.offset, Math.min(at.segment.size - pos.offset, readChunkBytes))
      let offset = 0
      let progressed = false
      while (readings.length < maxReadings) {
        let scan = scanRecord(chunk, offset)
        if (scan.kind === 'incomplete' && !progressed && chunk.length >= headerBytes) {
          // One record larger than the read chunk: read exactly that record.
          chunk = await readAt(handle, pos.offset, headerBytes + chunk.readUInt32LE(0))
          scan = scanRecord(chunk, 0)
        }
        if (scan.kind === 'incomplete') break
        if (scan.kind === 'corrupt') throw new Error(`spool segment ${segmentName(pos.segment)} is corrupt at byte ${pos.offset + offset} (${scan.reason})`)
        readings.push(...decodeRecordBody(scan.body))
        bytes += scan.length
        offset += scan.length
        progressed = true
      }
      pos = { segment: pos.segment, offset: pos.offset + offset }
      if (!progressed) throw new Error(`spool segment ${segmentName(pos.segment)} ends inside a record at byte ${pos.offset}`)
    }
    if (bytes === 0 && pos.segment === from.segment && pos.offset === from.offset) return null
    return { readings, bytes, end: pos }
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
    const handle = await readHandle(at.segment.seq)
    const header = await readAt(handle, offset, headerBytes + bodyFixedBytes)
    return header.length === headerBytes + bodyFixedBytes ? header.readDoubleLE(headerBytes + 5) : null
  }

  /**
   * Deletes the segments wholly before `pos`, then records `pos`. Deleting first means a full
   * disk never keeps delivered data (the checkpoint's temp file needs space; deleting needs
   * none). A crash between the two leaves a checkpoint naming a deleted segment: openSpool then
   * starts at the oldest segment left, at offset 0, which re-delivers at most what followed the
   * old checkpoint there (harmless: writes are idempotent). Oldest first, stopping at the first
   * failure, so the segments left are always a contiguous run.
   */
  async function commitCheckpoint (pos: Position): Promise<void> {
    for (const s of segments.filter((s) => s.seq < pos.segment)) {
      await closeReadHandle(s.seq)
      try {
        await fs.rm(path.join(dir, segmentName(s.seq)), { force: true })
      } catch (err) {
        throttled.log('warn', `rm:${ioCode(err)}`, { code: ioCode(err), segment: segmentName(s.seq) }, 'spool: could not delete a delivered segment; retried at the next checkpoint')
        break
      }
      segments.splice(segments.indexOf(s), 1)
    }
    // write temp + fsync + rename + fsync dir: the checkpoint is the old one or the new one.
    const tmp = path.join(dir, `${checkpointName}.tmp`)
    const handle = await fs.open(tmp, 'w', 0o600)
    try {
      await handle.writeFile(JSON.stringify(pos))
      await handle.sync()
    } finally {
      await handle.close()
    }
    await fs.rename(tmp, path.join(dir, checkpointName))
    await fsyncDir(dir)
    head = pos
  }

  /**
   * When everything is delivered, the active segment holds only delivered bytes, which no
   * checkpoint can free while appends still go there: start a new segment so the old one can be
   * deleted. Done once it holds reclaimBytes, or as soon as an append failed for lack of space.
   * Runs only while no append is being written, holding `writing` so none starts meanwhile.
   */
  async function reclaimActiveSegment (): Promise<boolean> {
    if (cursor.segment !== active.seq || cursor.offset !== active.size || active.size === 0) return false
    if (active.size < reclaimBytes && !outOfSpace) return false
    if (writing !== null || queue.length > 0 || closed) return false
    let release!: () => void
    writing = new Promise<void>((resolve) => { release = resolve })
    try {
      await rotate()
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

  /** store.write that close() can stop waiting for (the write itself cannot be cancelled). */
  async function storeWrite (store: ReadingStore, readings: StoredReading[]): Promise<void> {
    if (abandoned) throw new WriteAbandoned()
    const write = Promise.resolve().then(async () => { await store.write(readings) })
    // Once abandoned nobody awaits it; a late rejection must not become an unhandled one.
    write.catch(() => {})
    try {
      await Promise.race([write, new Promise<never>((_resolve, reject) => { abandonWrite = () => reject(new WriteAbandoned()) })])
    } finally {
      abandonWrite = null
    }
  }

  /**
   * Writes batch.readings[batch.done …] in slices of maxBatch; false when stopped first. A poison
   * failure replaces its slice by its two halves, so whatever the store accepts is delivered and
   * each reading it never will is isolated and set aside. Any other failure throws (retried).
   */
  async function deliverBatch (store: ReadingStore, batch: Batch, maxBatch: number): Promise<boolean> {
    const ranges: Array<[number, number]> = []
    for (let i = batch.done; i < batch.readings.length; i += maxBatch) ranges.push([i, Math.min(i + maxBatch, batch.readings.length)])
    for (let range = ranges.shift(); range !== undefined; range = ranges.shift()) {
      if (stopping) return false
      const [from, to] = range
      const started = performance.now()
      try {
        await storeWrite(store, batch.readings.slice(from, to))
      } catch (err) {
        if (!isPoison(err)) throw err
        if (to - from > 1) {
          const mid = from + Math.floor((to - from) / 2)
          ranges.unshift([from, mid], [mid, to])
        } else {
          batch.dead.push({ reading: batch.readings[from]!, reason: err instanceof Error ? err.message : String(err) })
          batch.done = to
        }
        continue
      }
      batch.latencyMs += performance.now() - started
      batch.delivered += to - from
      batch.done = to
    }
    return true
  }

  /** Appends + fdatasyncs the set-aside readings; only then may the checkpoint move past them. */
  async function writeDeadLetters (dead: readonly DeadReading[]): Promise<void> {
    const file = path.join(dir, deadLetterName)
    const deadAt = new Date().toISOString()
    const text = dead.map((d) => `${JSON.stringify({ deadAt, reason: d.reason, reading: d.reading })}\n`).join('')
    const handle = await fs.open(file, 'a', 0o600)
    try {
      // The file's name must survive a crash too, once per process is enough.
      if (!deadLetterDirSynced) {
        await fsyncDir(dir)
        deadLetterDirSynced = true
      }
      const size = (await handle.stat()).size
      try {
        await handle.appendFile(text)
        await handle.datasync()
      } catch (err) {
        // Cut a partial line so the file stays one JSON object per line; the retry rewrites it.
        await handle.truncate(size).catch(() => {})
        throw err
      }
    } finally {
      await handle.close()
    }
    deadLettered += dead.length
    const byReason = new Map<string, number>()
    for (const { reading, reason } of dead) {
      // Values and the patient id stay out of logs (PHI); the file holds the whole reading.
      log.error({ deviceId: reading.deviceId, metric: reading.metric, ts: reading.ts, reason, file: deadLetterName },
        'spool: the store permanently rejected a reading; moved to the dead-letter file')
      byReason.set(reason, (byReason.get(reason) ?? 0) + 1)
    }
    for (const [reason, count] of byReason) safeEmit('deadLettered', count, reason)
  }

  /** Resolves after `ms`, or at once when delivery stops; leaves no timer behind. */
  async function pause (ms: number, wakeOnAppend: boolean): Promise<void> {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms)
      function done (): void {
        clearTimeout(timer)
        stopBackoff = null
        if (wakeDelivery === done) wakeDelivery = null
        resolve()
      }
      stopBackoff = done
      if (wakeOnAppend) wakeDelivery = done
    })
  }

  /**
   * A failed checkpoint (ENOSPC for its temp file) does not stop delivery: it only means a
   * restart re-delivers more. It is tried again at the next interval.
   */
  async function checkpointIfDue (force: boolean): Promise<void> {
    if (cursor === head) return
    if (!force && performance.now() - lastCheckpointAt < checkpointInterval) return
    lastCheckpointAt = performance.now()
    try {
      await commitCheckpoint(cursor)
    } catch (err) {
      throttled.log('warn', `checkpoint:${ioCode(err)}`, { code: ioCode(err) }, 'spool: checkpoint failed; delivery goes on and it is retried')
    }
  }

  let checkpointInterval = 250

  async function runDelivery (store: ReadingStore, deliveryOptions: DeliveryOptions): Promise<void> {
    const maxBatch = deliveryOptions.maxBatchReadings ?? 5000
    const minBackoff = deliveryOptions.minBackoffMs ?? 100
    const maxBackoff = deliveryOptions.maxBackoffMs ?? 10_000
    const lingerMs = deliveryOptions.lingerMs ?? 20
    const lingerReadings = deliveryOptions.lingerReadings ?? 1000
    checkpointInterval = deliveryOptions.checkpointIntervalMs ?? 250
    let backoff = minBackoff
    // Kept across retries so a failing batch is retried as it was, not re-read.
    let batch: Batch | null = null
    while (!stopping) {
      try {
        const seen = generation
        if (batch === null) {
          // Linger: a small backlog waits (from its first append) for more to share one write.
          const waited = oldestAppendedAt === null ? 0 : Date.now() - oldestAppendedAt
          if (lingerMs > 0 && depthReadings > 0 && depthReadings < lingerReadings && waited < lingerMs) {
            await pause(lingerMs - waited, false)
            if (stopping) break
          }
          const read = await readBatch(cursor, maxBatch)
          batch = read === null ? null : { ...read, done: 0, dead: [], delivered: 0, latencyMs: 0 }
        }
        if (batch === null) {
          // Caught up: free the active segment if it is worth it, move the checkpoint once it is
          // due, then sleep until the next append.
          if (await reclaimActiveSegment()) continue
          if (cursor !== head) {
            const due = checkpointInterval - (performance.now() - lastCheckpointAt)
            if (due > 0 && generation === seen) await pause(due, true)
            if (generation === seen || stopping) await checkpointIfDue(true)
            continue
          }
          if (generation === seen && !stopping) await new Promise<void>((resolve) => { wakeDelivery = resolve })
          continue
        }
        if (!(await deliverBatch(store, batch, maxBatch))) break
        if (batch.dead.length > 0) {
          // Before the checkpoint can pass them (checkpointIfDue below or later).
          await writeDeadLetters(batch.dead)
          batch.dead = []
        }
        cursor = batch.end
        depthBytes -= batch.bytes
        depthReadings -= batch.readings.length
        oldestAppendedAt = depthBytes === 0 ? null : await appendedAtOf(cursor).catch(() => oldestAppendedAt)
        const { delivered, latencyMs } = batch
        batch = null
        backoff = minBackoff
        deliveryBlocked = false
        if (delivered > 0) safeEmit('delivered', delivered, latencyMs)
        await checkpointIfDue(false)
      } catch (err) {
        // close() gave up on the store write: stop without touching anything (the readings are
        // replayed at the next start).
        if (err instanceof WriteAbandoned || abandoned) return
        const error = err instanceof Error ? err : new Error(String(err))
        // Store errors never carry reading values (see readings/influx-store.ts); log the message only.
        deliveryBlocked = (err as { retriable?: unknown } | null)?.retriable === false
        if (deliveryBlocked) {
          // e.g. unauthorized or a missing database: retrying cannot fix it, but the setup can,
          // and dropping would lose readings.
          throttled.log('error', `deliver:${error.message}`, { error: error.message, retryInMs: backoff }, 'spool delivery blocked by a permanent store error; readings are kept until it is fixed')
        } else {
          throttled.log('warn', `deliver:${error.message}`, { error: error.message, retryInMs: backoff }, 'spool delivery failed; retrying')
        }
        safeEmit('deliveryFailed', error)
        if (stopping) break
        // A cleared timer, not a sleep left pending: close() must leave no timer behind.
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, backoff)
          stopBackoff = () => {
            clearTimeout(timer)
            resolve()
          }
        })
        stopBackoff = null
        backoff = Math.min(backoff * 2, maxBackoff)
      }
    }
    // Stopping: what was delivered need not be delivered again at the next start.
    if (!abandoned) {
      await checkpointIfDue(true).catch((err: unknown) => log.warn({ code: ioCode(err) }, 'spool: final checkpoint failed; the next start re-delivers a little'))
    }
  }

  function safeEmit<K extends keyof SpoolEvents> (event: K, ...args: SpoolEvents[K]): void {
    try {
      (emitter.emit as (e: K, ...a: SpoolEvents[K]) => boolean)(event, ...args)
    } catch (err) {
      log.error({ err }, `spool ${event} listener threw`)
    }
  }

  function startDelivery (store: ReadingStore, deliveryOptions: DeliveryOptions = {}): void {
    if (closed) throw new Error('spool is closed')
    if (delivery !== null) throw new Error('spool delivery already started')
    delivery = runDelivery(store, deliveryOptions).catch((err: unknown) => {
      log.error({ err }, 'spool delivery stopped unexpectedly')
    })
  }

  async function shutdown (): Promise<void> {
    closed = true
    while (writing !== null) await writing
    stopping = true
    const wake = wakeDelivery
    wakeDelivery = null
    wake?.()
    stopBackoff?.()
    if (delivery !== null) {
      // The store's own request timeout can exceed the supervisor's shutdown budget. Only the
      // store write is given up on: local file work always finishes before close resolves.
      const timer = setTimeout(() => {
        abandoned = true
        if (abandonWrite === null) return
        log.warn({ closeTimeoutMs }, 'spool: stopped waiting for the in-flight store write; its readings stay spooled for the next start')
        abandonWrite()
      }, closeTimeoutMs)
      try {
        await delivery
      } finally {
        clearTimeout(timer)
      }
    }
    for (const seq of [...readHandles.keys()]) await closeReadHandle(seq)
    await writeHandle.close()
    throttled.close()
    log.info({ depthReadings, depthBytes }, 'spool closed')
  }

  let replaying: Promise<unknown> = Promise.resolve()

  async function replayDeadLetters (): Promise<{ replayed: number }> {
    const file = path.join(dir, deadLetterName)
    const claimed = path.join(dir, `${deadLetterName}.replaying`)
    let replayed = 0
    // A claimed file left by an interrupted replay first, then the current one.
    for (const fresh of [false, true]) {
      if (closed) throw new Error('spool is closed')
      if (fresh) {
        try {
          await fs.rename(file, claimed)
        } catch (err) {
          if (ioCode(err) === 'ENOENT') break
          throw err
        }
        await fsyncDir(dir)
        // The next dead letter starts a new file, whose name must be synced again.
        deadLetterDirSynced = false
      }
      let text: string
      try {
        text = await fs.readFile(claimed, 'utf8')
      } catch (err) {
        if (ioCode(err) === 'ENOENT') continue
        throw err
      }
      const readings = text.split('\n').filter((line) => line !== '').map((line) => (JSON.parse(line) as { reading: StoredReading }).reading)
      for (let i = 0; i < readings.length; i += 1000) await append(readings.slice(i, i + 1000))
      // Only once every reading is back in the spool (fsync'd): a crash before this replays them again.
      await fs.rm(claimed)
      await fsyncDir(dir)
      replayed += readings.length
    }
    if (replayed > 0) log.info({ replayed }, 'spool: dead letters appended again for delivery')
    return { replayed }
  }

  function close (): Promise<void> {
    // A second caller waits for the same shutdown rather than returning while it runs.
    closing ??= shutdown()
    return closing
  }

  return Object.assign(emitter, {
    append,
    startDelivery,
    stats: (): SpoolStats => ({
      depthReadings,
      depthBytes,
      oldestUnwrittenAgeMs: oldestAppendedAt === null ? 0 : Math.max(0, Date.now() - oldestAppendedAt),
      appendSyncs,
      deadLettered,
      deliveryBlocked
    }),
    replayDeadLetters: () => {
      // One at a time: two would both read the .replaying file.
      const run = replaying.then(replayDeadLetters)
      replaying = run.catch(() => {})
      return run
    },
    close
  })
}
