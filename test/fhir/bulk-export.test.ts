import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { randomUUID } from 'node:crypto'
import t from 'tap'
import { buildApi } from '../../api/app.ts'
import { BULK_EXPORT_JOB, createBulkExports } from '../../fhir/bulk/bulk-exports.ts'
import { startJobRunner } from '../../jobs/job-runner.ts'
import type { RecordBody } from '../../patients/record-schemas.ts'
import type { StoredReading } from '../../readings/reading.ts'
import { startApiFixture } from '../helpers/api-deps.ts'
import { fhirErrors } from '../helpers/fhir-validation.ts'
import { testKeyring } from '../helpers/keys.ts'
import { onCareTeam, patientWithLogin, userWithLogin } from '../helpers/people.ts'
import { fullRecord } from '../helpers/records.ts'
import { waitFor } from '../helpers/wait.ts'

// FHIR Bulk Data $export (issue 17, docs/fhir.md#bulk-export) on the machine's PostgreSQL with
// the real job runner: kick-off, status, manifest, download, delete, expiry and access. Every
// exported resource is checked against the R4 definitions; the files at rest must not hold a
// canary planted in the patient's name and record.

const CANARY = 'QZXBULKCANARY'
const top = t
const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-bulk-'))
t.teardown(async () => { await fs.rm(dir, { recursive: true, force: true }) })

let clock = new Date()
const fixture = await startApiFixture(t, 'bulk-admin', {
  apiOptions: { rateLimitPerMinute: 1_000_000, unauthenticatedRateLimitPerMinute: 1_000_000, maxEventLoopDelayMs: 0 }
})
const { deps } = fixture
const pool = fixture.db.pool
const bulk = createBulkExports({
  pool, keyring: testKeyring(), readings: deps.readings, patients: deps.patients, devices: deps.devices, patientRecords: deps.patientRecords,
  audit: deps.access.audit, dir, ttlMs: 3_600_000, log: fixture.log, chunkSize: 7, now: () => clock,
  // The NEWS2 breakdown runs beside the BP grouper (test/fhir/news2-breakdowns.test.ts checks its results).
  news2: { freshnessMs: () => 3_600_000, spo2Scales: async () => new Map() }
})
const app = await buildApi({ ...deps, bulkExports: bulk, rateLimitPerMinute: 1_000_000, unauthenticatedRateLimitPerMinute: 1_000_000, maxEventLoopDelayMs: 0 })
t.teardown(async () => { await app.close() })
const admin = fixture.headers

// Patient A (on the nurse's team): a record full of canaries, a device, readings with BP pairs
// straddling the 7-reading chunks, an alert. Patient B: off the team. Patient C: many readings (cancel).
const patientA = await deps.patients.create(`${CANARY} Ada Lovelace`)
const patientB = await deps.patients.create('Off Team Bob')
const patientC = await deps.patients.create('Busy Carol')
await deps.patientRecords!.put(patientA.id, fullRecord(CANARY) as unknown as RecordBody)
const device = await deps.devices.create({ name: 'Ward monitor', mac: 'aa:bb:cc:00:11:99', firmwareVersion: '1.0', softwareVersion: '2.0', startedAt: '2025-01-01T00:00:00.000Z' }, null)
await deps.devices.assign(device.id, patientA.id, new Date('2025-01-01T00:00:00Z'), null)
const base = Date.UTC(2026, 0, 10, 8, 0, 0)
const r = (patientId: string, metric: string, value: number, unit: string, minute: number): StoredReading =>
  ({ patientId, deviceId: device.id, metric, value, unit, ts: base + minute * 60_000, seq: null })
const seeded: StoredReading[] = []
for (let m = 0; m < 10; m++) {
  seeded.push(r(patientA.id, 'heart_rate', 60 + m, '/min', m), r(patientA.id, 'bp_systolic', 120 + m, 'mm[Hg]', m), r(patientA.id, 'bp_diastolic', 80 + m, 'mm[Hg]', m))
}
seeded.push(r(patientA.id, 'bp_systolic', 140, 'mm[Hg]', 20)) // alone: its own Observation
await deps.readings.write([...seeded, r(patientB.id, 'heart_rate', 99, '/min', 0)])
// 31 readings, 10 BP pairs: 21 Observations for patient A.
const expectedObservations = seeded.length - 10
await pool.query(`INSERT INTO alerts (id, patient_id, rule_id, kind, severity, status, summary, details, opened_at, last_fired_at, last_changed_at)
  VALUES ($1, $2, 'hr-high', 'threshold', 'high', 'open', 'heart_rate above 120 /min', '{}', $3, $3, $3), ($4, $5, 'hr-high', 'threshold', 'high', 'open', 'heart_rate above 120 /min', '{}', $3, $3, $3)`,
[randomUUID(), patientA.id, new Date(base), randomUUID(), patientB.id])
// Patient C: 3000 readings in one statement, so a running export can be cancelled mid-way.
await pool.query(`INSERT INTO readings (patient_id, metric, ts, device_id, value, unit)
  SELECT $1, 'heart_rate', to_timestamp($2 / 1000.0) + g * interval '1 second', $3, 70, '/min' FROM generate_series(1, 3000) g`, [patientC.id, base, device.id])

const nurse = await userWithLogin(app, admin, ['nurse'], 'nurse@bulk.test')
await onCareTeam(app, admin, nurse.id, patientA.id)
const otherNurse = await userWithLogin(app, admin, ['nurse'], 'nurse2@bulk.test')
await onCareTeam(app, admin, otherNurse.id, patientA.id)
const scientist = await userWithLogin(app, admin, ['ml-scientist'], 'ml@bulk.test')
const patientLogin = await patientWithLogin(app, admin, patientA.id, 'ada@bulk.test')

const ASYNC = { prefer: 'respond-async', accept: 'application/fhir+json' }
async function kickOff (url: string, headers: Record<string, string>, extra: Record<string, string> = ASYNC) {
  return await app.inject({ method: 'GET', url, headers: { ...headers, ...extra } })
}
const pathOf = (url: string): string => { const u = new URL(url); return u.pathname + u.search }
const lines = (text: string): Array<Record<string, any>> => text.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l))

/** Kick-off → wait for the manifest → every file's resources, by type. */
async function runExport (url: string, headers: Record<string, string>) {
  const started = await kickOff(url, headers)
  if (started.statusCode !== 202) throw new Error(`kick-off ${url}: ${started.statusCode} ${started.body}`)
  const status = pathOf(started.headers['content-location'] as string)
  const done = await waitFor('bulk export finished', async () => {
    const res = await app.inject({ method: 'GET', url: status, headers })
    return res.statusCode === 202 ? undefined : res
  }, 60_000)
  if (done.statusCode !== 200) throw new Error(`status: ${done.statusCode} ${done.body}`)
  const manifest = done.json()
  const byType: Record<string, Array<Record<string, any>>> = {}
  const bodies: string[] = []
  for (const o of manifest.output as Array<{ type: string, url: string, count: number }>) {
    const res = await app.inject({ method: 'GET', url: pathOf(o.url), headers: { ...headers, accept: 'application/fhir+ndjson' } })
    if (res.statusCode !== 200) throw new Error(`download ${o.type}: ${res.statusCode} ${res.body}`)
    if (!String(res.headers['content-type']).startsWith('application/fhir+ndjson')) throw new Error(`download ${o.type}: ${String(res.headers['content-type'])}`)
    bodies.push(res.body)
    byType[o.type] = lines(res.body)
    if (byType[o.type]!.length !== o.count) throw new Error(`${o.type}: ${byType[o.type]!.length} lines, manifest says ${o.count}`)
  }
  return { id: status.split('/').pop()!, status, manifest, byType, done, started, bodies }
}

t.test('kick-off refusals are OperationOutcomes', async (t) => {
  const cases: Array<[string, string, Record<string, string>, Record<string, string> | undefined, number]> = [
    ['no Prefer: respond-async', '/fhir/R4/$export', admin, { accept: 'application/fhir+json' }, 400],
    ['another _outputFormat', '/fhir/R4/$export?_outputFormat=text%2Fcsv', admin, undefined, 400],
    ['an unknown _type', '/fhir/R4/$export?_type=Patient,Encounter', admin, undefined, 400],
    ['a _since without a zone', '/fhir/R4/$export?_since=2026-01-01T00:00:00', admin, undefined, 400],
    ['an unsupported parameter', '/fhir/R4/$export?_typeFilter=Observation%3Fcode%3D1', admin, undefined, 400],
    ['an ML scientist', '/fhir/R4/$export', scientist.headers, undefined, 403],
    ['an ML scientist, Patient level', '/fhir/R4/Patient/$export', scientist.headers, undefined, 403],
    ['a Group that is not a clinician', `/fhir/R4/Group/${randomUUID()}/$export`, admin, undefined, 404],
    ['another clinician\'s Group', `/fhir/R4/Group/${otherNurse.id}/$export`, nurse.headers, undefined, 404],
    ['a type the role may not read', '/fhir/R4/$export?_type=Device', patientLogin, undefined, 403]
  ]
  for (const [what, url, headers, extra, status] of cases) {
    const res = await kickOff(url, headers, extra)
    t.equal(res.statusCode, status, what)
    t.equal(res.json().resourceType, 'OperationOutcome', `${what}: an OperationOutcome`)
    t.same(fhirErrors(res.json()), [], `${what}: valid`)
  }
  const ok = await kickOff('/fhir/R4/$export?_outputFormat=application%2Ffhir%2Bndjson&_type=Patient', admin)
  t.equal(ok.statusCode, 202, 'application/fhir+ndjson is accepted')
  await app.inject({ method: 'DELETE', url: pathOf(ok.headers['content-location'] as string), headers: admin })
})

t.test('CapabilityStatement: the three $export operations and what a Group is', async (t) => {
  const res = await app.inject({ method: 'GET', url: '/fhir/R4/metadata' })
  const body = res.json()
  t.same(fhirErrors(body), [])
  t.same(body.instantiates, ['http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data'])
  t.equal(body.rest[0].operation[0].definition, 'http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export')
  const group = body.rest[0].resource.find((x: { type: string }) => x.type === 'Group')
  t.match(group.documentation, /care team/)
  t.equal(group.operation[0].definition, 'http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export')
})

t.test('a queued export: 202 with X-Progress and Retry-After, DELETE makes it 404', async (t) => {
  const started = await kickOff('/fhir/R4/$export', nurse.headers)
  t.equal(started.statusCode, 202)
  t.equal(started.body, '')
  const location = started.headers['content-location'] as string
  t.match(location, /^http:\/\/[^/]+\/fhir\/R4\/bulk-status\/[0-9a-f-]{36}$/)
  const status = await app.inject({ method: 'GET', url: pathOf(location), headers: nurse.headers })
  t.equal(status.statusCode, 202)
  t.equal(status.headers['x-progress'], 'queued')
  t.equal(status.headers['retry-after'], '2')
  const gone = await app.inject({ method: 'DELETE', url: pathOf(location), headers: nurse.headers })
  t.equal(gone.statusCode, 202)
  t.equal((await app.inject({ method: 'GET', url: pathOf(location), headers: nurse.headers })).statusCode, 404)
  t.equal((await deps.jobs!.get(pathOf(location).split('/').pop()!))!.state, 'cancelled')

  // A job that failed (here: its runner died on the only attempt) answers 500 with an OperationOutcome.
  const failing = await kickOff('/fhir/R4/$export?_type=Patient', nurse.headers)
  const failingStatus = pathOf(failing.headers['content-location'] as string)
  await pool.query("UPDATE jobs SET state = 'failed', error = 'the runner stopped during the last attempt (lease expired)', finished_at = now() WHERE id = $1", [failingStatus.split('/').pop()])
  const failed = await app.inject({ method: 'GET', url: failingStatus, headers: nurse.headers })
  t.equal(failed.statusCode, 500)
  t.equal(failed.json().resourceType, 'OperationOutcome')
  t.equal(failed.json().issue[0].details.coding[0].code, 'VIGIL_ERR_EXPORT_FAILED')
  t.notMatch(failed.body, /lease/, 'the reason is not served')
  t.equal((await app.inject({ method: 'DELETE', url: failingStatus, headers: nurse.headers })).statusCode, 202)
})

let nurseExport: Awaited<ReturnType<typeof runExport>>
t.test('a nurse\'s system-level export: the manifest, valid resources, only the team\'s patient', async (t) => {
  // Started here, not at the top: top-level code runs before the subtests above have finished.
  const runner = startJobRunner({ queue: deps.jobs!, handlers: { [BULK_EXPORT_JOB]: bulk.handler }, workers: 1, log: fixture.log, pollIntervalMs: 50 })
  top.teardown(async () => { await runner.close() })
  nurseExport = await runExport('/fhir/R4/$export', nurse.headers)
  const { manifest, byType, done } = nurseExport
  t.match(String(done.headers['content-type']), /^application\/json/)
  t.ok(done.headers.expires, 'Expires: when the files go')
  t.equal(manifest.requiresAccessToken, true)
  t.match(manifest.request, /\/fhir\/R4\/\$export$/)
  t.ok(Date.parse(manifest.transactionTime) <= Date.now())
  t.same(manifest.error, [])
  t.same(manifest.output.map((o: { type: string }) => o.type), ['Patient', 'Device', 'Observation', 'Flag'])
  for (const [type, resources] of Object.entries(byType)) {
    for (const resource of resources) {
      t.equal(resource.resourceType, type)
      const errors = fhirErrors(resource)
      if (errors.length > 0) t.same(errors, [], `${type}/${String(resource.id)} conforms to R4`)
    }
  }
  t.same(byType.Patient!.map((p) => p.id), [patientA.id], 'only the care team\'s patient')
  t.equal(byType.Patient![0]!.birthDate, '1984-02-29', 'a nurse has phi:read: the record\'s fields')
  t.equal(byType.Observation!.length, expectedObservations)
  t.ok(byType.Observation!.every((o) => o.subject.reference === `Patient/${patientA.id}`), 'no off-team reading')
  const panels = byType.Observation!.filter((o) => o.code.coding[0].code === '85354-9')
  t.equal(panels.length, 10, 'systolic and diastolic of one instant are one panel, across chunk boundaries')
  t.same(byType.Device!.map((d) => d.id), [device.id])
  t.same(byType.Flag!.map((f) => f.subject.reference), [`Patient/${patientA.id}`])
  for (const o of manifest.output) {
    t.notOk(o.url.includes(patientA.id) || o.url.includes(CANARY), 'no patient id or name in a file URL')
  }
  t.notOk(pathOf(nurseExport.started.headers['content-location'] as string).includes(patientA.id))
})

t.test('the files at rest are encrypted: no canary, no JSON', async (t) => {
  const exportDir = bulk.dirOf(nurseExport.id)
  const names = await fs.readdir(exportDir)
  t.same(names.sort(), ['Device.ndjson', 'Flag.ndjson', 'Observation.ndjson', 'Patient.ndjson'])
  t.ok(nurseExport.bodies.join('').includes(CANARY), 'the canary is in the downloaded Patient (so its absence below means something)')
  for (const name of names) {
    const bytes = await fs.readFile(path.join(exportDir, name))
    t.notOk(bytes.includes(CANARY), `${name}: no canary`)
    t.notOk(bytes.includes('resourceType'), `${name}: no plaintext JSON`)
    t.notOk(bytes.includes(patientA.id), `${name}: no patient id`)
  }
  const mode = (await fs.stat(exportDir)).mode & 0o777
  t.equal(mode, 0o700)
})

t.test('another user gets 404 for the status, the files and DELETE', async (t) => {
  const { status, manifest } = nurseExport
  for (const headers of [otherNurse.headers, admin]) {
    t.equal((await app.inject({ method: 'GET', url: status, headers })).statusCode, 404)
    t.equal((await app.inject({ method: 'GET', url: pathOf(manifest.output[0].url), headers })).statusCode, 404)
    t.equal((await app.inject({ method: 'DELETE', url: status, headers })).statusCode, 404)
  }
  t.equal((await app.inject({ method: 'GET', url: status, headers: nurse.headers })).statusCode, 200, 'still there for its owner')
})

t.test('kick-off and every download are audited', async (t) => {
  const { rows } = await pool.query(`SELECT patient_id, actor_id, details FROM audit_log WHERE action = 'export:fhir-bulk' AND details->>'jobId' = $1 ORDER BY id`, [nurseExport.id])
  // The worker's 'completed' row and the route's 'requested' row are written by two parties: compare as sets.
  const stages = rows.map((row) => row.details.stage as string).sort()
  t.same(stages, ['completed', 'downloaded', 'downloaded', 'downloaded', 'downloaded', 'requested'])
  t.ok(rows.every((row) => row.actor_id === nurse.id))
  const perPatient = await pool.query(`SELECT count(*)::int AS n FROM audit_log WHERE action = 'export:fhir-bulk' AND patient_id = $1 AND actor_id = $2`, [patientA.id, nurse.id])
  t.ok(perPatient.rows[0].n >= 1, 'a row naming the patient reached')
})

t.test('Group = a clinician\'s care team; an admin may export any', async (t) => {
  const own = await runExport(`/fhir/R4/Group/${nurse.id}/$export?_type=Patient`, nurse.headers)
  t.same(own.byType.Patient!.map((p) => p.id), [patientA.id])
  t.match(own.manifest.request, new RegExp(`/Group/${nurse.id}/\\$export\\?_type=Patient$`))
  const byAdmin = await runExport(`/fhir/R4/Group/${otherNurse.id}/$export?_type=Patient,Observation`, admin)
  t.same(byAdmin.byType.Patient!.map((p) => p.id), [patientA.id])
  t.equal(byAdmin.byType.Observation!.length, expectedObservations)
})

t.test('a patient exports only themselves; _since and _type narrow the export', async (t) => {
  const own = await runExport('/fhir/R4/Patient/$export', patientLogin)
  t.same(own.byType.Patient!.map((p) => p.id), [patientA.id])
  t.same(Object.keys(own.byType).sort(), ['Flag', 'Observation', 'Patient'], 'no Device: the patient role lacks devices:read')
  const since = new Date(base + 5 * 60_000).toISOString()
  const recent = await runExport(`/fhir/R4/Patient/$export?_type=Observation&_since=${encodeURIComponent(since)}`, nurse.headers)
  t.same(Object.keys(recent.byType), ['Observation'])
  t.ok(recent.byType.Observation!.every((o) => o.effectiveDateTime >= since))
  t.equal(recent.byType.Observation!.length, 5 * 2 + 1)
})

t.test('DELETE a running export: it stops at its next chunk, its files go, the status is 404', async (t) => {
  const started = await kickOff('/fhir/R4/Patient/$export?_type=Observation', admin)
  const status = pathOf(started.headers['content-location'] as string)
  const id = status.split('/').pop()!
  const progress = await waitFor('Observation progress', async () => {
    const res = await app.inject({ method: 'GET', url: status, headers: admin })
    const p = String(res.headers['x-progress'] ?? '')
    return res.statusCode === 202 && /^Observation \d+%: \d+ of 3\d{3}$/.test(p) ? p : undefined
  }, { timeoutMs: 60_000, everyMs: 5 })
  t.match(progress, /^Observation \d+%: \d+ of 3\d{3}$/, `X-Progress ${progress}`)
  t.equal((await app.inject({ method: 'DELETE', url: status, headers: admin })).statusCode, 202)
  t.equal((await app.inject({ method: 'GET', url: status, headers: admin })).statusCode, 404)
  const job = await waitFor('job cancelled', async () => {
    const j = await deps.jobs!.get(id)
    return j !== null && j.state !== 'running' ? j : undefined
  })
  t.equal(job.state, 'cancelled')
  await t.rejects(fs.access(bulk.dirOf(id)), 'the files are deleted')
})

t.test('DELETE a finished export deletes its files; expiry makes the status 404 and housekeeping deletes the files', async (t) => {
  const first = await runExport('/fhir/R4/$export?_type=Patient', nurse.headers)
  t.equal((await app.inject({ method: 'DELETE', url: first.status, headers: nurse.headers })).statusCode, 202)
  t.equal((await app.inject({ method: 'GET', url: first.status, headers: nurse.headers })).statusCode, 404)
  await t.rejects(fs.access(bulk.dirOf(first.id)))

  const second = await runExport('/fhir/R4/$export?_type=Patient', nurse.headers)
  clock = new Date(clock.getTime() + 3_600_000 + 1000)
  t.equal((await app.inject({ method: 'GET', url: second.status, headers: nurse.headers })).statusCode, 404, 'expired: the status is gone')
  t.equal((await app.inject({ method: 'GET', url: pathOf(second.manifest.output[0].url), headers: nurse.headers })).statusCode, 404, 'expired: the file is gone')
  await fs.access(bulk.dirOf(second.id))
  t.ok(await bulk.sweepExpired() >= 1)
  await t.rejects(fs.access(bulk.dirOf(second.id)), 'housekeeping deleted the files')
  t.equal(await bulk.sweepExpired(), 0, 'once')
})
