import fs from 'node:fs/promises'
import pino from 'pino'
import t from 'tap'
import { createJobQueue } from '../../jobs/job-queue.ts'
import { PermanentJobError, startJobRunner } from '../../jobs/job-runner.ts'
import { startJobs } from '../../jobs/start-jobs.ts'
import { readWavInfo } from '../../jobs/transcription/wav.ts'
import { openDatabase } from '../../store/database.ts'
import { createVoiceNoteStore } from '../../jobs/voice-notes.ts'
import { createTestDatabase } from '../helpers/postgres.ts'
import { sentences, speechDir, synthesize } from '../helpers/speech.ts'
import { testKeyring } from '../helpers/keys.ts'
import { waitFor } from '../helpers/wait.ts'

// Audio and transcripts are encrypted at rest: one keyring for everything in this file.
const keyring = testKeyring()

const log = pino({ level: 'silent' })
const testDb = await createTestDatabase()
const db = await openDatabase({ databaseUrl: testDb.url, dataDir: '', log })
const dir = await speechDir()
t.teardown(async () => {
  await db.close()
  await testDb.drop()
  await fs.rm(dir, { recursive: true, force: true })
})

// The most jobs ever running at once, recorded by the database itself after every statement
// that changes a job's state: exact, whatever the timing.
await db.pool.query(`
  CREATE TABLE running_samples (type text, n int);
  CREATE FUNCTION sample_running () RETURNS trigger LANGUAGE plpgsql AS $$
  BEGIN
    INSERT INTO running_samples SELECT type, count(*) FROM jobs WHERE state = 'running' GROUP BY type;
    RETURN NULL;
  END $$;
  CREATE TRIGGER jobs_running_sample AFTER UPDATE ON jobs FOR EACH STATEMENT EXECUTE FUNCTION sample_running();`)

async function maxRunning (type: string): Promise<number> {
  const { rows: [r] } = await db.pool.query('SELECT coalesce(max(n), 0)::int AS n FROM running_samples WHERE type = $1', [type])
  return r.n as number
}

t.test('the runner never runs more than its workers; each freed slot takes the next job', async (t) => {
  const queue = createJobQueue({ pool: db.pool })
  const gates = new Map<string, () => void>()
  const started: string[] = []
  for (let i = 0; i < 10; i++) await queue.enqueue({ type: 'gated' })
  const runner = startJobRunner({
    queue,
    workers: 3,
    pollIntervalMs: 50,
    log,
    handlers: {
      gated: {
        async run (job) {
          started.push(job.id)
          await new Promise<void>((resolve) => gates.set(job.id, resolve))
          return { result: { ok: true } }
        }
      }
    }
  })
  t.teardown(() => runner.close())
  await waitFor('three jobs to start', async () => gates.size === 3, 120_000)
  t.equal(runner.running(), 3)
  // Let them go one by one: each end makes room for exactly one more.
  for (let released = 0; released < 10; released++) {
    const id = [...gates.keys()][0]!
    gates.get(id)!()
    gates.delete(id)
    const expected = Math.min(3, 10 - released - 1)
    await waitFor(`${expected} running after ${released + 1} released`, async () =>
      gates.size === expected && (await queue.counts()).succeeded === released + 1, 120_000)
  }
  t.equal(new Set(started).size, 10, 'every job ran once')
  t.equal(await maxRunning('gated'), 3, 'at most three ran at once')
  t.same(await queue.counts(), { queued: 0, running: 0, succeeded: 10, failed: 0, cancelled: 0 })
})

t.test('the runner retries failing jobs until their attempts are used up', async (t) => {
  // No backoff wait here: the delays themselves are tested with a manual clock in job-queue.test.ts.
  const queue = createJobQueue({ pool: db.pool, maxAttempts: 3, retryDelay: () => 0 })
  const flaky = await queue.enqueue({ type: 'retry', payload: { failures: 2 } })
  const broken = await queue.enqueue({ type: 'retry', payload: { failures: 99 } })
  const hopeless = await queue.enqueue({ type: 'retry', payload: { failures: -1 } })
  const seen = new Map<string, number>()
  const runner = startJobRunner({
    queue,
    workers: 2,
    pollIntervalMs: 50,
    log,
    handlers: {
      retry: {
        async run (job) {
          const n = (seen.get(job.id) ?? 0) + 1
          seen.set(job.id, n)
          if (job.payload.failures === -1) throw new PermanentJobError('input can never work')
          if (n <= (job.payload.failures as number)) throw new Error(`failure ${n}`)
          return { result: { attempts: n } }
        }
      }
    }
  })
  t.teardown(() => runner.close())
  await waitFor('the three jobs to end', async () =>
    (await db.pool.query("SELECT count(*)::int AS n FROM jobs WHERE type = 'retry' AND state IN ('succeeded', 'failed')")).rows[0].n === 3, 120_000)
  t.match(await queue.get(flaky.id), { state: 'succeeded', attempts: 3, result: { attempts: 3 }, completions: 1 })
  t.match(await queue.get(broken.id), { state: 'failed', attempts: 3, error: 'failure 3', completions: 0 })
  t.match(await queue.get(hopeless.id), { state: 'failed', attempts: 1, error: 'input can never work' })
})

t.test('WORKER_THREADS=2: real transcriptions, at most two at once, all finish, each once', async (t) => {
  const N = 2
  const { rows: [patient] } = await db.pool.query("INSERT INTO patients (id, display_name) VALUES (gen_random_uuid(), 'p') RETURNING id")
  const enqueuer = createJobQueue({ pool: db.pool })
  const store = createVoiceNoteStore(db.pool, enqueuer, keyring)
  const audio = await fs.readFile(await synthesize(sentences[6]!, dir, 'c', { engineNative: true }))
  for (let i = 0; i < 6; i++) {
    await store.create({ patientId: patient.id, authorTokenId: 'test', authorUserId: null, audio, info: readWavInfo(audio) })
  }
  const jobs = await startJobs({ pool: db.pool, workerThreads: N, engine: { kind: 'pocketsphinx' }, leaseMs: 60_000, maxAttempts: 3, log, keyring, pollIntervalMs: 100 })
  t.teardown(() => jobs.close())
  t.equal(jobs.workerPool.threads, N, 'the pool has N threads')
  const ended = async (): Promise<number> => (await db.pool.query(
    "SELECT count(*)::int AS n FROM jobs WHERE type = 'transcription' AND state IN ('succeeded', 'failed', 'cancelled')")).rows[0].n
  await waitFor('all transcriptions to end', async () => await ended() === 6, 120_000)
  t.equal((await db.pool.query("SELECT count(*)::int AS n FROM jobs WHERE type = 'transcription' AND state = 'succeeded'")).rows[0].n, 6, 'all succeeded')
  t.equal(await maxRunning('transcription'), N, `at most ${N} ran at once (and ${N} did)`)
  const { rows } = await db.pool.query("SELECT completions, attempts FROM jobs WHERE type = 'transcription'")
  t.ok(rows.every((r) => r.completions === 1 && r.attempts === 1), 'each completed exactly once, first attempt')
  const { rows: notes } = await db.pool.query('SELECT transcript FROM voice_notes WHERE patient_id = $1', [patient.id])
  t.ok(notes.every((n) => typeof n.transcript === 'string' && n.transcript.length > 0), 'every note has its transcript')
  t.equal((await db.pool.query('SELECT count(*)::int AS n FROM voice_note_audio')).rows[0].n, 0, 'no audio is kept after transcription')
})
