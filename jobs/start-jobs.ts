import type pg from 'pg'
import type { Keyring } from '../crypto/field-encryption.ts'
import type { Logger } from 'pino'
import { createVoiceNoteStore, TRANSCRIPTION_JOB, type VoiceNoteStore } from './voice-notes.ts'
import { createWorkerPool, taskFile } from '../workers/pool.ts'
import { createJobQueue, type JobQueue } from './job-queue.ts'
import { startJobRunner, type JobHandler, type JobRunner } from './job-runner.ts'
import { transcriptionJobHandler, type TranscriptionPool } from './transcription-job.ts'
import type { EngineSpec } from './transcription/engine.ts'

export interface JobsOptions {
  pool: pg.Pool
  /** WORKER_THREADS: pool threads, and jobs this process runs at once. */
  workerThreads: number
  engine: EngineSpec
  /** JOB_LEASE_SECONDS × 1000. */
  leaseMs: number
  /** JOB_MAX_ATTEMPTS. */
  maxAttempts: number
  log: Logger
  /** PHI keys: audio and transcripts are encrypted at rest like the patient record. */
  keyring: Keyring
  pollIntervalMs?: number
  /** The runner's idlePollIntervalMs (jobs/job-runner.ts): only where no other process enqueues. */
  idlePollIntervalMs?: number
  now?: () => Date
  /** Handlers of job types owned by rooms above jobs/ (the de-identified export), by type. */
  handlers?: Record<string, JobHandler>
}

export interface Jobs {
  readonly queue: JobQueue
  readonly voiceNotes: VoiceNoteStore
  readonly runner: JobRunner
  readonly workerPool: TranscriptionPool
  close (): Promise<void>
}

/**
 * The background jobs of one process: the queue, the transcription pool (WORKER_THREADS
 * threads) and a runner that feeds it. vigil.ts starts it after the database and closes it
 * before: running jobs are stopped and given back to the queue, then the pool ends.
 */
export async function startJobs (options: JobsOptions): Promise<Jobs> {
  const queue = createJobQueue({ pool: options.pool, leaseMs: options.leaseMs, maxAttempts: options.maxAttempts, now: options.now })
  const voiceNotes = createVoiceNoteStore(options.pool, queue, options.keyring)
  // Audio of jobs that ended while no handler ran (a runner died on the last attempt).
  const swept = await voiceNotes.deleteAudioOfEndedJobs()
  if (swept > 0) options.log.info({ count: swept }, 'audio of ended voice note jobs deleted')
  const workerPool: TranscriptionPool = createWorkerPool({
    filename: taskFile(import.meta.url, 'transcription/transcribe-task'),
    threads: options.workerThreads,
    // No idle thread: a transcription waits in the queue anyway, and a thread starts in about a second.
    minThreads: 0
  })
  const runner = startJobRunner({
    queue,
    handlers: { ...options.handlers, [TRANSCRIPTION_JOB]: transcriptionJobHandler({ pool: workerPool, voiceNotes, engine: options.engine }) },
    workers: options.workerThreads,
    concurrency: { [TRANSCRIPTION_JOB]: options.workerThreads },
    log: options.log,
    pollIntervalMs: options.pollIntervalMs,
    idlePollIntervalMs: options.idlePollIntervalMs
  })
  return {
    queue,
    voiceNotes,
    runner,
    workerPool,
    async close () {
      await runner.close()
      await workerPool.close()
    }
  }
}
