import { Writable } from 'node:stream'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import pino from 'pino'
import t from 'tap'
import type { FastifyRequest } from 'fastify'
import { createPatientAccessPolicy } from '../../access/access-policy.ts'
import type { AuditEntry } from '../../access/audit-log.ts'
import { buildApi } from '../../api/app.ts'
import { openDatabase } from '../../store/database.ts'
import { apiDepsFor } from '../helpers/api-deps.ts'
import { newPatient, onCareTeam, patientWithLogin, userWithLogin } from '../helpers/people.ts'
import { createTestDatabase } from '../helpers/postgres.ts'
import { seedEmbeddedDatabase } from '../helpers/pglite-template.ts'
import { waitFor } from '../helpers/wait.ts'

// Every log line the API writes, to check that no PHI reaches the logs.
const logLines: string[] = []
const log = pino({ level: 'debug' }, new Writable({ write (chunk, _enc, done) { logLines.push(String(chunk)); done() } }))
const testDb = await createTestDatabase()
const db = await openDatabase({ databaseUrl: testDb.url, dataDir: '', log: pino({ level: 'silent' }) })
const deps = apiDepsFor(db, log)
// No load shedding: the embedded PGlite subtest blocks this process's event loop for seconds.
const app = await buildApi({ ...deps, rateLimitPerMinute: 1_000_000, unauthenticatedRateLimitPerMinute: 1_000_000, maxEventLoopDelayMs: 0 })
t.teardown(async () => {
  await app.close()
  await db.close()
  await testDb.drop()
})
const { token } = await deps.tokens.create('audit admin', 'admin')
const admin = { authorization: `Bearer ${token}` }

const mine = await newPatient(app, admin, 'Grace Auditwatch')
const stranger = await newPatient(app, admin, 'Henrietta Elsewhere')
const patient = await patientWithLogin(app, admin, mine, 'grace@example.org')
const nurse = await userWithLogin(app, admin, ['nurse'], 'audit.nurse@example.org')
await onCareTeam(app, admin, nurse.id, mine)

async function rowsOf (actorId: string): Promise<number> {
  const { rows } = await db.pool.query('SELECT count(*)::int AS n FROM audit_log WHERE actor_id = $1', [actorId])
  return rows[0].n
}

t.test('N patient-data calls, some refused, append exactly N rows', async (t) => {
  const before = await rowsOf(nurse.id)
  const calls: Array<[string, 'allowed' | 'denied']> = [
    [`/v1/patients/${mine}`, 'allowed'],
    [`/v1/patients/${mine}/readings`, 'allowed'],
    [`/v1/patients/${mine}/readings/latest`, 'allowed'],
    [`/v1/patients/${stranger}`, 'denied'],
    [`/v1/patients/${stranger}/readings`, 'denied'],
    ['/v1/patients/00000000-0000-4000-8000-000000000000', 'denied'],
    [`/v1/patients/${mine}/care-team`, 'allowed'],
    [`/v1/patients/${mine}/readings/aggregate?metric=heart_rate&from=2025-01-01T00:00:00Z&to=2025-01-02T00:00:00Z&every=1h&fn=mean`, 'allowed'],
    [`/v1/patients/${stranger}/readings/latest`, 'denied']
  ]
  for (const [url] of calls) await app.inject({ method: 'GET', url, headers: nurse.headers })
  t.equal(await rowsOf(nurse.id) - before, calls.length, 'one row per call')
  const res = await app.inject({ method: 'GET', url: `/v1/audit?actorId=${nurse.id}&limit=${calls.length}`, headers: admin })
  t.equal(res.statusCode, 200)
  const rows = res.json().items.reverse()
  t.same(rows.map((r: { outcome: string }) => r.outcome), calls.map(([, o]) => o), 'outcomes in order')
  t.match(rows[0], { actorKind: 'user', role: 'nurse', patientId: mine, action: 'patients:read', fields: ['displayName'], sourceAddress: '127.0.0.1', requestId: String, breakGlassReason: null })
  t.match(rows[3], { patientId: stranger, outcome: 'denied' })
})

t.test('refusals by permission (403 before any patient is touched) and validation errors write no row', async (t) => {
  const integrator = await userWithLogin(app, admin, ['device-integrator'], 'audit.integrator@example.org')
  const before = await rowsOf(integrator.id)
  const res = await app.inject({ method: 'GET', url: `/v1/patients/${mine}`, headers: integrator.headers })
  t.equal(res.statusCode, 403)
  t.equal(await rowsOf(integrator.id), before, 'the auth hook refuses before the policy: no patient was named to it')
})

t.test('the audit table refuses UPDATE, DELETE and TRUNCATE', async (t) => {
  for (const sql of ['UPDATE audit_log SET outcome = \'allowed\'', 'DELETE FROM audit_log', 'TRUNCATE audit_log']) {
    await t.rejects(db.pool.query(sql), { message: /append-only/ }, sql)
  }
  const { rows } = await db.pool.query('SELECT count(*)::int AS n FROM audit_log')
  t.ok(rows[0].n > 0, 'rows are still there')
})

t.test('the audit table refuses changes on embedded PGlite too', async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-audit-'))
  const lite = await openDatabase({ databaseUrl: null, dataDir: await seedEmbeddedDatabase(dir), log: pino({ level: 'silent' }) })
  t.teardown(async () => {
    await lite.close()
    await fs.rm(dir, { recursive: true, force: true })
  })
  await lite.pool.query("INSERT INTO audit_log (actor_kind, action, outcome) VALUES ('system', 'test', 'allowed')")
  for (const sql of ['UPDATE audit_log SET outcome = \'denied\'', 'DELETE FROM audit_log', 'TRUNCATE audit_log']) {
    await t.rejects(lite.pool.query(sql), { message: /append-only/ }, sql)
    // pglite-socket 0.2.17 drops the connection on the query after any error (division by
    // zero does it too); the pool reconnects. Not the audit table's doing.
    await lite.pool.query('SELECT 1').catch(() => {})
  }
  const { rows } = await lite.pool.query('SELECT count(*)::int AS n FROM audit_log')
  t.equal(rows[0].n, 1, 'the row is still there')
})

t.test('a patient sees who viewed their record, and only their own record', async (t) => {
  const res = await app.inject({ method: 'GET', url: '/v1/me/access-log?limit=1000', headers: patient })
  t.equal(res.statusCode, 200)
  const items = res.json().items as Array<{ actorId: string, role: string, action: string, breakGlass: boolean }>
  t.ok(items.some((i) => i.actorId === nurse.id && i.role === 'nurse' && i.action === 'readings:read'), 'the nurse\'s reads are listed')
  t.notOk(items.some((i) => (i as unknown as { patientId?: string }).patientId !== undefined), 'rows do not repeat the patient id')
  const { rows } = await db.pool.query("SELECT count(*)::int AS n FROM audit_log WHERE patient_id = $1 AND outcome = 'allowed'", [mine])
  t.equal(items.length, rows[0].n, 'every allowed access to this patient, nothing else')
  const other = await app.inject({ method: 'GET', url: '/v1/me/access-log', headers: nurse.headers })
  t.same(other.json().items, [], 'a nurse\'s own log holds no one else\'s rows')
  const tokenCaller = await app.inject({ method: 'GET', url: '/v1/me/access-log', headers: admin })
  t.equal(tokenCaller.statusCode, 403, 'an API token is no person')
})

t.test('admins page the audit trail and filter it', async (t) => {
  const first = await app.inject({ method: 'GET', url: `/v1/audit?patientId=${mine}&limit=2`, headers: admin })
  t.equal(first.json().items.length, 2)
  t.ok(first.json().nextCursor)
  const second = await app.inject({ method: 'GET', url: `/v1/audit?patientId=${mine}&limit=2&cursor=${first.json().nextCursor}`, headers: admin })
  t.ok(Number(second.json().items[0].id) < Number(first.json().items[1].id), 'older rows on the next page')
  const denied = await app.inject({ method: 'GET', url: '/v1/audit?outcome=denied', headers: admin })
  t.ok(denied.json().items.length >= 3)
  t.ok(denied.json().items.every((r: { outcome: string }) => r.outcome === 'denied'))
  const future = await app.inject({ method: 'GET', url: '/v1/audit?from=2999-01-01T00:00:00Z', headers: admin })
  t.same(future.json().items, [])
  const bad = await app.inject({ method: 'GET', url: '/v1/audit?cursor=abc', headers: admin })
  t.equal(bad.json().code, 'VIGIL_ERR_BAD_CURSOR')
})

t.test('a client\'s X-Request-Id is not the audit row\'s request id (issue 11 §11)', async (t) => {
  const res = await app.inject({ method: 'GET', url: `/v1/patients/${mine}`, headers: { ...admin, 'x-request-id': 'forged-request-7' } })
  t.equal(res.statusCode, 200)
  const row = (await app.inject({ method: 'GET', url: `/v1/audit?patientId=${mine}&limit=1`, headers: admin })).json().items[0]
  t.not(row.requestId, 'forged-request-7', 'the client chose the audit row\'s request id')
  t.equal(row.requestId, res.headers['x-request-id'], 'the id Vigil generated and answered with')
  t.equal(row.clientRequestId, 'forged-request-7', 'kept as its own label')
})

t.test('no PHI or credentials in the logs', async (t) => {
  await app.inject({ method: 'POST', url: '/v1/auth/login', payload: { email: 'grace@example.org', password: 'wrong password 1' } })
  const all = logLines.join('')
  t.ok(all.length > 0)
  for (const secret of ['Grace', 'Auditwatch', 'Henrietta', 'grace@example.org', 'audit.nurse@example.org', 'correct horse', 'wrong password', 'vga_', 'vgr_', token]) {
    t.notOk(all.includes(secret), `logs do not contain ${secret.startsWith('vg') ? secret.slice(0, 4) + '…' : secret}`)
  }
})

t.test('requireAnd reads only once allowed, and answers only once its one audit row is written', async (t) => {
  const principal = (await deps.access.authenticate(token))!
  const request = (id: string) => ({ principal, ip: '127.0.0.1', id, clientRequestId: null }) as unknown as FastifyRequest
  let writes = 0
  let failWrite = false
  let finishWrite: () => void = () => {}
  const audit = {
    ...deps.access.audit,
    async record (entry: AuditEntry): Promise<void> {
      writes++
      // Held until the test lets it finish, so the read is seen to run meanwhile.
      await new Promise<void>((resolve) => { finishWrite = resolve })
      if (failWrite) throw new Error('audit write failed')
      await deps.access.audit.record(entry)
    }
  }
  const policy = createPatientAccessPolicy({ people: deps.access.people, patients: deps.patients, audit })
  const rowsFor = async (requestId: string): Promise<number> =>
    (await db.pool.query('SELECT count(*)::int AS n FROM audit_log WHERE request_id = $1', [requestId])).rows[0].n

  let reads = 0
  let settled = false
  const answered = policy.requireAnd(request('require-and-1'), mine, { action: 'readings:read' }, async () => { reads++; return 'the readings' })
  void answered.then(() => { settled = true }, () => { settled = true })
  await waitFor('the audit write to start', () => writes === 1)
  await waitFor('the read to run while the row is written', () => reads === 1)
  t.notOk(settled, 'nothing answered before the row is written')
  finishWrite()
  t.equal(await answered, 'the readings')
  t.equal(await rowsFor('require-and-1'), 1, 'one row')

  // The read fails, the row is written: the request fails, its row stays (an access that was allowed).
  const readFailed = policy.requireAnd(request('require-and-2'), mine, { action: 'readings:read' }, async () => { throw new Error('store down') })
  await waitFor('the second audit write to start', () => writes === 2)
  finishWrite()
  await t.rejects(readFailed, /store down/)
  t.equal(await rowsFor('require-and-2'), 1, 'one row for a read that failed')

  failWrite = true
  const failed = policy.requireAnd(request('require-and-3'), mine, { action: 'readings:read' }, async () => 'the readings')
  await waitFor('the third audit write to start', () => writes === 3)
  finishWrite()
  await t.rejects(failed, /audit write failed/, 'a failed audit write fails the request: its data is not answered')

  failWrite = false
  const unknown = '00000000-0000-4000-8000-000000000000'
  const refused = policy.requireAnd(request('require-and-4'), unknown, { action: 'readings:read' }, async () => { reads++; return 'the readings' })
  await waitFor('the refusal\'s audit write to start', () => writes === 4)
  finishWrite()
  await t.rejects(refused, { code: 'VIGIL_ERR_UNKNOWN_PATIENT' })
  t.equal(reads, 1, 'a refused request reads nothing')
  t.equal(await rowsFor('require-and-4'), 1, 'one row for the refusal')
})
