import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import pino from 'pino'
import t from 'tap'
import { createJobQueue, retryDelayMs, type JobQueue } from '../../jobs/job-queue.ts'
import { startJobs } from '../../jobs/start-jobs.ts'
import { readWavInfo } from '../../jobs/transcription/wav.ts'
import { wordErrorRate } from '../../jobs/transcription/word-error-rate.ts'
import { openDatabase, type Database } from '../../store/database.ts'
import { sentences, speechDir, synthesize } from '../helpers/speech.ts'
import { openTestDatabase } from '../helpers/postgres.ts'
import { testKeyring } from '../helpers/keys.ts'
import { seedEmbeddedDatabase } from '../helpers/pglite-template.ts'
import { manualDateClock } from '../helpers/job-clock.ts'

// Audio and transcripts are encrypted at rest.
const keyring = testKeyring()

const log = pino({ level: 'silent' })
const db = await openTestDatabase(t, { poolSize: 12 })

const manualClock = manualDateClock

let typeCounter = 0
/** A fresh job type per test, so tests do not see each other's jobs. */
const freshType = (): string => `test-${++typeCounter}`

t.test('retry delays grow exponentially to a cap', async (t) => {
  t.same([1, 2, 3, 4].map((a) => retryDelayMs(a)), [5000, 10_000, 20_000, 40_000])
  t.equal(retryDelayMs(30), 10 * 60_000)
})

t.test('concurrent runners claiming with SKIP LOCKED never get the same job', async (t) => {
  const clock = manualClock()
  const queue = createJobQueue({ pool: db.pool, now: clock.now })
  const type = freshType()
  for (let i = 0; i < 30; i++) await queue.enqueue({ type })
  const claims = await Promise.all(Array.from({ length: 6 }, (_, r) =>
    queue.claim({ type, max: 4, typeLimit: 100, runnerId: `runner-${r}` })))
  const ids = claims.flat().map((j) => j.id)
  t.equal(ids.length, 24, 'six runners × four')
  t.equal(new Set(ids).size, 24, 'no job claimed twice')
  t.ok(claims.flat().every((j) => j.state === 'running' && j.attempts === 1), 'claimed jobs are running, first attempt')
  const rest = await queue.claim({ type, max: 100, typeLimit: 100, runnerId: 'late' })
  t.equal(rest.length, 6, 'the rest is left for the next claim')
})

t.test('the per-type limit holds per runner; other types are not held back', async (t) => {
  const queue = createJobQueue({ pool: db.pool })
  const [limited, other] = [freshType(), freshType()]
  for (let i = 0; i < 10; i++) {
    await queue.enqueue({ type: limited })
    await queue.enqueue({ type: other })
  }
  const claims = await Promise.all(Array.from({ length: 4 }, async () =>
    await queue.claim({ type: limited, max: 5, typeLimit: 3, runnerId: 'r' })))
  t.equal(claims.flat().length, 3, 'three of the limited type run in this runner, whichever claim got them')
  t.same(await queue.claim({ type: limited, max: 5, typeLimit: 3, runnerId: 'r' }), [], 'none while three run')
  t.equal((await queue.claim({ type: other, max: 5, typeLimit: 5, runnerId: 'r' })).length, 5)
  const done = claims.flat()[0]!
  t.equal(await queue.complete(done, { ok: true }), 'done')
  t.equal((await queue.claim({ type: limited, max: 5, typeLimit: 3, runnerId: 'r' })).length, 1, 'one slot freed, one claimed')
  t.equal((await queue.claim({ type: limited, max: 5, typeLimit: 3, runnerId: 'another' })).length, 3, 'another runner has its own three')
})

t.test('a failing job is retried with backoff until its attempts are used up, then fails', async (t) => {
  const clock = manualClock()
  const queue = createJobQueue({ pool: db.pool, now: clock.now })
  const type = freshType()
  const job = await queue.enqueue({ type, maxAttempts: 3 })
  const delays = [5000, 10_000]
  for (let attempt = 1; attempt <= 3; attempt++) {
    const [claimed] = await queue.claim({ type, max: 1, typeLimit: 1, runnerId: 'r' })
    t.equal(claimed?.id, job.id, `attempt ${attempt} claimed`)
    t.equal(claimed!.attempts, attempt)
    const { outcome, state } = await queue.fail(claimed!, `boom ${attempt}`)
    t.equal(outcome, 'done')
    if (attempt < 3) {
      t.equal(state, 'queued', 'back in the queue')
      const delay = delays[attempt - 1]!
      clock.advance(delay - 1)
      t.same(await queue.claim({ type, max: 1, typeLimit: 1, runnerId: 'r' }), [], `not due before ${delay} ms`)
      clock.advance(1)
    } else {
      t.equal(state, 'failed', 'failed for good after the last attempt')
    }
  }
  const final = await queue.get(job.id)
  t.match(final, { state: 'failed', attempts: 3, error: 'boom 3', completions: 0 })
  t.ok(final!.finishedAt !== null)
})

t.test('a permanent failure fails at once', async (t) => {
  const queue = createJobQueue({ pool: db.pool })
  const type = freshType()
  await queue.enqueue({ type, maxAttempts: 5 })
  const [claimed] = await queue.claim({ type, max: 1, typeLimit: 1, runnerId: 'r' })
  t.match(await queue.fail(claimed!, 'bad input', { permanent: true }), { outcome: 'done', state: 'failed' })
})

t.test('cancel: a queued job at once, a running job through its runner, an ended job not at all', async (t) => {
  const queue = createJobQueue({ pool: db.pool })
  const type = freshType()
  const queued = await queue.enqueue({ type })
  let finalRan = 0
  t.match(await queue.cancel(queued.id, async () => { finalRan++ }), { state: 'cancelled', cancelRequested: true })
  t.equal(finalRan, 1, 'the job\'s input is cleaned up in the same transaction')
  t.same(await queue.claim({ type, max: 5, typeLimit: 5, runnerId: 'r' }), [], 'a cancelled job is never claimed')

  await queue.enqueue({ type })
  const [running] = await queue.claim({ type, max: 1, typeLimit: 1, runnerId: 'r' })
  t.match(await queue.cancel(running!.id), { state: 'running', cancelRequested: true })
  const beat = await queue.heartbeat([{ id: running!.id, lockToken: running!.lockToken, progress: 0.5 }])
  t.same(beat.cancelRequested, [running!.id], 'the runner learns of it on its heartbeat')
  t.equal(await queue.markCancelled(running!), 'done')
  t.match(await queue.get(running!.id), { state: 'cancelled', progress: 0.5 })
  t.match(await queue.cancel(running!.id), { state: 'cancelled' }, 'cancelling again changes nothing')
  t.equal(await queue.cancel('00000000-0000-4000-8000-000000000000'), null)
})

t.test('a job whose runner died is reclaimed after its lease; the dead runner cannot complete it', async (t) => {
  const clock = manualClock()
  const queue = createJobQueue({ pool: db.pool, now: clock.now, leaseMs: 10_000 })
  const type = freshType()
  const job = await queue.enqueue({ type })
  const [first] = await queue.claim({ type, max: 1, typeLimit: 1, runnerId: 'a' })
  clock.advance(9000)
  t.same((await queue.heartbeat([{ id: first!.id, lockToken: first!.lockToken, progress: 0.1 }])).lost, [], 'the heartbeat renews the lease')
  clock.advance(9000)
  t.same(await queue.claim({ type, max: 1, typeLimit: 1, runnerId: 'b' }), [], 'renewed: not reclaimable yet')
  clock.advance(1001)
  const [second] = await queue.claim({ type, max: 1, typeLimit: 1, runnerId: 'b' })
  t.equal(second?.id, job.id, 'reclaimed after the lease ran out')
  t.equal(second!.attempts, 2, 'the lost attempt counts')
  t.same((await queue.heartbeat([{ id: first!.id, lockToken: first!.lockToken, progress: 0.2 }])).lost, [first!.id], 'runner a learns it lost the job')
  let applied = 0
  t.equal(await queue.complete(first!, { by: 'a' }, async () => { applied++ }), 'lost', 'runner a cannot complete it')
  t.equal(await queue.complete(second!, { by: 'b' }, async () => { applied++ }), 'done')
  t.equal(applied, 1, 'the effect ran once')
  t.match(await queue.get(job.id), { state: 'succeeded', result: { by: 'b' }, completions: 1, progress: 1 })
})

t.test('dueWork names the types a claim would find work in, and only those', async (t) => {
  const clock = manualClock()
  const queue = createJobQueue({ pool: db.pool, now: clock.now, leaseMs: 10_000 })
  const [queued, retrying, running, idle] = [freshType(), freshType(), freshType(), freshType()]
  await queue.enqueue({ type: queued })
  await queue.enqueue({ type: retrying })
  const [failing] = await queue.claim({ type: retrying, max: 1, typeLimit: 1, runnerId: 'a' })
  await queue.fail(failing!, 'try again')
  await queue.enqueue({ type: running })
  t.equal((await queue.claim({ type: running, max: 1, typeLimit: 1, runnerId: 'a' })).length, 1)
  const all = [queued, retrying, running, idle]
  t.same([...(await queue.dueWork(all)).due], [queued], 'a due job; not a retry waiting out its delay, a live lease, or no job at all')
  clock.advance(10_001)
  t.same([...(await queue.dueWork(all)).due].sort(), [queued, retrying, running].sort(), 'the retry is due and the lease ran out')
  t.equal((await queue.claim({ type: running, max: 1, typeLimit: 1, runnerId: 'b' })).length, 1, 'and a claim finds the expired one')
  t.same([...(await queue.dueWork([])).due], [])
})

t.test('an expired lease on the last attempt fails the job; with a cancel pending it is cancelled', async (t) => {
  const clock = manualClock()
  const queue = createJobQueue({ pool: db.pool, now: clock.now, leaseMs: 1000 })
  const type = freshType()
  const last = await queue.enqueue({ type, maxAttempts: 1 })
  const cancelMe = await queue.enqueue({ type, maxAttempts: 5 })
  const claimed = await queue.claim({ type, max: 2, typeLimit: 2, runnerId: 'dies' })
  t.equal(claimed.length, 2)
  await queue.cancel(cancelMe.id)
  clock.advance(1001)
  t.same(await queue.claim({ type, max: 2, typeLimit: 2, runnerId: 'next' }), [])
  t.match(await queue.get(last.id), { state: 'failed', error: /lease expired/ })
  t.match(await queue.get(cancelMe.id), { state: 'cancelled' })
})

t.test('release gives a job back without spending an attempt', async (t) => {
  const queue = createJobQueue({ pool: db.pool })
  const type = freshType()
  const job = await queue.enqueue({ type })
  const [claimed] = await queue.claim({ type, max: 1, typeLimit: 1, runnerId: 'r' })
  t.equal(await queue.release(claimed!), 'done')
  t.match(await queue.get(job.id), { state: 'queued', attempts: 0 })
})

t.test('list filters by type and state, newest first, and by visible patients', async (t) => {
  const clock = manualClock()
  const queue = createJobQueue({ pool: db.pool, now: clock.now })
  const type = freshType()
  const { rows: [p] } = await db.pool.query("INSERT INTO patients (id, display_name) VALUES (gen_random_uuid(), 'x') RETURNING id")
  const a = await queue.enqueue({ type, patientId: p.id })
  clock.advance(1)
  const b = await queue.enqueue({ type })
  const listed = await queue.list({ type, limit: 10, patientIds: null })
  t.same(listed.map((j) => j.id), [b.id, a.id])
  t.same((await queue.list({ type, limit: 10, patientIds: [] })).map((j) => j.id), [b.id], 'a patient\'s job is hidden from who may not see the patient')
  t.same((await queue.list({ type, state: 'running', limit: 10, patientIds: null })), [])
  t.same((await queue.list({ type, limit: 1, before: { createdAt: b.createdAt, id: b.id }, patientIds: null })).map((j) => j.id), [a.id], 'paging')
})

t.test('embedded PGlite: claim, heartbeat, complete, fail and cancel; a voice note transcribed', async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-jobs-pglite-'))
  const lite: Database = await openDatabase({ databaseUrl: null, dataDir: await seedEmbeddedDatabase(dir), log })
  t.teardown(async () => {
    await lite.close()
    await fs.rm(dir, { recursive: true, force: true })
  })
  const clock = manualClock()
  const queue: JobQueue = createJobQueue({ pool: lite.pool, now: clock.now })
  const ok = await queue.enqueue({ type: 'x' })
  const bad = await queue.enqueue({ type: 'x', maxAttempts: 1 })
  const gone = await queue.enqueue({ type: 'x' })
  t.match(await queue.cancel(gone.id), { state: 'cancelled' })
  const claimed = await queue.claim({ type: 'x', max: 5, typeLimit: 5, runnerId: 'r' })
  t.same(claimed.map((j) => j.id).sort(), [ok.id, bad.id].sort())
  t.same(await queue.heartbeat(claimed.map((j) => ({ id: j.id, lockToken: j.lockToken, progress: 0.5 }))), { lost: [], cancelRequested: [] })
  t.equal(await queue.complete(claimed.find((j) => j.id === ok.id)!, { n: 1 }), 'done')
  t.match(await queue.fail(claimed.find((j) => j.id === bad.id)!, 'no'), { state: 'failed' })
  t.same(await queue.counts(), { queued: 0, running: 0, succeeded: 1, failed: 1, cancelled: 1 })

  // A voice note end to end on PGlite: audio as bytea through pglite-socket, one connection shared by runner and store.
  const speech = await speechDir()
  t.teardown(() => fs.rm(speech, { recursive: true, force: true }))
  const audio = await fs.readFile(await synthesize(sentences[2]!, speech, 'lite'))
  const { rows: [p] } = await lite.pool.query("INSERT INTO patients (id, display_name) VALUES (gen_random_uuid(), 'x') RETURNING id")
  const jobs = await startJobs({ pool: lite.pool, workerThreads: 1, engine: { kind: 'pocketsphinx' }, leaseMs: 60_000, maxAttempts: 1, log, keyring, pollIntervalMs: 100 })
  t.teardown(() => jobs.close())
  const { voiceNote } = await jobs.voiceNotes.create({ patientId: p.id, authorTokenId: 't', authorUserId: null, audio, info: readWavInfo(audio) })
  let note = voiceNote
  for (let i = 0; i < 600 && (note.state === 'queued' || note.state === 'running'); i++) {
    await new Promise((resolve) => setTimeout(resolve, 100))
    note = (await jobs.voiceNotes.get(voiceNote.id))!
  }
  t.equal(note.state, 'succeeded')
  t.ok(wordErrorRate(sentences[2]!, note.transcript!).rate <= 0.5, `transcribed on PGlite: "${note.transcript}"`)
})
