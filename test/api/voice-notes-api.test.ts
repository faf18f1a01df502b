import fs from 'node:fs/promises'
import pino from 'pino'
import t from 'tap'
import { buildApi } from '../../api/app.ts'
import type { ApiDeps } from '../../api/app.ts'
import type { PatientAccessPolicy } from '../../access/patient-access.ts'
import { createJobQueue } from '../../jobs/job-queue.ts'
import { startJobRunner, type JobHandler } from '../../jobs/job-runner.ts'
import { transcriptionJobHandler, type TranscriptionPool } from '../../jobs/transcription-job.ts'
import { pcm16WavHeader } from '../../jobs/transcription/wav.ts'
import { wordErrorRate } from '../../jobs/transcription/word-error-rate.ts'
import { openDatabase } from '../../store/database.ts'
import { createVoiceNoteStore, TRANSCRIPTION_JOB } from '../../jobs/voice-notes.ts'
import { createWorkerPool, taskFile } from '../../workers/pool.ts'
import { apiDepsFor } from '../helpers/api-deps.ts'
import { createLogCapture } from '../helpers/log-capture.ts'
import { createTestDatabase } from '../helpers/postgres.ts'
import { sentences, speechDir, synthesize } from '../helpers/speech.ts'
import { testKeyring } from '../helpers/keys.ts'
import { waitFor } from '../helpers/wait.ts'

// Audio and transcripts are encrypted at rest: one keyring for everything in this file.
const keyring = testKeyring()

const capture = createLogCapture()
const log = pino({ level: 'debug' }, capture.stream)
const testDb = await createTestDatabase()
const db = await openDatabase({ databaseUrl: testDb.url, dataDir: '', log })
const dir = await speechDir()
// A short note at the engine's own format keeps 20 transcriptions quick (sox conversion: transcription.test.ts).
const spoken = sentences[4]!
const speech = await fs.readFile(await synthesize(spoken, dir, 'note', { engineNative: true }))

const queue = createJobQueue({ pool: db.pool })
const voiceNotes = createVoiceNoteStore(db.pool, queue, keyring)
const workerPool: TranscriptionPool = createWorkerPool({ filename: taskFile(new URL('../../jobs/transcription-job.ts', import.meta.url).href, 'transcription/transcribe-task'), threads: 2 })
const real = transcriptionJobHandler({ pool: workerPool, voiceNotes, engine: { kind: 'pocketsphinx' } })
// Jobs wait at this gate until the test opens it, so "the API answered before any job ended"
// is a fact of the test, not a race. A cancel passes the gate.
let openGate!: () => void
const gate = new Promise<void>((resolve) => { openGate = resolve })
const gated: JobHandler = {
  async run (job, context) {
    await Promise.race([gate, new Promise((resolve) => context.signal.addEventListener('abort', resolve, { once: true }))])
    context.signal.throwIfAborted()
    return await real.run(job, context)
  },
  onFinal: real.onFinal
}
const runner = startJobRunner({ queue, handlers: { [TRANSCRIPTION_JOB]: gated }, workers: 2, log, pollIntervalMs: 100 })

const deps: ApiDeps = { ...apiDepsFor(db, log), jobs: queue, voiceNotes, voiceNoteLimits: { maxBytes: 2 * 1024 * 1024, maxSeconds: 30 } }
const app = await buildApi(deps)
t.teardown(async () => {
  openGate()
  await app.close()
  await runner.close()
  await workerPool.close()
  await db.close()
  await testDb.drop()
  await fs.rm(dir, { recursive: true, force: true })
})
const { token } = await deps.tokens.create('voice notes test', 'admin')
const headers = { authorization: `Bearer ${token}` }
const patient = (await app.inject({ method: 'POST', url: '/v1/patients', headers, payload: { displayName: 'Voice Patient' } })).json() as { id: string }
const wav = { ...headers, 'content-type': 'audio/wav' }

async function endedJobs (): Promise<number> {
  const { rows: [r] } = await db.pool.query("SELECT count(*)::int AS n FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled')")
  return r.n as number
}

const accepted: Array<{ jobId: string, voiceNoteId: string, statusUrl: string }> = []

t.test('20 uploads get 20 job ids at once: each 202 arrives while no job has ended', async (t) => {
  const responses = await Promise.all(Array.from({ length: 20 }, async () => {
    const res = await app.inject({ method: 'POST', url: `/v1/patients/${patient.id}/voice-notes`, headers: wav, payload: speech })
    return { res, endedAtResponse: await endedJobs() }
  }))
  for (const { res, endedAtResponse } of responses) {
    t.equal(res.statusCode, 202)
    const body = res.json()
    t.match(body, { jobId: /^[0-9a-f-]{36}$/, voiceNoteId: /^[0-9a-f-]{36}$/, statusUrl: `/v1/jobs/${body.jobId as string}`, durationMs: Number })
    t.equal(res.headers.location, body.statusUrl)
    t.equal(endedAtResponse, 0, 'no job had ended when the answer came')
    accepted.push(body)
  }
  t.equal(new Set(accepted.map((a) => a.jobId)).size, 20, '20 distinct jobs')
  const running = await waitFor('two running jobs', async () => {
    const res = await app.inject({ method: 'GET', url: '/v1/jobs?state=running', headers })
    return res.json().items.length === 2 ? res.json().items : undefined
  }, 60_000)
  t.equal(running.length, 2, 'the runner holds two (its workers); the rest wait in the queue')
  const queued = (await app.inject({ method: 'GET', url: '/v1/jobs?state=queued&type=transcription&limit=100', headers })).json()
  t.equal(queued.items.length, 18)
})

t.test('cancel: a queued job at once; a running one is stopped by its runner', async (t) => {
  const queuedOne = (await app.inject({ method: 'POST', url: `/v1/patients/${patient.id}/voice-notes`, headers: wav, payload: speech })).json()
  const cancelled = await app.inject({ method: 'DELETE', url: queuedOne.statusUrl, headers })
  t.equal(cancelled.statusCode, 200)
  t.match(cancelled.json(), { state: 'cancelled', cancelRequested: true })
  t.equal(await voiceNotes.audioOf(queuedOne.voiceNoteId), null, 'its audio is deleted')
  t.equal((await app.inject({ method: 'DELETE', url: queuedOne.statusUrl, headers })).json().code, 'VIGIL_ERR_CONFLICT', 'an ended job cannot be cancelled')
  // Twelve more of the queued ones, which also keeps this file's transcription work small.
  const waiting = (await app.inject({ method: 'GET', url: '/v1/jobs?state=queued&limit=12', headers })).json().items as Array<{ id: string }>
  for (const job of waiting) t.equal((await app.inject({ method: 'DELETE', url: `/v1/jobs/${job.id}`, headers })).json().state, 'cancelled')

  const running = (await app.inject({ method: 'GET', url: '/v1/jobs?state=running', headers })).json().items[0]
  const asked = await app.inject({ method: 'DELETE', url: `/v1/jobs/${running.id as string}`, headers })
  t.match(asked.json(), { state: 'running', cancelRequested: true })
  const ended = await waitFor('the running job to stop', async () => {
    const job = (await app.inject({ method: 'GET', url: `/v1/jobs/${running.id as string}`, headers })).json()
    return job.state === 'running' ? undefined : job
  }, 60_000)
  t.equal(ended.state, 'cancelled')
  const note = accepted.find((a) => a.jobId === running.id)!
  t.equal(await voiceNotes.audioOf(note.voiceNoteId), null, 'its audio is deleted')
})

t.test('once the jobs run, every other upload is transcribed and listed with the patient', async (t) => {
  openGate()
  const jobs = await waitFor('all jobs to end', async () => {
    const res = await app.inject({ method: 'GET', url: '/v1/jobs?type=transcription&limit=100', headers })
    const items = res.json().items as Array<{ state: string }>
    return items.every((j) => j.state !== 'queued' && j.state !== 'running') ? items : undefined
  }, 60_000)
  t.equal(jobs.filter((j) => j.state === 'succeeded').length, 7)
  t.equal(jobs.filter((j) => j.state === 'cancelled').length, 14)
  const one = accepted.find((a) => jobs.some((j) => (j as { id?: string }).id === a.jobId && j.state === 'succeeded'))!
  const status = (await app.inject({ method: 'GET', url: one.statusUrl, headers })).json()
  t.match(status, { state: 'succeeded', progress: 1, attempts: 1, error: null, result: { voiceNoteId: one.voiceNoteId, words: Number, engine: 'pocketsphinx-clinical' } })
  t.notOk('text' in status.result || 'transcript' in status.result, 'the job result holds no transcript')

  const list = await app.inject({ method: 'GET', url: `/v1/patients/${patient.id}/voice-notes?limit=100`, headers })
  t.equal(list.statusCode, 200)
  const notes = list.json().items as Array<{ state: string, transcript: string | null, words: unknown[] | null, confidence: number | null }>
  t.equal(notes.length, 21, '20 + the one cancelled while queued')
  const done = notes.filter((n) => n.state === 'succeeded')
  t.equal(done.length, 7)
  for (const n of done) {
    t.ok(wordErrorRate(spoken, n.transcript!).rate <= 0.5, `transcript "${n.transcript}"`)
    t.ok(n.words!.length > 0 && n.confidence !== null)
    t.ok((n.words as Array<{ lowConfidence?: unknown }>).every((w) => typeof w.lowConfidence === 'boolean'), 'each word says whether its confidence is low')
  }
  const single = await app.inject({ method: 'GET', url: `/v1/patients/${patient.id}/voice-notes/${one.voiceNoteId}`, headers })
  t.match(single.json(), { id: one.voiceNoteId, state: 'succeeded', transcript: String })
  // At rest: AES-256-GCM envelopes bound to their row; no spoken word in the table.
  const { rows: stored } = await db.pool.query('SELECT id, transcript, words_json, key_id FROM voice_notes WHERE transcript IS NOT NULL')
  t.equal(stored.length, 7)
  for (const row of stored) {
    t.match(row.transcript, /^v1\.k1\./, 'the transcript is an envelope')
    t.match(row.words_json, /^v1\.k1\./, 'the word timings too')
    t.equal(row.key_id, 'k1')
    // The envelopes are base64, where a short word turns up by chance (a 4-letter one, case
    // ignored, in about 1 row of 1,000 this size: "feel" failed CI once): the phrase, and each
    // word of six letters or more (chance ~1e-9 per position).
    const atRest = `${row.transcript as string}${row.words_json as string}`.toLowerCase()
    t.notOk(atRest.includes(spoken.toLowerCase()), 'the phrase not stored in clear')
    for (const word of spoken.toLowerCase().split(/\s+/).filter((w) => w.length >= 6)) {
      t.notOk(atRest.includes(word), `"${word}" not stored in clear`)
    }
  }
  const [first, second] = stored as Array<{ id: string, transcript: string }>
  await db.pool.query('UPDATE voice_notes SET transcript = $2 WHERE id = $1', [second!.id, first!.transcript])
  const moved = await app.inject({ method: 'GET', url: `/v1/patients/${patient.id}/voice-notes/${second!.id}`, headers })
  t.equal(moved.statusCode, 500, 'a transcript copied to another note does not decrypt')
  t.equal(moved.json().code, 'VIGIL_ERR_DECRYPTION_FAILED')
  await db.pool.query('UPDATE voice_notes SET transcript = $2 WHERE id = $1', [second!.id, (stored as Array<{ id: string, transcript: string }>)[1]!.transcript])
  t.equal(await voiceNotes.audioOf(one.voiceNoteId), null, 'audio is deleted once transcribed')
  const paged = (await app.inject({ method: 'GET', url: `/v1/patients/${patient.id}/voice-notes?limit=20`, headers })).json()
  const rest = (await app.inject({ method: 'GET', url: `/v1/patients/${patient.id}/voice-notes?limit=20&cursor=${paged.nextCursor as string}`, headers })).json()
  t.equal(rest.items.length, 1, 'paging with the cursor')
})

/** A WAV header with a given format tag (µ-law 7, ADPCM 2 …). */
function wavWithFormat (format: number, bits: number): Buffer {
  const data = Buffer.alloc(8000)
  const h = pcm16WavHeader(data.length, 8000, 1)
  h.writeUInt16LE(format, 20)
  h.writeUInt16LE(bits, 34)
  h.writeUInt16LE(bits / 8, 32)
  return Buffer.concat([h, data])
}

t.test('bad uploads get clear 4xx answers with stable codes', async (t) => {
  const url = `/v1/patients/${patient.id}/voice-notes`
  const silence = (seconds: number, rate = 8000): Buffer => {
    const data = Buffer.alloc(seconds * rate * 2)
    return Buffer.concat([pcm16WavHeader(data.length, rate, 1), data])
  }
  const truncatedFmt = Buffer.concat([Buffer.from('RIFF'), Buffer.alloc(4), Buffer.from('WAVEfmt '), Buffer.from([8, 0, 0, 0]), Buffer.alloc(8)])
  const noData = pcm16WavHeader(0, 8000, 1).subarray(0, 36)
  const cases: Array<[string, Record<string, string>, string | Buffer | undefined, number, string]> = [
    ['not a WAV file', wav, Buffer.from('ID3\x03 this is an mp3, honest'), 415, 'VIGIL_ERR_UNSUPPORTED_MEDIA_TYPE'],
    ['empty body', wav, Buffer.alloc(0), 400, 'VIGIL_ERR_VALIDATION'],
    ['µ-law WAV', wav, wavWithFormat(7, 8), 415, 'VIGIL_ERR_UNSUPPORTED_MEDIA_TYPE'],
    ['ADPCM WAV', wav, wavWithFormat(2, 8), 415, 'VIGIL_ERR_UNSUPPORTED_MEDIA_TYPE'],
    ['truncated fmt chunk', wav, truncatedFmt, 400, 'VIGIL_ERR_VALIDATION'],
    ['no data chunk', wav, noData, 400, 'VIGIL_ERR_VALIDATION'],
    ['longer than the limit (30 s)', wav, silence(31), 413, 'VIGIL_ERR_PAYLOAD_TOO_LARGE'],
    ['larger than the limit (2 MiB)', wav, Buffer.concat([silence(1), Buffer.alloc(2 * 1024 * 1024)]), 413, 'VIGIL_ERR_PAYLOAD_TOO_LARGE'],
    ['JSON', { ...headers, 'content-type': 'application/json' }, '{"audio": "base64..."}', 415, 'VIGIL_ERR_UNSUPPORTED_MEDIA_TYPE'],
    ['octet-stream', { ...headers, 'content-type': 'application/octet-stream' }, silence(1), 415, 'VIGIL_ERR_UNSUPPORTED_MEDIA_TYPE'],
    ['audio/mpeg', { ...headers, 'content-type': 'audio/mpeg' }, Buffer.from('ID3'), 415, 'VIGIL_ERR_UNSUPPORTED_MEDIA_TYPE'],
    ['no body', headers, undefined, 400, 'VIGIL_ERR_VALIDATION'],
    ['no token', { 'content-type': 'audio/wav' }, silence(1), 401, 'VIGIL_ERR_UNAUTHENTICATED']
  ]
  const before = (await db.pool.query('SELECT count(*)::int AS n FROM voice_notes')).rows[0].n
  for (const [name, h, payload, status, code] of cases) {
    const res = await app.inject({ method: 'POST', url, headers: h, ...(payload === undefined ? {} : { payload }) })
    t.equal(res.statusCode, status, name)
    t.equal(res.json().code, code, name)
  }
  for (const type of ['audio/x-wav', 'audio/wave', 'audio/vnd.wave', 'audio/wav; codecs=1']) {
    const res = await app.inject({ method: 'POST', url, headers: { ...headers, 'content-type': type }, payload: silence(1, 16000) })
    t.equal(res.statusCode, 202, type)
  }
  const after = (await db.pool.query('SELECT count(*)::int AS n FROM voice_notes')).rows[0].n
  t.equal(after - before, 4, 'only the good uploads were stored')

  const unknown = await app.inject({ method: 'POST', url: '/v1/patients/00000000-0000-4000-8000-000000000000/voice-notes', headers: wav, payload: silence(1) })
  t.equal(unknown.json().code, 'VIGIL_ERR_UNKNOWN_PATIENT')
  const badId = await app.inject({ method: 'POST', url: '/v1/patients/nope/voice-notes', headers: wav, payload: silence(1) })
  t.equal(badId.statusCode, 400)
  t.equal((await app.inject({ method: 'GET', url: '/v1/jobs/00000000-0000-4000-8000-000000000000', headers })).json().code, 'VIGIL_ERR_NOT_FOUND')
  const badState = await app.inject({ method: 'GET', url: '/v1/jobs?state=done', headers })
  t.equal(badState.statusCode, 400)
  t.same(badState.json().details, [{ path: 'querystring/state', message: 'must be equal to one of the allowed values' }])
  t.equal((await app.inject({ method: 'GET', url: '/v1/jobs?cursor=!!', headers })).json().code, 'VIGIL_ERR_BAD_CURSOR')
})

t.test('a job is visible only to whoever may see its patient', async (t) => {
  const hidden: PatientAccessPolicy = {
    async require () { throw new (await import('../../errors/catalogue.ts')).VigilError('VIGIL_ERR_UNKNOWN_PATIENT', 'no patient with this id') },
    async requireAnd () { throw new (await import('../../errors/catalogue.ts')).VigilError('VIGIL_ERR_UNKNOWN_PATIENT', 'no patient with this id') },
    async visiblePatients () { return new Set() },
    async canSee () { return false }
  }
  const restricted = await buildApi({ ...deps, patientAccess: hidden })
  t.teardown(() => restricted.close())
  const jobId = accepted[0]!.jobId
  t.equal((await restricted.inject({ method: 'GET', url: `/v1/jobs/${jobId}`, headers })).json().code, 'VIGIL_ERR_NOT_FOUND')
  t.equal((await restricted.inject({ method: 'DELETE', url: `/v1/jobs/${jobId}`, headers })).json().code, 'VIGIL_ERR_NOT_FOUND')
  t.same((await restricted.inject({ method: 'GET', url: '/v1/jobs?type=transcription', headers })).json().items, [])
  t.equal((await restricted.inject({ method: 'GET', url: `/v1/patients/${patient.id}/voice-notes`, headers })).statusCode, 404)
  const upload = await restricted.inject({ method: 'POST', url: `/v1/patients/${patient.id}/voice-notes`, headers: wav, payload: speech })
  t.equal(upload.statusCode, 404, 'refused before the body is used')
})

t.test('transcripts and audio never reach the logs', async (t) => {
  const text = JSON.stringify(capture.lines)
  for (const word of ['yesterday', 'better', 'Voice Patient']) t.notOk(text.includes(word), `"${word}" is not logged`)
  t.ok(capture.find('voice note accepted').length >= 20)
})
