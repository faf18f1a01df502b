import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { randomUUID } from 'node:crypto'
import t from 'tap'
import { startJobRunner } from '../../jobs/job-runner.ts'
import { inTransaction } from '../../store/database.ts'
import { createResearchExports, DEIDENTIFIED_EXPORT_JOB } from '../../research/exports.ts'
import { ageGroup } from '../../research/deidentify.ts'
import { startApiFixture } from '../helpers/api-deps.ts'
import { testKeyring } from '../helpers/keys.ts'
import { newPatient, userWithLogin } from '../helpers/people.ts'
import { fullRecord } from '../helpers/records.ts'
import type { RecordBody } from '../../patients/record-schemas.ts'
import { waitFor } from '../helpers/wait.ts'

// De-identified exports (docs/research-export.md) on the machine's PostgreSQL with the real job
// runner: canaries planted in every PHI field must be absent from every exported byte.

const CANARY = 'QZXCANARY'
const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-research-'))
t.teardown(async () => { await fs.rm(dir, { recursive: true, force: true }) })

let clock = new Date()
const fixture = await startApiFixture(t, 'research-admin')
// A second app on the same database, with the export routes (they need the fixture's stores).
const { buildApi } = await import('../../api/app.ts')
const research = createResearchExports({
  pool: fixture.db.pool, keyring: testKeyring(), dir, k: 5, ttlMs: 3_600_000, batchSize: 7,
  patientRecords: fixture.deps.patientRecords!, audit: fixture.deps.access.audit, log: fixture.log, now: () => clock
})
const app = await buildApi({ ...fixture.deps, researchExports: research })
t.teardown(async () => { await app.close() })
const admin = fixture.headers
const pool = fixture.db.pool

// Six patients: five women born 1984 (one cell of 5) and a man born 1930 (a cell of 1: suppressed at k = 5).
const base = Date.parse('2026-03-10T08:00:00.000Z')
const patients: Array<{ id: string, deviceId: string, mac: string, times: number[] }> = []
for (let i = 0; i < 6; i++) {
  const id = await newPatient(app, admin, `${CANARY}Name${i} Smith`)
  const record = fullRecord(`${CANARY}${i}`)
  if (i === 5) { record.dateOfBirth = '1930-01-15'; record.medicalHistory.gender = 'male' }
  await fixture.deps.patientRecords!.put(id, record as unknown as RecordBody)
  const deviceId = randomUUID()
  const mac = `ca:fe:00:00:00:0${i}`
  await pool.query(`INSERT INTO devices (id, name, mac, firmware_version, software_version, started_at) VALUES ($1, $2, $3, $4, $4, $5)`,
    [deviceId, `${CANARY}Device${i}`, mac, `${CANARY}fw`, new Date(base - 86_400_000)])
  // Irregular, per-patient intervals: 10 heart rates and 3 NEWS2 totals.
  const times: number[] = []
  for (let j = 0; j < 10; j++) {
    const at = base + j * (61_000 + i * 7_000) + j * j * 1_000
    times.push(at)
    await pool.query('INSERT INTO readings (patient_id, metric, ts, device_id, value, unit) VALUES ($1, $2, $3, $4, $5, $6)', [id, 'heart_rate', new Date(at), deviceId, 70 + j + i, '/min'])
  }
  for (let j = 0; j < 3; j++) {
    await pool.query('INSERT INTO readings (patient_id, metric, ts, device_id, value, unit) VALUES ($1, $2, $3, $4, $5, $6)', [id, 'news2_score', new Date(base + j * 900_000), deviceId, i === 0 ? 7 : 2, '{score}'])
  }
  // An alert with free text in every text column, and a comment.
  const alertId = randomUUID()
  await pool.query(`INSERT INTO alerts (id, patient_id, rule_id, kind, severity, status, summary, details, opened_at, last_fired_at, last_changed_at)
    VALUES ($1, $2, 'hr-high', 'threshold', 'high', 'open', $3, $4, $5, $5, $5)`, [alertId, id, `${CANARY} summary of ${id}`, JSON.stringify({ note: `${CANARY}details` }), new Date(base + 120_000)])
  await pool.query(`INSERT INTO alert_events (alert_id, patient_id, type, actor_kind, actor, at, body) VALUES ($1, $2, 'opened', 'system', NULL, $3, '{}'),
    ($1, $2, 'commented', 'user', $4, $5, $6)`, [alertId, id, new Date(base + 120_000), `${CANARY}actor`, new Date(base + 180_000), JSON.stringify({ text: `${CANARY} comment: patient Smith at 1 Street` })])
  // A voice note whose transcript names the patient (encrypted at rest; never read by the export).
  const { voiceNote } = await fixture.deps.voiceNotes!.create({
    patientId: id, authorTokenId: 'test', authorUserId: null, audio: Buffer.alloc(64),
    info: { format: 1, channels: 1, sampleRate: 16000, bitsPerSample: 16, dataBytes: 20, dataOffset: 44, durationMs: 1, isEngineNative: true }
  })
  await inTransaction(pool, async (client) => {
    await fixture.deps.voiceNotes!.saveTranscript(client, voiceNote.id, { text: `${CANARY} transcript: Mrs Smith of 1 Street`, words: [], engine: 'test' })
  })
  patients.push({ id, deviceId, mac, times })
}

const scientist = await userWithLogin(app, admin, ['ml-scientist'], 'ml@example.org')
const otherScientist = await userWithLogin(app, admin, ['ml-scientist'], 'ml2@example.org')
const nurse = await userWithLogin(app, admin, ['nurse'], 'nurse@example.org')
const cohort = { metrics: ['heart_rate'], from: '2026-03-01T00:00:00Z', to: '2026-04-01T00:00:00Z' }

t.test('only export:deidentified may start an export', async (t) => {
  const res = await app.inject({ method: 'POST', url: '/v1/exports/deidentified', headers: nurse.headers, payload: cohort })
  t.equal(res.statusCode, 403)
  const bad = await app.inject({ method: 'POST', url: '/v1/exports/deidentified', headers: scientist.headers, payload: { ...cohort, metrics: ['no_such_metric'] } })
  t.equal(bad.statusCode, 400)
})

t.test('the ML scientist never reaches identified data through other routes', async (t) => {
  const id = patients[0]!.id
  for (const url of [`/v1/patients/${id}`, `/v1/patients/${id}/record`, `/v1/patients/${id}/readings?metric=heart_rate`, '/v1/patients', `/v1/devices/${patients[0]!.deviceId}`, '/v1/jobs', '/v1/audit']) {
    const res = await app.inject({ method: 'GET', url, headers: scientist.headers })
    t.ok(res.statusCode === 403 || res.statusCode === 404, `${url}: ${res.statusCode}`)
    t.notOk(res.body.includes(CANARY), `${url}: no canary in the body`)
  }
})

t.test('a queued export is cancelled by DELETE (no runner yet)', async (t) => {
  const started = await app.inject({ method: 'POST', url: '/v1/exports/deidentified', headers: scientist.headers, payload: cohort })
  t.equal(started.statusCode, 202)
  const cancelled = await app.inject({ method: 'DELETE', url: `/v1/exports/deidentified/${started.json().id}`, headers: scientist.headers })
  t.equal(cancelled.statusCode, 200)
  t.equal(cancelled.json().state, 'cancelled')
})


async function runExport (headers: Record<string, string>): Promise<{ id: string, files: Record<string, string> }> {
  const started = await app.inject({ method: 'POST', url: '/v1/exports/deidentified', headers, payload: cohort })
  if (started.statusCode !== 202) throw new Error(`start: ${started.statusCode} ${started.body}`)
  const id = started.json().id as string
  const done = await waitFor('export finished', async () => {
    const res = await app.inject({ method: 'GET', url: started.headers.location as string, headers })
    const body = res.json()
    return ['succeeded', 'failed', 'cancelled'].includes(body.state) ? body : undefined
  }, 120_000)
  if (done.state !== 'succeeded') throw new Error(`export ${done.state}: ${done.error}`)
  const files: Record<string, string> = {}
  for (const f of done.files as Array<{ name: string, url: string }>) {
    const res = await app.inject({ method: 'GET', url: f.url, headers })
    if (res.statusCode !== 200) throw new Error(`download ${f.name}: ${res.statusCode}`)
    files[f.name] = res.body
  }
  return { id, files }
}

const lines = (text: string): Array<Record<string, any>> => text.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l))

let first = { id: '', files: {} as Record<string, string> }
let second = first
t.test('two exports of one cohort run on the job runner', async (tt) => {
  // Started here, after the cancel test: top-level code runs before any subtest.
  const runner = startJobRunner({ queue: fixture.deps.jobs!, handlers: { [DEIDENTIFIED_EXPORT_JOB]: research.handler }, workers: 1, log: fixture.log, pollIntervalMs: 100 })
  t.teardown(async () => { await runner.close() })
  first = await runExport(scientist.headers)
  second = await runExport(scientist.headers)
  tt.not(first.id, second.id)
})

t.test('no identifier reaches an exported byte', async (t) => {
  t.same(Object.keys(first.files).sort(), ['alert-events.ndjson', 'manifest.json', 'news2.ndjson', 'readings.ndjson', 'subjects.ndjson'])
  const all = Object.values(first.files).join('\n') + Object.values(second.files).join('\n')
  const forbidden = [CANARY, 'Smith', 'Street', 'hr-high summary', ...patients.flatMap((p) => [p.id, p.deviceId, p.mac, p.mac.replaceAll(':', ''), p.mac.toUpperCase()]),
    ...patients.flatMap((p) => p.times.map((at) => new Date(at).toISOString())), '2026-03-', '1984-02-29', '1930-01-15']
  for (const s of forbidden) t.notOk(all.toLowerCase().includes(s.toLowerCase()), `absent: ${s}`)
  t.ok(lines(first.files['readings.ndjson']!).length === 60, 'every reading exported')
  t.equal(lines(first.files['alert-events.ndjson']!).length, 12, 'alert events exported, without their text')
  t.equal(lines(first.files['news2.ndjson']!).length, 18, 'the NEWS2 series')
  // The export key is never in the files.
  const { rows: [row] } = await pool.query('SELECT key_enc FROM research_exports WHERE job_id = $1', [first.id])
  t.notOk(all.includes(row.key_enc), 'the encrypted key is not in the files')
})

t.test('intervals between a subject\'s readings are preserved; dates are shifted', async (t) => {
  const bySubject = new Map<string, number[]>()
  for (const r of lines(first.files['readings.ndjson']!)) bySubject.set(r.subject, [...(bySubject.get(r.subject) ?? []), Date.parse(r.t)])
  const signature = (times: number[]): string => [...times].sort((a, b) => a - b).map((x, i, a) => i === 0 ? 0 : x - a[i - 1]!).join(',')
  t.same([...bySubject.values()].map(signature).sort(), patients.map((p) => signature(p.times)).sort())
  const firsts = [...bySubject.values()].map((ts) => Math.min(...ts))
  t.equal(new Set(firsts).size, 6, 'each subject has its own shift (all patients started at the same instant)')
  for (const f of firsts) t.ok(f <= base - 365 * 86_400_000 && f >= base - 1096 * 86_400_000, 'shifted back 1–3 years')
})

t.test('two exports of the same cohort cannot be joined on subject id', async (t) => {
  const a = new Set(lines(first.files['subjects.ndjson']!).map((s) => s.subject))
  const b = new Set(lines(second.files['subjects.ndjson']!).map((s) => s.subject))
  t.equal(a.size, 6)
  t.equal(b.size, 6)
  t.same([...a].filter((s) => b.has(s)), [], 'no subject id in common')
  const firstTimes = new Set(lines(first.files['readings.ndjson']!).map((r) => r.t))
  t.same(lines(second.files['readings.ndjson']!).filter((r) => firstTimes.has(r.t)), [], 'no shifted time in common either')
})

t.test('k-suppression and the manifest', async (t) => {
  const subjects = lines(first.files['subjects.ndjson']!)
  t.equal(subjects.filter((s) => s.ageGroup === '40-44' && s.sex === 'female').length, 5)
  t.equal(subjects.filter((s) => s.ageGroup === null && s.sex === null).length, 1, 'the 96-year-old man is a cell of 1')
  t.equal(ageGroup(96), '90+')
  const manifest = JSON.parse(first.files['manifest.json']!)
  t.match(manifest.suppression, { k: 5, suppressedCells: 1, suppressedSubjects: 1 })
  t.equal(manifest.subjects, 6)
  t.ok(manifest.transformations.length >= 8, 'every transformation listed')
  t.equal(manifest.files.find((f: { name: string }) => f.name === 'readings.ndjson').records, 60)
})

t.test('a cohort by alert rule and NEWS2 band', async (t) => {
  const started = await app.inject({ method: 'POST', url: '/v1/exports/deidentified', headers: scientist.headers, payload: { ...cohort, alertRule: 'hr-high', news2Band: 'high' } })
  const id = started.json().id
  const done = await waitFor('export finished', async () => {
    const body = (await app.inject({ method: 'GET', url: `/v1/exports/deidentified/${id}`, headers: scientist.headers })).json()
    return body.state === 'succeeded' ? body : undefined
  }, 120_000)
  t.equal(done.subjects, 1, 'only the patient whose NEWS2 reached 7')
  t.equal(done.progress, 1)
})

t.test('files are served only to the caller, audited, and deleted when they expire', async (t) => {
  const status = `/v1/exports/deidentified/${first.id}`
  t.equal((await app.inject({ method: 'GET', url: status, headers: otherScientist.headers })).statusCode, 404, 'another ML scientist: 404')
  t.equal((await app.inject({ method: 'GET', url: `${status}/files/readings.ndjson`, headers: otherScientist.headers })).statusCode, 404)
  t.equal((await app.inject({ method: 'GET', url: `${status}/files/readings.ndjson`, headers: admin })).statusCode, 404, 'an admin (who holds export:deidentified) cannot download it either')

  const audit = await app.inject({ method: 'GET', url: `/v1/audit?actorId=${scientist.id}&limit=100`, headers: admin })
  t.equal(audit.statusCode, 200)
  const completed = audit.json().items.filter((r: { action: string, details: { jobId?: string, stage?: string } }) => r.action === 'export:deidentified' && r.details?.jobId === first.id && r.details?.stage === 'completed')
  t.equal(completed.length, 1)
  t.equal(completed[0].details.subjects, 6)
  t.same(completed[0].details.cohort.metrics, ['heart_rate'])

  clock = new Date(clock.getTime() + 2 * 3_600_000)
  t.ok(await research.sweepExpired() >= 1)
  await t.rejects(fs.stat(path.join(dir, first.id)), 'the files are gone')
  t.equal((await app.inject({ method: 'GET', url: `${status}/files/readings.ndjson`, headers: scientist.headers })).statusCode, 404)
  t.equal((await app.inject({ method: 'GET', url: status, headers: scientist.headers })).json().deleted, true)

  // DELETE of a finished export deletes its files at once.
  const removed = await app.inject({ method: 'DELETE', url: `/v1/exports/deidentified/${second.id}`, headers: scientist.headers })
  t.equal(removed.json().deleted, true)
  await t.rejects(fs.stat(path.join(dir, second.id)), 'the second export\'s files are gone')
})
