import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import pino from 'pino'
import t from 'tap'
import type { Test } from 'tap'
import { buildApi } from '../../api/app.ts'
import { openDatabase } from '../../store/database.ts'
import type { Database } from '../../store/database.ts'
import { apiDepsFor } from '../helpers/api-deps.ts'
import { newPatient, onCareTeam, patientWithLogin, userWithLogin } from '../helpers/people.ts'
import { openTestDatabase } from '../helpers/postgres.ts'
import { seedEmbeddedDatabase } from '../helpers/pglite-template.ts'

type Role = 'patient' | 'nurse' | 'doctor' | 'admin' | 'developer' | 'device-integrator' | 'ml-scientist'
const roles: Role[] = ['patient', 'nurse', 'doctor', 'admin', 'developer', 'device-integrator', 'ml-scientist']
// own: the patient themselves; team: on the nurse's and doctor's care team; other: nobody's.
type Target = 'own' | 'team' | 'other'

// Per-patient routes: role → status for [own, team, other]. 403: the role lacks the route's
// permission (checked first, whoever the patient); 404: it has it but not the relationship
// (the same answer as for a patient that does not exist).
const none = [403, 403, 403]
const patientRouteMatrix: Record<Role, [number, number, number]> = {
  patient: [200, 404, 404],
  nurse: [404, 200, 404],
  doctor: [404, 200, 404],
  admin: [200, 200, 200],
  developer: none as [number, number, number],
  'device-integrator': none as [number, number, number],
  'ml-scientist': none as [number, number, number]
}
const patientRoutes = ['/v1/patients/{id}', '/v1/patients/{id}/readings', '/v1/patients/{id}/readings/latest',
  '/v1/patients/{id}/readings/aggregate?metric=heart_rate&every=1h&from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z',
  '/v1/patients/{id}/care-team', '/v1/patients/{id}/record', '/v1/patients/{id}/voice-notes']

// Routes about no single patient: role → status.
const otherRoutes: Array<{ method: 'GET', url: string, expect: Record<Role, number> }> = [
  { method: 'GET', url: '/v1/patients', expect: { patient: 200, nurse: 200, doctor: 200, admin: 200, developer: 403, 'device-integrator': 403, 'ml-scientist': 403 } },
  { method: 'GET', url: '/v1/devices', expect: { patient: 403, nurse: 200, doctor: 200, admin: 200, developer: 200, 'device-integrator': 200, 'ml-scientist': 403 } },
  { method: 'GET', url: '/v1/devices/{device}', expect: { patient: 403, nurse: 200, doctor: 200, admin: 200, developer: 200, 'device-integrator': 200, 'ml-scientist': 403 } },
  // Roles reaching no patient get the rejections with payloads redacted (api-rejections.test.ts).
  { method: 'GET', url: '/v1/devices/{device}/rejections', expect: { patient: 403, nurse: 200, doctor: 200, admin: 200, developer: 200, 'device-integrator': 200, 'ml-scientist': 403 } },
  { method: 'GET', url: '/v1/audit', expect: { patient: 403, nurse: 403, doctor: 403, admin: 200, developer: 403, 'device-integrator': 403, 'ml-scientist': 403 } },
  { method: 'GET', url: '/v1/break-glass', expect: { patient: 403, nurse: 403, doctor: 403, admin: 200, developer: 403, 'device-integrator': 403, 'ml-scientist': 403 } },
  { method: 'GET', url: '/v1/users', expect: { patient: 403, nurse: 403, doctor: 403, admin: 200, developer: 403, 'device-integrator': 403, 'ml-scientist': 403 } },
  { method: 'GET', url: '/v1/roles', expect: { patient: 403, nurse: 403, doctor: 403, admin: 200, developer: 403, 'device-integrator': 403, 'ml-scientist': 403 } },
  { method: 'GET', url: '/v1/tokens', expect: { patient: 403, nurse: 403, doctor: 403, admin: 200, developer: 200, 'device-integrator': 403, 'ml-scientist': 403 } },
  { method: 'GET', url: '/v1/jobs', expect: { patient: 200, nurse: 200, doctor: 200, admin: 200, developer: 403, 'device-integrator': 403, 'ml-scientist': 403 } },
  { method: 'GET', url: '/v1/admin/keys', expect: { patient: 403, nurse: 403, doctor: 403, admin: 200, developer: 403, 'device-integrator': 403, 'ml-scientist': 403 } },
  { method: 'GET', url: '/v1/me/access-log', expect: { patient: 200, nurse: 200, doctor: 200, admin: 200, developer: 403, 'device-integrator': 403, 'ml-scientist': 403 } }
]

const log = pino({ level: 'silent' })

async function runMatrix (t: Test, db: Database, only?: readonly Role[]): Promise<void> {
  const deps = apiDepsFor(db, log)
  // No load shedding: embedded PGlite runs on this event loop, and on a loaded machine it sheds the set-up.
  const app = await buildApi({ ...deps, rateLimitPerMinute: 1_000_000, unauthenticatedRateLimitPerMinute: 1_000_000, maxEventLoopDelayMs: 0 })
  t.teardown(() => app.close())
  const { token } = await deps.tokens.create('matrix admin', 'admin')
  const admin = { authorization: `Bearer ${token}` }

  const patients: Record<Target, string> = {
    own: await newPatient(app, admin, 'Own Patient'),
    team: await newPatient(app, admin, 'Team Patient'),
    other: await newPatient(app, admin, 'Other Patient')
  }
  for (const id of Object.values(patients)) {
    const record = await app.inject({ method: 'PUT', url: `/v1/patients/${id}/record`, headers: admin, payload: { dateOfBirth: '1950-02-03' } })
    t.equal(record.statusCode, 200, 'admin writes the PHI record')
  }
  const headers = {} as Record<Role, Record<string, string>>
  headers.patient = await patientWithLogin(app, admin, patients.own, 'own.patient@example.org')
  for (const role of roles.filter((r) => r !== 'patient')) {
    const user = await userWithLogin(app, admin, [role], `${role}@example.org`)
    headers[role] = user.headers
    if (role === 'nurse' || role === 'doctor') await onCareTeam(app, admin, user.id, patients.team)
  }
  const device = await app.inject({
    method: 'POST', url: '/v1/devices', headers: admin,
    payload: { name: 'Monitor', mac: `02:00:00:00:00:${Math.floor(Math.random() * 90 + 10)}`, firmwareVersion: '1', softwareVersion: '1', startedAt: '2025-01-01' }
  })
  const deviceId = device.json().id as string
  const assigned = await app.inject({ method: 'PUT', url: `/v1/devices/${deviceId}/assignment`, headers: admin, payload: { patientId: patients.own, validFrom: '2025-06-01T00:00:00Z' } })
  t.equal(assigned.statusCode, 200, 'admin assigns the device')

  const testedRoles = only ?? roles
  for (const role of testedRoles) {
    for (const route of patientRoutes) {
      const targets = ['own', 'team', 'other'] as const
      for (let i = 0; i < targets.length; i++) {
        const url = route.replace('{id}', patients[targets[i]!])
        const res = await app.inject({ method: 'GET', url, headers: headers[role] })
        t.equal(res.statusCode, patientRouteMatrix[role][i], `${role} GET ${route} (${targets[i]})`)
        if (res.statusCode === 404) t.equal(res.json().code, 'VIGIL_ERR_UNKNOWN_PATIENT', `${role} ${route} ${targets[i]}: looks like an unknown patient`)
        if (res.statusCode === 403) t.equal(res.json().code, 'VIGIL_ERR_FORBIDDEN')
      }
    }
    for (const route of otherRoutes) {
      const res = await app.inject({ method: route.method, url: route.url.replace('{device}', deviceId), headers: headers[role] })
      t.equal(res.statusCode, route.expect[role], `${role} ${route.method} ${route.url}`)
    }
  }

  t.test('patient lists hold exactly the visible patients', async (t) => {
    const expected: Partial<Record<Role, string[]>> = { patient: [patients.own], nurse: [patients.team], doctor: [patients.team] }
    for (const [role, ids] of Object.entries(expected)) {
      if (!testedRoles.includes(role as Role)) continue
      const res = await app.inject({ method: 'GET', url: '/v1/patients', headers: headers[role as Role] })
      t.same(res.json().items.map((p: { id: string }) => p.id).sort(), [...ids].sort(), role)
    }
    const all = await app.inject({ method: 'GET', url: '/v1/patients?limit=1000', headers: headers.admin })
    t.ok([patients.own, patients.team, patients.other].every((id) => all.json().items.some((p: { id: string }) => p.id === id)), 'admin sees all')
  })

  t.test('roles without patients:read see device data without the patient\'s identity', async (t) => {
    for (const role of ['developer', 'device-integrator'] as const) {
      for (const url of [`/v1/devices/${deviceId}`, '/v1/devices']) {
        const res = await app.inject({ method: 'GET', url, headers: headers[role] })
        t.equal(res.statusCode, 200)
        t.notMatch(res.body, patients.own, `${role} ${url}: no patient id anywhere`)
        t.notMatch(res.body, /Own Patient/, `${role} ${url}: no name`)
      }
      const detail = (await app.inject({ method: 'GET', url: `/v1/devices/${deviceId}`, headers: headers[role] })).json()
      t.equal(detail.patientId, null)
      t.same(detail.assignments.map((a: { patientId: unknown }) => a.patientId), [null], 'assignment periods kept, patient hidden')
    }
    const adminView = (await app.inject({ method: 'GET', url: `/v1/devices/${deviceId}`, headers: headers.admin })).json()
    t.equal(adminView.patientId, patients.own)
    if (testedRoles.includes('nurse')) {
      const nurseView = (await app.inject({ method: 'GET', url: `/v1/devices/${deviceId}`, headers: headers.nurse })).json()
      t.equal(nurseView.patientId, null, 'a nurse sees no patient id outside the care team')
    }
  })

  t.test('a device integrator cannot assign a device to a patient (it sees none)', async (t) => {
    const res = await app.inject({ method: 'PUT', url: `/v1/devices/${deviceId}/assignment`, headers: headers['device-integrator'], payload: { patientId: patients.other } })
    t.equal(res.statusCode, 403, 'the device\'s current patient is out of its reach')
    t.equal(res.json().code, 'VIGIL_ERR_FORBIDDEN')
    const nurse = await app.inject({ method: 'PUT', url: `/v1/devices/${deviceId}/assignment`, headers: headers.nurse, payload: { patientId: patients.other } })
    t.equal(nurse.statusCode, 403, 'a nurse does not move another patient\'s device')
    const toTeam = await app.inject({ method: 'PUT', url: `/v1/devices/${deviceId}/assignment`, headers: headers.nurse, payload: { patientId: patients.team } })
    t.equal(toTeam.statusCode, 403, 'not even to a care-team patient')
    t.equal((await app.inject({ method: 'DELETE', url: `/v1/devices/${deviceId}/assignment`, headers: admin })).statusCode, 204, 'an admin ends it')
    const unassigned = await app.inject({ method: 'PUT', url: `/v1/devices/${deviceId}/assignment`, headers: headers['device-integrator'], payload: { patientId: patients.other } })
    t.equal(unassigned.statusCode, 404, 'an unassigned device: the integrator reaches no patient to assign it to')
    t.equal(unassigned.json().code, 'VIGIL_ERR_UNKNOWN_PATIENT')
    const offTeam = await app.inject({ method: 'PUT', url: `/v1/devices/${deviceId}/assignment`, headers: headers.nurse, payload: { patientId: patients.other } })
    t.equal(offTeam.statusCode, 404, 'a nurse only assigns to care-team patients')
    const ok = await app.inject({ method: 'PUT', url: `/v1/devices/${deviceId}/assignment`, headers: headers.nurse, payload: { patientId: patients.team } })
    t.equal(ok.statusCode, 200)
    const nurseView = (await app.inject({ method: 'GET', url: `/v1/devices/${deviceId}`, headers: headers.nurse })).json()
    t.equal(nurseView.patientId, patients.team, 'the care team\'s patient is shown')
    t.same(nurseView.assignments.map((a: { patientId: string | null }) => a.patientId), [patients.team, null], 'the earlier patient is not')
  })

  t.test('API tokens: developers mint only non-PHI tokens; a token never exceeds its creator', async (t) => {
    const cases: Array<[Role, string, number]> = [
      ['developer', 'developer', 201],
      ['developer', 'device-integrator', 403],
      ['developer', 'admin', 403],
      ['developer', 'nurse', 403],
      ['admin', 'device-integrator', 201],
      ['admin', 'nurse', 201],
      ['nurse', 'developer', 403]
    ]
    for (const [creator, role, status] of cases) {
      const res = await app.inject({ method: 'POST', url: '/v1/tokens', headers: headers[creator], payload: { name: `${creator} makes ${role}`, role } })
      t.equal(res.statusCode, status, `${creator} → ${role} token`)
    }
    const made = (await app.inject({ method: 'POST', url: '/v1/tokens', headers: headers.developer, payload: { name: 'ci', role: 'developer' } })).json()
    const machine = { authorization: `Bearer ${made.token}` }
    t.equal((await app.inject({ method: 'GET', url: '/v1/devices', headers: machine })).statusCode, 200, 'the token works for non-PHI routes')
    t.equal((await app.inject({ method: 'GET', url: `/v1/patients/${patients.own}`, headers: machine })).statusCode, 403, 'and not for PHI')
    t.equal((await app.inject({ method: 'DELETE', url: `/v1/tokens/${made.id}`, headers: headers.developer })).statusCode, 204)
    t.equal((await app.inject({ method: 'GET', url: '/v1/devices', headers: machine })).statusCode, 401, 'revoked')
    const unknown = await app.inject({ method: 'POST', url: '/v1/tokens', headers: headers.admin, payload: { name: 'x', role: 'wizard' } })
    t.equal(unknown.json().code, 'VIGIL_ERR_UNKNOWN_ROLE')
  })

  t.test('custom roles: an admin creates one, grants it, and its category scopes patients', async (t) => {
    const created = await app.inject({
      method: 'POST', url: '/v1/roles', headers: headers.admin,
      payload: { name: 'Pharmacist', category: 'clinician', permissions: ['patients:read', 'readings:read'] }
    })
    t.equal(created.statusCode, 201)
    const roleId = created.json().id
    const bad = await app.inject({ method: 'POST', url: '/v1/roles', headers: headers.admin, payload: { name: 'X', category: 'clinician', permissions: ['fly'] } })
    t.equal(bad.statusCode, 400)
    t.equal(bad.json().code, 'VIGIL_ERR_VALIDATION')
    const pharmacist = await userWithLogin(app, headers.admin, [], 'pharmacist@example.org')
    t.equal((await app.inject({ method: 'GET', url: '/v1/patients', headers: pharmacist.headers })).statusCode, 403, 'no role: no permission')
    const granted = await app.inject({ method: 'PUT', url: `/v1/users/${pharmacist.id}/roles/${roleId}`, headers: headers.admin })
    t.same(granted.json().roles, [roleId])
    t.equal((await app.inject({ method: 'GET', url: `/v1/patients/${patients.team}`, headers: pharmacist.headers })).statusCode, 404, 'clinician category: care team only')
    await onCareTeam(app, headers.admin, pharmacist.id, patients.team)
    t.equal((await app.inject({ method: 'GET', url: `/v1/patients/${patients.team}`, headers: pharmacist.headers })).statusCode, 200)
    t.equal((await app.inject({ method: 'DELETE', url: `/v1/users/${pharmacist.id}/roles/${roleId}`, headers: headers.admin })).statusCode, 204)
    t.equal((await app.inject({ method: 'GET', url: `/v1/patients/${patients.team}`, headers: pharmacist.headers })).statusCode, 403, 'revoked at the next request')
    const patientRole = await app.inject({ method: 'PUT', url: `/v1/users/${pharmacist.id}/roles/patient`, headers: headers.admin })
    t.equal(patientRole.json().code, 'VIGIL_ERR_UNKNOWN_ROLE', 'the patient role comes only with a patient')
  })

  t.test('a PHI write is refused (and audited) for lack of access before its body is judged', async (t) => {
    if (!testedRoles.includes('nurse')) return
    const invalid = { dateOfBirth: '2999-01-01' }
    const other = await app.inject({ method: 'PUT', url: `/v1/patients/${patients.other}/record`, headers: headers.nurse, payload: invalid })
    t.equal(other.statusCode, 404, 'another patient: refused as unknown, whatever the body')
    t.equal(other.json().code, 'VIGIL_ERR_UNKNOWN_PATIENT')
    const team = await app.inject({ method: 'PATCH', url: `/v1/patients/${patients.team}/record`, headers: headers.nurse, payload: invalid })
    t.equal(team.statusCode, 400, 'a care-team patient: the body is judged')
    const audit = (await app.inject({ method: 'GET', url: `/v1/audit?patientId=${patients.other}&limit=100`, headers: admin })).json()
    t.ok(audit.items.some((row: { action: string, outcome: string }) => row.action === 'phi:write' && row.outcome === 'denied'), 'the denied write is in the audit log')
  })

  t.test('an ended care-team assignment ends access', async (t) => {
    const nurse = await userWithLogin(app, headers.admin, ['nurse'], 'shift.nurse@example.org')
    const assigned = await app.inject({ method: 'POST', url: '/v1/care-teams', headers: headers.admin, payload: { clinicianId: nurse.id, patientId: patients.other } })
    t.equal((await app.inject({ method: 'GET', url: `/v1/patients/${patients.other}`, headers: nurse.headers })).statusCode, 200)
    const ended = await app.inject({ method: 'DELETE', url: `/v1/care-teams/${assigned.json().id}`, headers: headers.admin })
    t.equal(ended.statusCode, 200)
    t.equal((await app.inject({ method: 'GET', url: `/v1/patients/${patients.other}`, headers: nurse.headers })).statusCode, 404)
    const notClinician = await app.inject({ method: 'POST', url: '/v1/care-teams', headers: headers.admin, payload: { clinicianId: patients.own, patientId: patients.other } })
    t.equal(notClinician.statusCode, 400)
    t.equal(notClinician.json().details[0].path, 'body/clinicianId')
  })
}

t.test('access matrix on PostgreSQL', async (t) => {
  const db = await openTestDatabase(t)
  await runMatrix(t, db)
})

t.test('access matrix on embedded PGlite (patient, nurse, integrator, ML scientist)', async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-access-'))
  const db = await openDatabase({ databaseUrl: null, dataDir: await seedEmbeddedDatabase(dir), log })
  t.teardown(async () => {
    await db.close()
    await fs.rm(dir, { recursive: true, force: true })
  })
  await runMatrix(t, db, ['patient', 'nurse', 'device-integrator', 'ml-scientist'])
})
