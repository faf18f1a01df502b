import { randomUUID } from 'node:crypto'
import type pg from 'pg'
import { inTransaction as runInTransaction } from '../store/database.ts'
import { defaults } from '../config/schema/defaults.ts'

export const jobStates = ['queued', 'running', 'succeeded', 'failed', 'cancelled'] as const
export type JobState = typeof jobStates[number]
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json }

export interface Job {
  id: string
  type: string
  state: JobState
  patientId: string | null
  payload: Record<string, Json>
  attempts: number
  maxAttempts: number
  /** 0–1. */
  progress: number
  result: Json
  error: string | null
  cancelRequested: boolean
  runAfter: string
  createdBy: string | null
  createdAt: string
  startedAt: string | null
  finishedAt: string | null
  updatedAt: string
  /** Times the result was committed (exactly-once check: 1 for a succeeded job, else 0). */
  completions: number
}

/** A job this runner holds: the lock token proves the lease on every later write. */
export interface ClaimedJob extends Job {
  lockToken: string
}

export interface NewJob {
  type: string
  patientId?: string | null
  payload?: Record<string, Json>
  maxAttempts?: number
  createdBy?: string | null
}

export interface JobQueueOptions {
  pool: pg.Pool
  /** The clock used for leases and backoff (tests drive it); default the wall clock. */
  now?: () => Date
  /** How long a claim holds a job without a heartbeat. Default 60 s. */
  leaseMs?: number
  /** Attempts before a job fails for good, unless enqueue says otherwise. Default 3. */
  maxAttempts?: number
  /** Delay before retry number `attempt` (1 = after the first failure). Default retryDelayMs. */
  retryDelay?: (attempt: number) => number
}

/**
 * Exponential backoff with a cap: 5 s, 10 s, 20 s … at most 10 min. No jitter: the
 * claim query orders by run_after, and jobs retry one at a time per runner slot anyway.
 */
export function retryDelayMs (attempt: number, baseMs = 5000, capMs = 10 * 60_000): number {
  return Math.min(capMs, baseMs * 2 ** Math.max(0, attempt - 1))
}

const COLUMNS = `id, type, state, patient_id, payload, attempts, max_attempts, progress, result, error,
  cancel_requested, run_after, created_by, created_at, started_at, finished_at, updated_at, completions, lock_token`

function iso (value: unknown): string | null {
  return value === null || value === undefined ? null : (value as Date).toISOString()
}

function toJob (row: Record<string, unknown>): Job {
  return {
    id: row.id as string,
    type: row.type as string,
    state: row.state as JobState,
    patientId: (row.patient_id as string | null) ?? null,
    payload: row.payload as Record<string, Json>,
    attempts: row.attempts as number,
    maxAttempts: row.max_attempts as number,
    progress: row.progress as number,
    result: (row.result as Json | undefined) ?? null,
    error: (row.error as string | null) ?? null,
    cancelRequested: row.cancel_requested as boolean,
    runAfter: iso(row.run_after)!,
    createdBy: (row.created_by as string | null) ?? null,
    createdAt: iso(row.created_at)!,
    startedAt: iso(row.started_at),
    finishedAt: iso(row.finished_at),
    updatedAt: iso(row.updated_at)!,
    completions: row.completions as number
  }
}

function toClaimed (row: Record<string, unknown>): ClaimedJob {
  return { ...toJob(row), lockToken: row.lock_token as string }
}

/** What a write under a lease found: the job was still ours, or the lease was lost (expired and reclaimed, or cancelled). */
export type LeaseOutcome = 'done' | 'lost'

export interface JobQueue {
  /** Adds a job; pass `client` to enqueue inside the caller's transaction (atomic with the job's input). */
  enqueue (job: NewJob, client?: pg.ClientBase): Promise<Job>
  /**
   * Claims up to `max` jobs of `type` that are due, never letting `runnerId` hold more than
   * `typeLimit` running jobs of the type (its unexpired leases). The limit is per runner: each
   * process sharing the database runs up to its own, so the cluster's capacity is their sum.
   */
  claim (options: { type: string, max: number, typeLimit: number, runnerId: string }): Promise<ClaimedJob[]>
  /**
   * Of `types`, those a claim would find work in now (`due`: a queued job that is due, or a
   * running one whose lease ran out), and when the next job of `types` falls due (`nextAt`: a
   * queued job's `run_after` or a running one's lease end; in the past when one is due now, null
   * when none is queued or running). One indexed query, so an idle runner's poll is one round
   * trip instead of a claim transaction (six) per type, and a runner that alone feeds its queue
   * can sleep until `nextAt`.
   */
  dueWork (types: readonly string[]): Promise<{ due: Set<string>, nextAt: Date | null }>
  /**
   * Renews the leases of jobs this runner holds and records their progress. Returns the ids
   * whose lease is lost and those whose cancel was requested.
   */
  heartbeat (held: Array<{ id: string, lockToken: string, progress: number }>): Promise<{ lost: string[], cancelRequested: string[] }>
  /**
   * Marks the job succeeded and runs `apply` (the job's effect, e.g. storing a transcript) in the
   * same transaction, only while the lease is still ours: a job is completed at most once.
   */
  complete (job: ClaimedJob, result: Json, apply?: (client: pg.ClientBase) => Promise<void>): Promise<LeaseOutcome>
  /** Records a failure: back to queued after the retry delay, or failed when attempts are used up or `permanent`. */
  fail (job: ClaimedJob, error: string, options?: { permanent?: boolean, onFinal?: (client: pg.ClientBase) => Promise<void> }): Promise<{ outcome: LeaseOutcome, state: JobState }>
  /** A running job whose cancel was requested has stopped. */
  markCancelled (job: ClaimedJob, onFinal?: (client: pg.ClientBase) => Promise<void>): Promise<LeaseOutcome>
  /** Gives a job back without spending an attempt (shutdown): queued again, due now. */
  release (job: ClaimedJob): Promise<LeaseOutcome>
  /**
   * Queued: cancelled at once. Running: cancel requested, the runner stops it (or, if the runner
   * died, the next claim marks it cancelled). Ended jobs are returned unchanged.
   */
  cancel (id: string, onFinal?: (client: pg.ClientBase) => Promise<void>): Promise<Job | null>
  get (id: string): Promise<Job | null>
  /** Newest first. `patientIds` null: every job; otherwise jobs of those patients and jobs without a patient. */
  list (options: { type?: string, state?: JobState, limit: number, before?: { createdAt: string, id: string }, patientIds: readonly string[] | null }): Promise<Job[]>
  /** Counts per state (for metrics and the CLI). */
  counts (): Promise<Record<JobState, number>>
  /** Tells this process's runners about a job enqueued in a caller's transaction, after its COMMIT. */
  announce (job: Job): void
  /** Called after each enqueue in this process (the runner wakes instead of waiting for its poll). */
  onEnqueued (listener: (job: Job) => void): () => void
}

export function createJobQueue (options: JobQueueOptions): JobQueue {
  const { pool } = options
  const now = options.now ?? (() => new Date())
  const leaseMs = options.leaseMs ?? defaults.JOB_LEASE_SECONDS * 1000
  const defaultMaxAttempts = options.maxAttempts ?? defaults.JOB_MAX_ATTEMPTS
  const retryDelay = options.retryDelay ?? ((attempt: number) => retryDelayMs(attempt))
  const listeners = new Set<(job: Job) => void>()

  const transaction = async <T>(work: (client: pg.PoolClient) => Promise<T>): Promise<T> => await runInTransaction(pool, work)

  /** Ends a job this runner holds, in one transaction with `effect`, only while its lease holds. */
  async function finish (job: ClaimedJob, set: string, params: unknown[], effect?: (client: pg.ClientBase) => Promise<void>): Promise<{ outcome: LeaseOutcome, state: JobState }> {
    return await transaction(async (client) => {
      const { rows } = await client.query(
        `UPDATE jobs SET ${set}, lock_token = NULL, locked_by = NULL, locked_until = NULL, updated_at = $3
         WHERE id = $1 AND lock_token = $2 AND state = 'running' RETURNING state`,
        [job.id, job.lockToken, now(), ...params])
      if (rows[0] === undefined) return { outcome: 'lost' as const, state: job.state }
      if (effect !== undefined) await effect(client)
      return { outcome: 'done' as const, state: rows[0].state as JobState }
    })
  }

  async function dueWork (types: readonly string[]): Promise<{ due: Set<string>, nextAt: Date | null }> {
    if (types.length === 0) return { due: new Set(), nextAt: null }
    // The same conditions as claim's expired and due rows, each through its partial index
    // (jobs_claimable, jobs_running): the earliest per type.
    const { rows } = await pool.query(
      `SELECT type, false AS lease, min(run_after) AS at FROM jobs WHERE state = 'queued' AND type = ANY($1::text[]) GROUP BY type
       UNION ALL
       SELECT type, true, min(locked_until) FROM jobs WHERE state = 'running' AND type = ANY($1::text[]) GROUP BY type`,
      [[...types]])
    const at = now().getTime()
    const due = new Set<string>()
    let nextAt: Date | null = null
    for (const row of rows as Array<{ type: string, lease: boolean, at: Date | null }>) {
      if (row.at === null) continue
      // Due from run_after on; a lease is taken over only once it has run out.
      if (row.lease ? row.at.getTime() < at : row.at.getTime() <= at) due.add(row.type)
      if (nextAt === null || row.at < nextAt) nextAt = row.at
    }
    return { due, nextAt }
  }

  return {
    async enqueue (job, client) {
      const at = now()
      const { rows } = await (client ?? pool).query(
        `INSERT INTO jobs (id, type, patient_id, payload, max_attempts, created_by, run_after, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $7) RETURNING ${COLUMNS}`,
        [randomUUID(), job.type, job.patientId ?? null, JSON.stringify(job.payload ?? {}), job.maxAttempts ?? defaultMaxAttempts, job.createdBy ?? null, at])
      const created = toJob(rows[0])
      // Inside a caller's transaction the job is not visible yet: the caller wakes the runner after COMMIT.
      if (client === undefined) for (const listener of listeners) listener(created)
      return created
    },

    dueWork,

    async claim ({ type, max, typeLimit, runnerId }) {
      if (max <= 0 || typeLimit <= 0) return []
      return await transaction(async (client) => {
        const at = now()
        // One runner's claims of one type are serialized (a transaction-scoped advisory lock on
        // the type and the runner), so counting what it holds and claiming up to its limit cannot
        // race with its own other claim. Other runners claim in parallel: SKIP LOCKED passes over
        // rows another transaction holds (another runner's claim, a cancel, a completion) instead
        // of waiting for it.
        await client.query("SELECT pg_advisory_xact_lock(hashtext('vigil.jobs.claim:' || $1), hashtext($2))", [type, runnerId])
        // Leases that ran out: the runner died. Cancelled if that was asked, failed if the
        // attempts are used up (the job may be what kills its runner), else claimable below.
        // SKIP LOCKED: rows another runner's claim is ending right now are left to it.
        await client.query(
          `WITH expired AS (
             SELECT id FROM jobs
             WHERE type = $1 AND state = 'running' AND locked_until < $2 AND (cancel_requested OR attempts >= max_attempts)
             FOR UPDATE SKIP LOCKED)
           UPDATE jobs j SET state = CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'failed' END,
             error = CASE WHEN j.cancel_requested THEN j.error ELSE 'the runner stopped during the last attempt (lease expired)' END,
             finished_at = $2, updated_at = $2, lock_token = NULL, locked_by = NULL, locked_until = NULL
           FROM expired WHERE j.id = expired.id`,
          [type, at])
        const { rows: [running] } = await client.query(
          "SELECT count(*)::int AS n FROM jobs WHERE type = $1 AND state = 'running' AND locked_by = $2 AND locked_until >= $3", [type, runnerId, at])
        const free = Math.min(max, typeLimit - (running.n as number))
        if (free <= 0) return []
        const { rows } = await client.query(
          `WITH due AS (
             SELECT id FROM jobs
             WHERE type = $1 AND ((state = 'queued' AND run_after <= $2) OR (state = 'running' AND locked_until < $2))
             ORDER BY run_after, created_at LIMIT $3 FOR UPDATE SKIP LOCKED)
           UPDATE jobs j SET state = 'running', attempts = j.attempts + 1, lock_token = gen_random_uuid(), locked_by = $4,
             locked_until = $5, started_at = coalesce(j.started_at, $2), progress = 0, updated_at = $2
           FROM due WHERE j.id = due.id RETURNING ${COLUMNS.split(',').map((c) => `j.${c.trim()}`).join(', ')}`,
          [type, at, free, runnerId, new Date(at.getTime() + leaseMs)])
        return rows.map(toClaimed)
      })
    },

    async heartbeat (held) {
      if (held.length === 0) return { lost: [], cancelRequested: [] }
      const at = now()
      const { rows } = await pool.query(
        `UPDATE jobs j SET locked_until = $4, progress = h.progress, updated_at = $3
         FROM unnest($1::uuid[], $2::uuid[], $5::real[]) AS h(id, lock_token, progress)
         WHERE j.id = h.id AND j.lock_token = h.lock_token AND j.state = 'running'
         RETURNING j.id, j.cancel_requested`,
        [held.map((h) => h.id), held.map((h) => h.lockToken), at, new Date(at.getTime() + leaseMs),
          held.map((h) => Math.min(1, Math.max(0, h.progress)))])
      const kept = new Set(rows.map((r) => r.id as string))
      return {
        lost: held.filter((h) => !kept.has(h.id)).map((h) => h.id),
        cancelRequested: rows.filter((r) => r.cancel_requested === true).map((r) => r.id as string)
      }
    },

    async complete (job, result, apply) {
      const { outcome } = await finish(job,
        "state = 'succeeded', progress = 1, result = $4, error = NULL, finished_at = $3, completions = completions + 1",
        [JSON.stringify(result)], apply)
      return outcome
    },

    async fail (job, error, failOptions = {}) {
      const final = failOptions.permanent === true || job.attempts >= job.maxAttempts
      const runAfter = new Date(now().getTime() + retryDelay(job.attempts))
      return await finish(job,
        final
          ? "state = 'failed', error = $4, finished_at = $3"
          : "state = 'queued', error = $4, run_after = $5, progress = 0",
        final ? [error] : [error, runAfter],
        final ? failOptions.onFinal : undefined)
    },

    async markCancelled (job, onFinal) {
      const { outcome } = await finish(job, "state = 'cancelled', finished_at = $3", [], onFinal)
      return outcome
    },

    async release (job) {
      const { outcome } = await finish(job, "state = 'queued', attempts = attempts - 1, run_after = $3, progress = 0", [])
      return outcome
    },

    async cancel (id, onFinal) {
      return await transaction(async (client) => {
        const at = now()
        const { rows } = await client.query(`SELECT ${COLUMNS} FROM jobs WHERE id = $1 FOR UPDATE`, [id])
        if (rows[0] === undefined) return null
        const state = rows[0].state as JobState
        if (state === 'queued') {
          const { rows: [row] } = await client.query(
            `UPDATE jobs SET state = 'cancelled', cancel_requested = true, finished_at = $2, updated_at = $2 WHERE id = $1 RETURNING ${COLUMNS}`, [id, at])
          if (onFinal !== undefined) await onFinal(client)
          return toJob(row)
        }
        if (state === 'running') {
          const { rows: [row] } = await client.query(
            `UPDATE jobs SET cancel_requested = true, updated_at = $2 WHERE id = $1 RETURNING ${COLUMNS}`, [id, at])
          return toJob(row)
        }
        return toJob(rows[0])
      })
    },

    async get (id) {
      const { rows } = await pool.query(`SELECT ${COLUMNS} FROM jobs WHERE id = $1`, [id])
      return rows[0] === undefined ? null : toJob(rows[0])
    },

    async list ({ type, state, limit, before, patientIds }) {
      const { rows } = await pool.query(
        `SELECT ${COLUMNS} FROM jobs
         WHERE ($1::text IS NULL OR type = $1) AND ($2::text IS NULL OR state = $2)
           AND ($3::timestamptz IS NULL OR (created_at, id) < ($3::timestamptz, $4::uuid))
           AND ($5::uuid[] IS NULL OR patient_id IS NULL OR patient_id = ANY($5::uuid[]))
         ORDER BY created_at DESC, id DESC LIMIT $6`,
        [type ?? null, state ?? null, before?.createdAt ?? null, before?.id ?? null, patientIds === null ? null : [...patientIds], limit])
      return rows.map(toJob)
    },

    async counts () {
      const { rows } = await pool.query('SELECT state, count(*)::int AS n FROM jobs GROUP BY state')
      const out = Object.fromEntries(jobStates.map((s) => [s, 0])) as Record<JobState, number>
      for (const row of rows) out[row.state as JobState] = row.n as number
      return out
    },

    announce (job) {
      for (const listener of listeners) listener(job)
    },

    onEnqueued (listener) {
      listeners.add(listener)
      return () => { listeners.delete(listener) }
    }
  }
}
