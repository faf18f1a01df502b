import { EventEmitter } from 'node:events'
import fs from 'node:fs/promises'
import path from 'node:path'
import type { Logger } from 'pino'
import { createLogThrottle } from '../observability/log-throttle.ts'
import { aroundReads, type ReadingStore } from './reading-store.ts'
import type { StoredReading } from './reading.ts'
import { openDeadLetterFile } from './spool-dead-letter.ts'
import { createAppendSignal, startDelivery } from './spool-delivery.ts'
import type { Delivery, DeliveryEvents, DeliveryOptions } from './spool-delivery.ts'
import { encodeRecord } from './spool-record.ts'
import { openSegments } from './spool-segments.ts'
import type { Position, RecordSpan, SpooledRecord } from './spool-segments.ts'

/*
 * A write-ahead log in front of the reading store (InfluxDB, or the embedded PGlite). append()
 * resolves once the readings are fsync'd, so the broker may PUBACK; a delivery loop copies them
 * to the store in order and advances a durable checkpoint only after the store's write resolved
 * (InfluxDB answered 2xx; PGlite committed and synced). Nothing is dropped: undelivered data
 * stays on disk across store outages and restarts (re-delivery is harmless, writes are
 * idempotent). The one exception to "retry until delivered" is a reading the store rejects as
 * data it will never accept (HTTP 400/422): retrying it would block every reading behind it
 * forever, so it is isolated by bisecting its batch and moved to a dead-letter file.
 *
 * This file composes four parts (docs/durability.md says what they promise together):
 *   spool-record.ts       the record codec: framing, checksum, torn and corrupt records
 *   spool-segments.ts     the segment files: append (group commit, O_DSYNC writes), roll, read, checkpoint
 *   spool-delivery.ts     the delivery loop: batches, retries with backoff, blocked delivery, bisection
 *   spool-dead-letter.ts  the dead-letter file and its replay
 */

export { crc32, crc32Fallback, decodeRecordBody, encodeRecord, scanRecord } from './spool-record.ts'
export type { RecordScan } from './spool-record.ts'
export { deadLetterName } from './spool-dead-letter.ts'
export type { DeliveryOptions } from './spool-delivery.ts'
export type { Position, RecordSpan, SpooledRecord } from './spool-segments.ts'

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
   * Keep records until the alert engine has evaluated them (markEvaluated), for its replay after a
   * crash (evaluationBacklog); default false: delivered records go at once.
   */
  keepForEvaluation?: boolean
  /**
   * How long close() waits for an in-flight store write (default 2000 ms). Past it the write is
   * abandoned: its readings stay spooled and are replayed at the next start.
   */
  closeTimeoutMs?: number
}

export interface SpoolStats {
  depthReadings: number
  depthBytes: number
  /** Age of the oldest undelivered record; 0 when empty. */
  oldestUnwrittenAgeMs: number
  /** Durable writes made by append() so far (group commit makes this far fewer than appends). */
  appendSyncs: number
  /** Readings moved to the dead-letter file since the spool was opened. */
  deadLettered: number
  /**
   * Delivery is held up by an error retrying cannot cure but fixing the store can (auth, a
   * missing database, a series limit): readings are kept and retried with backoff meanwhile.
   */
  deliveryBlocked: boolean
}

export type SpoolEvents = DeliveryEvents

export interface Spool extends EventEmitter<SpoolEvents> {
  /** Resolves once the readings are durable, with where their record lies (null: no readings, nothing written). */
  append (readings: StoredReading[]): Promise<RecordSpan | null>
  startDelivery (store: ReadingStore, options?: DeliveryOptions): void
  stats (): SpoolStats
  /**
   * Resolves true once every reading acknowledged before the call has reached the store (the
   * delivery's linger is cut short), false after `maxWaitMs` (store slow or down) or when
   * delivery has not started or stopped: for readers that must see what was acknowledged.
   */
  caughtUp (maxWaitMs: number): Promise<boolean>
  /**
   * The alert engine evaluated every record before `pos` and its state is saved durably: the
   * checkpoint records it, and a restart replays only what follows (evaluationBacklog).
   */
  markEvaluated (pos: Position): void
  /**
   * The records from the evaluation mark on as they were at open, `maxReadings` a batch: what the
   * alert engine may not have evaluated before the last stop (a crash: its last batch window and
   * its last unsaved state). Read once at start, before the broker takes readings.
   */
  evaluationBacklog (maxReadings?: number): AsyncGenerator<SpooledRecord[]>
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

export async function openSpool (options: OpenSpoolOptions): Promise<Spool> {
  const dir = path.resolve(options.dir)
  const log = options.log.child({ component: 'spool' })
  const closeTimeoutMs = options.closeTimeoutMs ?? 2000
  // Readings are PHI: only Vigil's user may read them (docs/security.md).
  await fs.mkdir(dir, { recursive: true, mode: 0o700 })
  // Errors that repeat for one cause (a full disk, a store refusing every write): a line per interval.
  const throttled = createLogThrottle(log)
  const appended = createAppendSignal()
  const segments = await openSegments({ dir, segmentBytes: options.segmentBytes ?? 16 * 1024 * 1024, log, throttled, onChange: appended.notify, keepForEvaluation: options.keepForEvaluation === true })
  const deadLetters = openDeadLetterFile(dir, log)
  const emitter = new EventEmitter<SpoolEvents>()
  let delivery: Delivery | null = null
  let closed = false
  let closing: Promise<void> | null = null

  function assertOpen (): void {
    if (closed) throw new Error('spool is closed')
  }

  async function append (readings: StoredReading[]): Promise<RecordSpan | null> {
    assertOpen()
    const broken = segments.broken()
    if (broken !== null) throw broken
    if (readings.length === 0) return null
    const appendedAt = Date.now()
    const record = encodeRecord(readings, appendedAt)
    const queued = segments.backlog().bytes + segments.pendingBytes()
    if (queued + record.length > options.maxBytes) throw new SpoolFullError(queued, options.maxBytes)
    return await segments.append(record, readings.length, appendedAt, readings)
  }

  async function * evaluationBacklog (maxReadings = 5000): AsyncGenerator<SpooledRecord[]> {
    let from = segments.evaluated()
    // Delivery checkpoints meanwhile: it must not delete what is still to be read.
    segments.pinEvaluation(true)
    try {
      for (;;) {
        assertOpen()
        const run = await segments.readRecords(maxReadings, from)
        if (run === null) return
        from = run.end
        if (run.records.length > 0) yield run.records
      }
    } finally {
      segments.pinEvaluation(false)
    }
  }

  function safeEmit<K extends keyof SpoolEvents> (event: K, ...args: SpoolEvents[K]): void {
    try {
      (emitter.emit as (e: K, ...a: SpoolEvents[K]) => boolean)(event, ...args)
    } catch (err) {
      log.error({ err }, `spool ${event} listener threw`)
    }
  }

  async function shutdown (): Promise<void> {
    closed = true
    await segments.stopAppends()
    await delivery?.stop(closeTimeoutMs)
    await segments.close()
    throttled.close()
    const { readings, bytes } = segments.backlog()
    log.info({ depthReadings: readings, depthBytes: bytes }, 'spool closed')
  }

  return Object.assign(emitter, {
    append,
    startDelivery (store: ReadingStore, deliveryOptions: DeliveryOptions = {}): void {
      assertOpen()
      if (delivery !== null) throw new Error('spool delivery already started')
      delivery = startDelivery(store, deliveryOptions, { segments, deadLetters, appended, log, throttled, emit: safeEmit })
    },
    stats: (): SpoolStats => {
      const backlog = segments.backlog()
      return {
        depthReadings: backlog.readings,
        depthBytes: backlog.bytes,
        oldestUnwrittenAgeMs: backlog.oldestAppendedAt === null ? 0 : Math.max(0, Date.now() - backlog.oldestAppendedAt),
        appendSyncs: segments.appendSyncs(),
        deadLettered: deadLetters.written(),
        deliveryBlocked: delivery?.blocked() ?? false
      }
    },
    caughtUp: async (maxWaitMs: number): Promise<boolean> => await delivery?.caughtUp(maxWaitMs) ?? segments.backlog().readings === 0,
    markEvaluated: (pos: Position): void => { segments.markEvaluated(pos) },
    evaluationBacklog,
    replayDeadLetters: () => deadLetters.replay(async (readings) => { await append(readings) }, assertOpen),
    close (): Promise<void> {
      // A second caller waits for the same shutdown rather than returning while it runs.
      closing ??= shutdown()
      return closing
    }
  })
}

/**
 * `store` for readers, in front of a spool that delivers into it: each read first waits (at most
 * `maxWaitMs`, and not while delivery is blocked) until what was acknowledged before it has
 * been delivered, so a reading is in every answer once its PUBACK went. The embedded default's
 * reads: its delivery is local and quick; InfluxDB's readers keep their delivery delay.
 */
export function readAfterDelivery (store: ReadingStore, spool: Pick<Spool, 'caughtUp' | 'stats'>, maxWaitMs = 1000): ReadingStore {
  return aroundReads(store, async (_read, run) => {
    if (!spool.stats().deliveryBlocked) await spool.caughtUp(maxWaitMs)
    return await run()
  })
}
