import type { Logger } from 'pino'
import type { LogThrottle } from '../observability/log-throttle.ts'
import type { ReadingStore } from './reading-store.ts'
import type { StoredReading } from './reading.ts'
import type { DeadLetterFile, DeadReading } from './spool-dead-letter.ts'
import { ioCode } from './spool-segments.ts'
import type { RecordRun, Segments } from './spool-segments.ts'

/*
 * The spool's delivery loop: copies the segments' records to the store in order, moves the
 * cursor only past what the store answered 2xx for (or what was dead-lettered), and moves the
 * checkpoint after it at most every checkpointIntervalMs. Failures keep the readings and are
 * retried with backoff; only data the store says it will never accept is bisected out of its
 * batch and set aside in the dead-letter file (docs/durability.md).
 */

export interface DeliveryOptions {
  /** Readings per store.write, at most (default 10,000; records are never split across batches unless one is larger). */
  maxBatchReadings?: number
  minBackoffMs?: number
  maxBackoffMs?: number
  /**
   * While fewer than `lingerReadings` are waiting, the first of them waits up to this long
   * (ms, default 100) for company, so a steady stream goes out in few large writes instead of
   * many tiny ones: each write costs an HTTP request whatever its size (at 100 msg/s a 20 ms
   * linger made 50 requests a second, a third of Vigil's CPU). A reading is durable and
   * acknowledged before this; the linger only delays when it can be queried. 0: no wait.
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
  /**
   * Store writes in flight at once while a backlog of at least lingerReadings waits past them
   * (default 2; 1: one at a time). Batches are still consumed in the order read, so the cursor
   * and the checkpoint only pass a contiguous delivered prefix.
   */
  maxWritesInFlight?: number
}

export interface DeliveryEvents {
  /** A batch reached the store; latencyMs is the store.write time for the batch. */
  delivered: [count: number, latencyMs: number]
  /** A delivery attempt failed; it will be retried. */
  deliveryFailed: [err: Error]
  /** Readings the store will never accept were moved to the dead-letter file (reason: the store's error message). */
  deadLettered: [count: number, reason: string]
}

/** What wakes delivery: appends made durable (and an append that found the disk full). */
export interface AppendSignal {
  /** Counts notify() calls: a new value means something changed while delivery was busy. */
  generation (): number
  notify (): void
  /** Calls `listener` at the next notify() only; replaces an earlier one; returns a canceller. */
  once (listener: () => void): () => void
}

export function createAppendSignal (): AppendSignal {
  let generation = 0
  let listener: (() => void) | null = null
  return {
    generation: () => generation,
    notify () {
      generation++
      const wake = listener
      listener = null
      wake?.()
    },
    once (next) {
      listener = next
      return () => { if (listener === next) listener = null }
    }
  }
}

export interface DeliveryDeps {
  segments: Pick<Segments, 'backlog' | 'read' | 'consume' | 'checkpointBehind' | 'checkpoint' | 'reclaim'>
  deadLetters: Pick<DeadLetterFile, 'write'>
  appended: AppendSignal
  log: Logger
  throttled: LogThrottle
  /** Emits a spool event; a throwing listener is the caller's to contain. */
  emit: <K extends keyof DeliveryEvents>(event: K, ...args: DeliveryEvents[K]) => void
}

export interface Delivery {
  /** Held up by an error retrying cannot cure but fixing the store can (auth, a missing database, a series limit). */
  blocked (): boolean
  /**
   * Resolves true once every reading durable in the spool when it was called has reached the
   * store (a linger under way is cut short), or false after `maxWaitMs` (the store is slow or
   * down) or when delivery stops: a reader of the store then sees what was acknowledged.
   */
  caughtUp (maxWaitMs: number): Promise<boolean>
  /**
   * Stops the loop: waits for local file work always, and for the in-flight store write at most
   * closeTimeoutMs (then it is abandoned: its readings stay spooled for the next start).
   */
  stop (closeTimeoutMs: number): Promise<void>
}

interface Batch extends RecordRun {
  /** readings[0, done) were delivered or set aside as dead; kept across retries so neither repeats. */
  done: number
  /** Set aside, not yet in the dead-letter file: it must be fsync'd there before the checkpoint passes them. */
  dead: DeadReading[]
  delivered: number
  latencyMs: number
  /** Its points' keys (pointKeys), once compared with a batch read after it. */
  keys?: Set<string>
}

/** A batch in the delivery window; outcome is null until its write is started (again). */
interface Flight {
  batch: Batch
  outcome: Promise<'delivered' | 'stopped' | Error> | null
}

function newBatch (read: RecordRun): Batch {
  return { ...read, done: 0, dead: [], delivered: 0, latencyMs: 0 }
}

/** Device, metric and timestamp of each reading: the stores' point identity without the patient. */
function pointKeys (readings: readonly StoredReading[]): Set<string> {
  const keys = new Set<string>()
  for (const r of readings) keys.add(`${r.ts} ${r.metric} ${r.deviceId.toLowerCase()}`)
  return keys
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

/** stop() stopped waiting for the store write this rejects. */
class WriteAbandoned extends Error {}

export function startDelivery (store: ReadingStore, options: DeliveryOptions, deps: DeliveryDeps): Delivery {
  const { segments, deadLetters, appended, log, throttled, emit } = deps
  // 10,000: with 50-reading messages, at most 5,000 a write held 49,965 readings/s and 10,000
  // held 61,222 (back to back, docs/performance.md): delivery, one write at a time, was the limit.
  // A write that size is ~1.5 MB of line protocol (InfluxDB 1.x takes up to 25 MB a request).
  const maxBatch = options.maxBatchReadings ?? 10_000
  const minBackoff = options.minBackoffMs ?? 100
  const maxBackoff = options.maxBackoffMs ?? 10_000
  const lingerMs = options.lingerMs ?? 100
  const lingerReadings = options.lingerReadings ?? 1000
  const checkpointInterval = options.checkpointIntervalMs ?? 250
  const maxInFlight = Math.max(1, options.maxWritesInFlight ?? 2)
  let stopping = false
  // Ends the current wait (linger, checkpoint due, idle, backoff) at once: set while one runs.
  let endWait: (() => void) | null = null
  let abandoned = false
  // Rejects each store write in flight with WriteAbandoned (stop() past closeTimeoutMs).
  const abandonWrites = new Set<() => void>()
  // Batches read and not yet consumed, in read order: at most maxInFlight.
  const window: Flight[] = []
  let blocked = false
  let lastCheckpointAt = 0
  // Readings consumed (delivered or dead-lettered) since start, and the callers of caughtUp
  // waiting for this count to reach theirs: while any waits, delivery does not linger.
  let consumedReadings = 0
  const catchUps = new Set<{ target: number, resolve: (caught: boolean) => void }>()
  let lingering = false

  /**
   * Resolves after `ms` (never when null), at the next append when `wakeOnAppend`, or at once
   * when delivery stops; leaves no timer behind.
   */
  async function wait (ms: number | null, wakeOnAppend: boolean): Promise<void> {
    await new Promise<void>((resolve) => {
      const timer = ms === null ? undefined : setTimeout(done, ms)
      const cancelWake = wakeOnAppend ? appended.once(done) : () => {}
      function done (): void {
        clearTimeout(timer)
        cancelWake()
        if (endWait === done) endWait = null
        resolve()
      }
      endWait = done
    })
  }

  /** store.write that stop() can stop waiting for (the write itself cannot be cancelled). */
  async function storeWrite (readings: StoredReading[]): Promise<void> {
    if (abandoned) throw new WriteAbandoned()
    const write = Promise.resolve().then(async () => { await store.write(readings) })
    // Once abandoned nobody awaits it; a late rejection must not become an unhandled one.
    write.catch(() => {})
    let abandon!: () => void
    const abandoning = new Promise<never>((_resolve, reject) => { abandon = () => reject(new WriteAbandoned()) })
    abandonWrites.add(abandon)
    try {
      await Promise.race([write, abandoning])
    } finally {
      abandonWrites.delete(abandon)
    }
  }

  /**
   * Writes batch.readings[batch.done …] in slices of maxBatch; false when stopped first. A poison
   * failure replaces its slice by its two halves, so whatever the store accepts is delivered and
   * each reading it never will is isolated and set aside. Any other failure throws (retried).
   */
  async function deliverBatch (batch: Batch): Promise<boolean> {
    const ranges: Array<[number, number]> = []
    for (let i = batch.done; i < batch.readings.length; i += maxBatch) ranges.push([i, Math.min(i + maxBatch, batch.readings.length)])
    for (let range = ranges.shift(); range !== undefined; range = ranges.shift()) {
      if (stopping) return false
      const [from, to] = range
      const started = performance.now()
      try {
        await storeWrite(batch.readings.slice(from, to))
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

  async function setAside (dead: readonly DeadReading[]): Promise<void> {
    await deadLetters.write(dead)
    const byReason = new Map<string, number>()
    for (const { reason } of dead) byReason.set(reason, (byReason.get(reason) ?? 0) + 1)
    for (const [reason, count] of byReason) emit('deadLettered', count, reason)
  }

  /**
   * A failed checkpoint (ENOSPC for its temp file) does not stop delivery: it only means a
   * restart re-delivers more. It is tried again at the next interval.
   */
  async function checkpointIfDue (force: boolean): Promise<void> {
    if (!segments.checkpointBehind()) return
    if (!force && performance.now() - lastCheckpointAt < checkpointInterval) return
    lastCheckpointAt = performance.now()
    try {
      await segments.checkpoint()
    } catch (err) {
      throttled.log('warn', `checkpoint:${ioCode(err)}`, { code: ioCode(err) }, 'spool: checkpoint failed; delivery goes on and it is retried')
    }
  }

  /** Writes `batch` (from batch.done on); never rejects: its outcome says how it ended. */
  function launch (flight: Flight): void {
    flight.outcome = deliverBatch(flight.batch).then((finished) => finished ? 'delivered' : 'stopped', (err: unknown) => err instanceof Error ? err : new Error(String(err)))
  }

  /**
   * Whether `batch` writes a point that an unconsumed batch before it writes too. InfluxDB and
   * the Postgres store keep the last write of a point, so such a batch waits until those are
   * consumed: writes in flight together never race over one point, and the later reading wins
   * as it would with one write at a time. The key is coarser than a point's (no patient), which
   * only ever holds a batch back, never lets one through.
   */
  function overlaps (batch: Batch, earlier: readonly Flight[]): boolean {
    const keys = new Set<string>()
    for (const { batch: before } of earlier) {
      before.keys ??= pointKeys(before.readings)
      for (const key of before.keys) keys.add(key)
    }
    batch.keys = pointKeys(batch.readings)
    for (const key of batch.keys) if (keys.has(key)) return true
    return false
  }

  /**
   * Consumes the window's oldest batch once its write succeeded: dead letters fsync'd first,
   * then the cursor moves past it (in read order, so the checkpoint only ever passes a
   * contiguous delivered prefix).
   */
  async function consumeOldest (): Promise<void> {
    const { batch } = window[0]!
    if (batch.dead.length > 0) {
      // Before the checkpoint can pass them (checkpointIfDue below or later).
      await setAside(batch.dead)
      batch.dead = []
    }
    await segments.consume(batch)
    window.shift()
    consumedReadings += batch.readings.length
    for (const c of catchUps) {
      if (consumedReadings < c.target) continue
      catchUps.delete(c)
      c.resolve(true)
    }
    if (batch.delivered > 0) emit('delivered', batch.delivered, batch.latencyMs)
  }

  async function run (): Promise<void> {
    let backoff = minBackoff
    // A failed batch is waiting to be written again: no read-ahead until it is delivered.
    let retrying = false
    while (!stopping) {
      try {
        const seen = appended.generation()
        if (window.length === 0) {
          // Linger: a small backlog waits (from its first append) for more to share one write.
          const backlog = segments.backlog()
          const waited = backlog.oldestAppendedAt === null ? 0 : Date.now() - backlog.oldestAppendedAt
          if (lingerMs > 0 && backlog.readings > 0 && backlog.readings < lingerReadings && waited < lingerMs && catchUps.size === 0) {
            lingering = true
            try {
              await wait(lingerMs - waited, false)
            } finally {
              lingering = false
            }
            if (stopping) break
          }
          const read = await segments.read(maxBatch)
          if (read === null) {
            // Caught up: free the active segment if it is worth it, move the checkpoint once it
            // is due, then sleep until the next append.
            if (await segments.reclaim()) continue
            if (segments.checkpointBehind()) {
              const due = checkpointInterval - (performance.now() - lastCheckpointAt)
              if (due > 0 && appended.generation() === seen) await wait(due, true)
              if (appended.generation() === seen || stopping) await checkpointIfDue(true)
              continue
            }
            if (appended.generation() === seen && !stopping) await wait(null, true)
            continue
          }
          const flight: Flight = { batch: newBatch(read), outcome: null }
          window.push(flight)
          launch(flight)
        }
        // Another write beside those in flight, only for a backlog past them of at least
        // lingerReadings (a trickle keeps one write at a time) and not while retrying.
        const growable = window.length < maxInFlight && !retrying
        if (growable) {
          const ahead = segments.backlog().readings - window.reduce((n, f) => n + f.batch.readings.length, 0)
          if (ahead >= lingerReadings) {
            const read = await segments.read(maxBatch, window.at(-1)!.batch.end)
            if (read !== null) {
              const flight: Flight = { batch: newBatch(read), outcome: null }
              // Launched when it reaches the front of the window if it writes a point an earlier one does.
              if (!overlaps(flight.batch, window)) launch(flight)
              window.push(flight)
              continue
            }
          }
        }
        const oldest = window[0]!
        if (oldest.outcome === null) launch(oldest)
        // While the window could grow, an append (or stop) also ends the wait: the loop looks again.
        const outcome = growable && appended.generation() === seen && !stopping
          ? await Promise.race([oldest.outcome!, wait(null, true).then(() => 'woken' as const)])
          : growable ? 'woken' : await oldest.outcome!
        if (outcome === 'woken') continue
        endWait?.()
        if (outcome === 'stopped') break
        if (outcome instanceof Error) {
          // Retried as it stands (batch.done kept), after the backoff.
          oldest.outcome = null
          throw outcome
        }
        await consumeOldest()
        backoff = minBackoff
        retrying = false
        blocked = false
        await checkpointIfDue(false)
      } catch (err) {
        // stop() gave up on the store write: stop without touching anything (the readings are
        // replayed at the next start).
        if (err instanceof WriteAbandoned || abandoned) return
        const error = err instanceof Error ? err : new Error(String(err))
        // Store errors never carry reading values (see readings/influx-store.ts); log the message only.
        blocked = (err as { retriable?: unknown } | null)?.retriable === false
        if (blocked) {
          // e.g. unauthorized or a missing database: retrying cannot fix it, but the setup can,
          // and dropping would lose readings.
          throttled.log('error', `deliver:${error.message}`, { error: error.message, retryInMs: backoff }, 'spool delivery blocked by a permanent store error; readings are kept until it is fixed')
        } else {
          throttled.log('warn', `deliver:${error.message}`, { error: error.message, retryInMs: backoff }, 'spool delivery failed; retrying')
        }
        emit('deliveryFailed', error)
        retrying = true
        if (stopping) break
        // A cleared timer, not a sleep left pending: stop() must leave no timer behind.
        await wait(backoff, false)
        backoff = Math.min(backoff * 2, maxBackoff)
      }
    }
    // Stopping: writes still in flight finish (stop() abandons them after closeTimeoutMs), and
    // what was delivered, in order from the front, need not be delivered again at the next start.
    try {
      // Every write started is waited for, not only the front one (a failed front batch may
      // sit in its backoff while a later write runs): stop() never returns with a store request
      // still running. The abandon timer bounds this, and outcomes never reject.
      await Promise.all(window.flatMap((f) => f.outcome === null ? [] : [f.outcome]))
      while (!abandoned && window.length > 0 && window[0]!.outcome !== null) {
        if (await window[0]!.outcome !== 'delivered' || abandoned) break
        await consumeOldest()
      }
    } catch (err) {
      log.warn({ code: ioCode(err) }, 'spool: consuming the last delivered batch failed; the next start re-delivers it')
    }
    if (!abandoned) {
      await checkpointIfDue(true).catch((err: unknown) => log.warn({ code: ioCode(err) }, 'spool: final checkpoint failed; the next start re-delivers a little'))
    }
  }

  const running = run().catch((err: unknown) => {
    log.error({ err }, 'spool delivery stopped unexpectedly')
  })

  return {
    blocked: () => blocked,
    async caughtUp (maxWaitMs) {
      const backlog = segments.backlog().readings
      if (backlog === 0) return true
      if (stopping) return false
      return await new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => { catchUps.delete(entry); resolve(false) }, maxWaitMs)
        const entry = { target: consumedReadings + backlog, resolve: (caught: boolean) => { clearTimeout(timer); resolve(caught) } }
        catchUps.add(entry)
        if (lingering) endWait?.()
      })
    },
    async stop (closeTimeoutMs) {
      stopping = true
      endWait?.()
      for (const c of catchUps) c.resolve(false)
      catchUps.clear()
      // The store's own request timeout can exceed the supervisor's shutdown budget. Only the
      // store write is given up on: local file work always finishes before stop resolves.
      const timer = setTimeout(() => {
        abandoned = true
        if (abandonWrites.size === 0) return
        log.warn({ closeTimeoutMs, writes: abandonWrites.size }, 'spool: stopped waiting for the store writes in flight; their readings stay spooled for the next start')
        for (const abandon of abandonWrites) abandon()
      }, closeTimeoutMs)
      try {
        await running
      } finally {
        clearTimeout(timer)
      }
    }
  }
}
