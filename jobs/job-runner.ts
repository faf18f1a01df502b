import { randomUUID } from 'node:crypto'
import os from 'node:os'
import type pg from 'pg'
import type { Logger } from 'pino'
import type { ClaimedJob, JobQueue, Json } from './job-queue.ts'

/** What a handler gets besides the job: a signal that aborts on cancel, lost lease or shutdown, and a progress sink. */
export interface JobContext {
  signal: AbortSignal
  /** 0–1; written to the job on the next heartbeat. */
  reportProgress (progress: number): void
}

/** A handler's outcome: `result` (ids and counts, never PHI) and its effect, committed with the completion. */
export interface JobOutcome {
  result: Json
  apply?: (client: pg.ClientBase) => Promise<void>
}

export interface JobHandler {
  run (job: ClaimedJob, context: JobContext): Promise<JobOutcome>
  /** Runs in the transaction that ends the job without success (failed for good, cancelled): e.g. delete its input. */
  onFinal?: (job: ClaimedJob, client: pg.ClientBase) => Promise<void>
}

/** Thrown by a handler when retrying cannot help (bad input): the job fails at once. */
export class PermanentJobError extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'PermanentJobError'
  }
}

export interface JobRunnerOptions {
  queue: JobQueue
  /** Job type → handler. */
  handlers: Record<string, JobHandler>
  /** Jobs this runner runs at once, all types together (WORKER_THREADS: each job holds a pool thread). */
  workers: number
  /** Per type: jobs of the type this runner runs at once (other processes have their own). Default `workers`. */
  concurrency?: Record<string, number>
  log: Logger
  /** How often to look for due jobs and renew leases. Default 1000 ms. */
  pollIntervalMs?: number
  /**
   * Holding no job: how long the runner may sleep until the next look, at most; it wakes sooner
   * when a job falls due (a retry's delay, a lease running out) and at once on an enqueue in this
   * process. Default `pollIntervalMs`: only a runner whose queue no other process feeds (the
   * embedded default) may sleep longer.
   */
  idlePollIntervalMs?: number
  runnerId?: string
}

export interface JobRunner {
  readonly runnerId: string
  /** Jobs running in this runner now. */
  running (): number
  /** Look for jobs now (after an enqueue) instead of at the next poll. */
  wake (): void
  /** Stops claiming; running jobs are stopped and given back to the queue (queued, attempt not spent). */
  close (): Promise<void>
}

/**
 * What a log line may say about an error: pg errors carry `detail` ("Failing row contains …")
 * that can quote a transcript, so only the name, message and code are kept.
 */
function loggable (err: unknown): { type?: string, message: string, code?: unknown } {
  if (!(err instanceof Error)) return { message: String(err) }
  return { type: err.name, message: err.message, code: (err as { code?: unknown }).code }
}

interface Held {
  job: ClaimedJob
  controller: AbortController
  progress: number
  /** Why the signal was aborted, when it was. */
  stop: 'cancel' | 'lost' | 'shutdown' | null
  done: Promise<void>
}

/**
 * Claims jobs and runs them, never more than `workers` at once: it claims only as many as it has
 * free slots, so the worker pool behind the handlers is fed without being flooded and a job
 * waits in Postgres (durable, visible, cancellable) rather than in a memory queue.
 */
export function startJobRunner (options: JobRunnerOptions): JobRunner {
  const { queue, handlers, log: parentLog } = options
  const log = parentLog.child({ component: 'job-runner' })
  const workers = Math.max(1, Math.floor(options.workers))
  const pollIntervalMs = options.pollIntervalMs ?? 1000
  const idlePollIntervalMs = Math.max(pollIntervalMs, options.idlePollIntervalMs ?? pollIntervalMs)
  const runnerId = options.runnerId ?? `${os.hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`
  const types = Object.keys(handlers)
  const held = new Map<string, Held>()
  let closing = false
  let typeCursor = 0
  let ticking: Promise<void> | null = null
  let again = false
  // When the last look found the next job falling due (null: none queued or running, or unknown).
  let nextDueAt: Date | null = null
  let timer: NodeJS.Timeout | null = null

  async function tick (): Promise<void> {
    await renewLeases()
    // A claim is a transaction of six statements per type: only for types with work due.
    let due = new Set<string>()
    if (workers - held.size > 0) ({ due, nextAt: nextDueAt } = await queue.dueWork(types))
    // Round-robin over types, so one busy type does not starve the others of free slots.
    for (let i = 0; i < types.length && !closing; i++) {
      const free = workers - held.size
      if (free <= 0) break
      const type = types[(typeCursor + i) % types.length]!
      if (!due.has(type)) continue
      const claimed = await queue.claim({ type, max: free, typeLimit: options.concurrency?.[type] ?? workers, runnerId })
      for (const job of claimed) start(job)
    }
    typeCursor = (typeCursor + 1) % Math.max(1, types.length)
  }

  async function renewLeases (): Promise<void> {
    if (held.size === 0) return
    const { lost, cancelRequested } = await queue.heartbeat([...held.values()].map((h) => ({ id: h.job.id, lockToken: h.job.lockToken, progress: h.progress })))
    for (const id of cancelRequested) abort(id, 'cancel')
    for (const id of lost) abort(id, 'lost')
  }

  function abort (id: string, why: NonNullable<Held['stop']>): void {
    const h = held.get(id)
    if (h === undefined || h.stop !== null) return
    h.stop = why
    h.controller.abort(new Error(`job ${why}`))
  }

  function start (job: ClaimedJob): void {
    const handler = handlers[job.type]!
    const controller = new AbortController()
    const entry: Held = { job, controller, progress: 0, stop: null, done: Promise.resolve() }
    held.set(job.id, entry)
    const jobLog = log.child({ jobId: job.id, type: job.type, attempt: job.attempts })
    jobLog.info('job started')
    entry.done = (async () => {
      try {
        const outcome = await handler.run(job, { signal: controller.signal, reportProgress: (p) => { entry.progress = p } })
        // A result that arrived as shutdown began is kept: the work is done.
        if (entry.stop === null || entry.stop === 'shutdown') {
          const written = await queue.complete(job, outcome.result, outcome.apply)
          jobLog.info({ outcome: written === 'done' ? 'succeeded' : 'lease lost' }, 'job ended')
          return
        }
        // Stopped, but the work finished anyway: fall through to the stop handling below.
      } catch (err) {
        if (entry.stop === null) {
          const permanent = err instanceof PermanentJobError
          // Handler errors name the failure without PHI (engine exit codes, audio format).
          const message = err instanceof Error ? err.message : String(err)
          const { outcome, state } = await queue.fail(job, message, {
            permanent,
            onFinal: handler.onFinal === undefined ? undefined : (client) => handler.onFinal!(job, client)
          })
          jobLog.warn({ err: loggable(err), state, outcome }, 'job attempt failed')
          return
        }
      }
      if (entry.stop === 'cancel') {
        await queue.markCancelled(job, handler.onFinal === undefined ? undefined : (client) => handler.onFinal!(job, client))
        jobLog.info('job cancelled')
      } else if (entry.stop === 'shutdown') {
        await queue.release(job)
        jobLog.info('job released at shutdown')
      } else {
        jobLog.warn('job lease lost: another runner may have it')
      }
    })().catch((err: unknown) => {
      // The database is unreachable: the lease runs out and the job is claimed again.
      jobLog.error({ err: loggable(err) }, 'job outcome not recorded')
    }).finally(() => {
      held.delete(job.id)
      if (!closing) wake()
    })
  }

  /**
   * The next look: every pollIntervalMs while a job is held (its lease is renewed) or the last
   * look failed; idle, when the next job falls due, within [pollIntervalMs, idlePollIntervalMs].
   */
  function arm (failed: boolean): void {
    if (timer !== null) clearTimeout(timer)
    let delay = pollIntervalMs
    if (!failed && held.size === 0 && idlePollIntervalMs > pollIntervalMs) {
      const untilDue = nextDueAt === null ? idlePollIntervalMs : nextDueAt.getTime() - Date.now()
      delay = Math.min(idlePollIntervalMs, Math.max(pollIntervalMs, untilDue))
    }
    timer = setTimeout(wake, delay)
  }

  function wake (): void {
    if (closing) return
    if (ticking !== null) {
      again = true
      return
    }
    let failed = false
    ticking = tick()
      .catch((err: unknown) => {
        failed = true
        nextDueAt = null
        log.error({ err: loggable(err) }, 'job poll failed')
      })
      .finally(() => {
        ticking = null
        if (again) {
          again = false
          wake()
        } else if (!closing) {
          arm(failed)
        }
      })
  }

  const unsubscribe = queue.onEnqueued(() => wake())
  wake()
  log.info({ runnerId, workers, types }, 'job runner started')

  return {
    runnerId,
    running: () => held.size,
    wake,
    async close () {
      if (closing) return
      closing = true
      if (timer !== null) clearTimeout(timer)
      unsubscribe()
      await ticking
      for (const id of held.keys()) abort(id, 'shutdown')
      await Promise.all([...held.values()].map((h) => h.done))
    }
  }
}
