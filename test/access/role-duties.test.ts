// Issue 13 §4: every role can do its job, and a patient sees what is released to her.
import pino from 'pino'
import t from 'tap'
import { startAlerting } from '../../alerts/lifecycle/alerting.ts'
import { buildApi } from '../../api/app.ts'
import { pcm16WavHeader } from '../../jobs/transcription/wav.ts'
import { inTransaction, openDatabase } from '../../store/database.ts'
import { apiDepsFor } from '../helpers/api-deps.ts'
import { change } from '../helpers/alerting.ts'
import { newPatient, onCareTeam, patientWithLogin, userWithLogin } from '../helpers/people.ts'
import { testKeyring } from '../helpers/keys.ts'
import { createTestDatabase } from '../helpers/postgres.ts'

const log = pino({ level: 'silent' })
const testDb = await createTestDatabase()
const db = await openDatabase({ databaseUrl: testDb.url, dataDir: '', log })
const deps = apiDepsFor(db, log)
const alerting = await startAlerting({ keyring: testKeyring(), pool: db.pool, log, metrics: deps.metrics, policies: () => new Map(), webhooks: () => [] })
const app = await buildApi({ ...deps, alerts: alerting.api, rateLimitPerMinute: 1_000_000, unauthenticatedRateLimitPerMinute: 1_000_000 })
t.teardown(async () => {
  await app.close()
  await alerting.close()
  await db.close()
  await testDb.drop()
})

const { token } = await deps.tokens.create('roles admin', 'admin')
const admin = { authorization: `Bearer ${token}` }
const own = await newPatient(app, admin, 'Ada Own')
const other = await newPatient(app, admin, 'Otto Other')
const patient = await patientWithLogin(app, admin, own, 'ada@example.org')
const nurse = await userWithLogin(app, admin, ['nurse'], 'nurse@example.org')
const doctor = await userWithLogin(app, admin, ['doctor'], 'doctor@example.org')
const integrator = await userWithLogin(app, admin, ['device-integrator'], 'integrator@example.org')
await onCareTeam(app, admin, nurse.id, own)
await onCareTeam(app, admin, doctor.id, own)

const samples = Buffer.alloc(16_000 * 2)
const wavBody = Buffer.concat([pcm16WavHeader(samples.length, 16_000, 1), samples])
const upload = async (headers: Record<string, string>, patientId: string) =>
  await app.inject({ method: 'POST', url: `/v1/patients/${patientId}/voice-notes`, headers: { ...headers, 'content-type': 'audio/wav' }, payload: wavBody })

/** Marks a note transcribed as the job would (the runner is not part of this test). */
async function transcribed (voiceNoteId: string, text: string): Promise<void> {
  await inTransaction(db.pool, async (client) => {
    await deps.voiceNotes!.saveTranscript(client, voiceNoteId, { text, words: [], engine: 'test' })
  })
}

await alerting.sink.apply([change(own)])
const alertId = (await alerting.api.store.list({ patientId: own, patients: null, limit: 10 }))[0]!.id

t.test('role × route: who may leave a voice note, comment on an alert, release a note', async (t) => {
  const cases: Array<[string, Record<string, string>, () => Promise<{ statusCode: number }>, number]> = [
    ['patient leaves a voice message on herself', patient, async () => await upload(patient, own), 202],
    ['patient on another patient (as if unknown)', patient, async () => await upload(patient, other), 404],
    ['nurse dictates for a team patient', nurse.headers, async () => await upload(nurse.headers, own), 202],
    ['integrator', integrator.headers, async () => await upload(integrator.headers, own), 403],
    ['nurse comments on a team patient\'s alert', nurse.headers,
      async () => await app.inject({ method: 'POST', url: `/v1/alerts/${alertId}/comments`, headers: nurse.headers, payload: { text: 'Rechecked manually: 128' } }), 201],
    ['doctor comments', doctor.headers,
      async () => await app.inject({ method: 'POST', url: `/v1/alerts/${alertId}/comments`, headers: doctor.headers, payload: { text: 'Start fluids' } }), 201],
    ['patient may not comment on alerts', patient,
      async () => await app.inject({ method: 'POST', url: `/v1/alerts/${alertId}/comments`, headers: patient, payload: { text: 'hello' } }), 403],
    ['integrator may not comment', integrator.headers,
      async () => await app.inject({ method: 'POST', url: `/v1/alerts/${alertId}/comments`, headers: integrator.headers, payload: { text: 'hello' } }), 403],
    ['a nurse still may not resolve (alerts:write)', nurse.headers,
      async () => await app.inject({ method: 'POST', url: `/v1/alerts/${alertId}/resolve`, headers: nurse.headers, payload: {} }), 403]
  ]
  for (const [name, , call, status] of cases) {
    const res = await call()
    t.equal(res.statusCode, status, name)
  }
})

t.test('a patient sees her own voice messages, and a clinician\'s dictation only once released', async (t) => {
  const mine = (await upload(patient, own)).json().voiceNoteId as string
  const dictationUpload = (await upload(doctor.headers, own)).json() as { voiceNoteId: string, jobId: string }
  const dictation = dictationUpload.voiceNoteId
  const dictationJob = dictationUpload.jobId
  const jobIds = async (headers: Record<string, string>) =>
    ((await app.inject({ method: 'GET', url: '/v1/jobs?limit=100', headers })).json().items as Array<{ id: string }>).map((j) => j.id)
  await transcribed(mine, 'my ankle is swollen again')
  const listIds = async (headers: Record<string, string>) =>
    ((await app.inject({ method: 'GET', url: `/v1/patients/${own}/voice-notes?limit=100`, headers })).json().items as Array<{ id: string }>).map((n) => n.id)

  t.ok((await listIds(patient)).includes(mine), 'her own message is listed for her')
  t.notOk((await listIds(patient)).includes(dictation), 'an unreleased dictation is not listed for her')
  t.ok((await listIds(nurse.headers)).includes(dictation), 'the care team sees the dictation at once')
  t.ok((await listIds(nurse.headers)).includes(mine), 'and her message')
  const hidden = await app.inject({ method: 'GET', url: `/v1/patients/${own}/voice-notes/${dictation}`, headers: patient })
  t.equal(hidden.statusCode, 404, 'fetching the unreleased dictation by id: 404 (as if none)')
  // Attack pass: the dictation's transcription job told her it exists (voiceNoteId, word count).
  t.notOk((await jobIds(patient)).includes(dictationJob), 'the unreleased dictation\'s job is not listed for her')
  t.equal((await app.inject({ method: 'GET', url: `/v1/jobs/${dictationJob}`, headers: patient })).statusCode, 404, 'nor shown by id')
  t.ok((await jobIds(nurse.headers)).includes(dictationJob), 'the care team sees the job')

  const early = await app.inject({ method: 'POST', url: `/v1/patients/${own}/voice-notes/${dictation}/release`, headers: doctor.headers })
  t.equal(early.statusCode, 409, 'a note is released only once it has a transcript to review')
  t.equal(early.json().code, 'VIGIL_ERR_CONFLICT')
  await transcribed(dictation, 'stable, continue current plan')

  const byPatient = await app.inject({ method: 'POST', url: `/v1/patients/${own}/voice-notes/${dictation}/release`, headers: patient })
  t.equal(byPatient.statusCode, 403, 'a patient cannot release clinicians\' notes')
  const byIntegrator = await app.inject({ method: 'POST', url: `/v1/patients/${own}/voice-notes/${dictation}/release`, headers: integrator.headers })
  t.equal(byIntegrator.statusCode, 403)
  const released = await app.inject({ method: 'POST', url: `/v1/patients/${own}/voice-notes/${dictation}/release`, headers: nurse.headers })
  t.equal(released.statusCode, 200, 'a clinician on the care team releases it')
  t.equal(released.json().releasedBy, nurse.id)
  t.type(released.json().releasedAt, 'string')
  t.ok((await listIds(patient)).includes(dictation), 'released: now listed for her')
  t.equal((await app.inject({ method: 'GET', url: `/v1/jobs/${dictationJob}`, headers: patient })).statusCode, 200, 'and its job')
  const shown = await app.inject({ method: 'GET', url: `/v1/patients/${own}/voice-notes/${dictation}`, headers: patient })
  t.equal(shown.statusCode, 200)
  t.equal(shown.json().transcript, 'stable, continue current plan')
})

t.test('a patient sees her alerts without the clinicians\' comments and resolve reasons', async (t) => {
  await app.inject({ method: 'POST', url: `/v1/alerts/${alertId}/comments`, headers: doctor.headers, payload: { text: 'Query sepsis, bloods sent' } })
  const resolved = await app.inject({ method: 'POST', url: `/v1/alerts/${alertId}/resolve`, headers: doctor.headers, payload: { reason: 'Probe displaced, query sepsis' } })
  t.equal(resolved.statusCode, 200)
  const forNurse = await app.inject({ method: 'GET', url: `/v1/alerts/${alertId}/events`, headers: nurse.headers })
  t.match(forNurse.body, /Query sepsis, bloods sent/, 'the care team reads the comments')
  t.match(forNurse.body, /Probe displaced/, 'and the resolve reason')
  const forPatient = await app.inject({ method: 'GET', url: `/v1/alerts/${alertId}/events`, headers: patient })
  t.equal(forPatient.statusCode, 200, 'she still sees her alert\'s history')
  const types = (forPatient.json().items as Array<{ type: string }>).map((e) => e.type)
  t.ok(types.includes('opened') && types.includes('resolved'), 'opened and resolved are shown')
  t.notOk(types.includes('commented'), 'comments are not')
  t.notMatch(forPatient.body, /sepsis|Probe displaced|Rechecked|fluids/i, 'no clinical note text anywhere')
})

t.test('"who viewed my data" names the viewer and the role', async (t) => {
  await app.inject({ method: 'GET', url: `/v1/patients/${own}`, headers: nurse.headers })
  const res = await app.inject({ method: 'GET', url: '/v1/me/access-log?limit=200', headers: patient })
  t.equal(res.statusCode, 200)
  const rows = res.json().items as Array<{ actorId: string | null, actorName: string | null, roleNames: string[] }>
  const byNurse = rows.find((r) => r.actorId === nurse.id)
  t.ok(byNurse, 'the nurse\'s read is listed')
  t.equal(byNurse?.actorName, 'User nurse@example.org', 'with her name')
  t.same(byNurse?.roleNames, ['Nurse'], 'and her role\'s name')
  const byToken = rows.find((r) => r.actorId !== null && r.actorId !== nurse.id && r.actorId !== doctor.id && r.actorId !== own)
  t.equal(byToken?.actorName, 'roles admin', 'an API token is named by its name')
  t.same(byToken?.roleNames, ['Administrator'])
})
