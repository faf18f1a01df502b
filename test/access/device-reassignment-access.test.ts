import t from 'tap'
import { startApiFixture } from '../helpers/api-deps.ts'
import { newPatient, onCareTeam, userWithLogin } from '../helpers/people.ts'

// Issue 11 §1: changing or ending a device's assignment needs access to the device's current
// patient (and, for PUT, the new one), and every change is audited against both patients.
const { db, app, headers: admin } = await startApiFixture(t, 'reassignment admin', {
  apiOptions: { rateLimitPerMinute: 1_000_000, unauthenticatedRateLimitPerMinute: 1_000_000 }
})

const p1 = await newPatient(app, admin, 'Patient One')
const p3 = await newPatient(app, admin, 'Patient Three')
const integrator = await userWithLogin(app, admin, ['device-integrator'], 'integrator@example.org')
const nurse = await userWithLogin(app, admin, ['nurse'], 'p1.nurse@example.org')
await onCareTeam(app, admin, nurse.id, p1)
const p3Nurse = await userWithLogin(app, admin, ['nurse'], 'p3.nurse@example.org')
await onCareTeam(app, admin, p3Nurse.id, p3)
const bothNurse = await userWithLogin(app, admin, ['nurse'], 'both.nurse@example.org')
await onCareTeam(app, admin, bothNurse.id, p1)
await onCareTeam(app, admin, bothNurse.id, p3)

let macSuffix = 10
async function deviceOf (patientId: string): Promise<string> {
  const created = await app.inject({
    method: 'POST', url: '/v1/devices', headers: integrator.headers,
    payload: { name: 'Oximeter', mac: `02:00:00:00:1a:${macSuffix++}`, firmwareVersion: '1', softwareVersion: '1', startedAt: '2025-01-01' }
  })
  t.equal(created.statusCode, 201, 'an integrator registers devices')
  const id = created.json().id as string
  const assigned = await app.inject({ method: 'PUT', url: `/v1/devices/${id}/assignment`, headers: admin, payload: { patientId } })
  t.equal(assigned.statusCode, 200, 'admin assigns it')
  return id
}

async function currentPatient (deviceId: string): Promise<string | null> {
  return (await app.inject({ method: 'GET', url: `/v1/devices/${deviceId}`, headers: admin })).json().patientId
}

async function auditRows (patientId: string, action: string): Promise<Array<{ outcome: string, actor_id: string, details: Record<string, unknown> | null }>> {
  const { rows } = await db.pool.query('SELECT * FROM audit_log WHERE patient_id = $1 AND action = $2 ORDER BY id', [patientId, action])
  return rows
}

t.test('a device integrator cannot end a patient\'s monitoring', async (t) => {
  const device = await deviceOf(p3)
  const res = await app.inject({ method: 'DELETE', url: `/v1/devices/${device}/assignment`, headers: integrator.headers })
  t.equal(res.statusCode, 403, 'was 204: P3\'s monitoring stopped silently')
  t.equal(res.json().code, 'VIGIL_ERR_FORBIDDEN')
  t.equal(await currentPatient(device), p3, 'still assigned to P3')
  t.match(await auditRows(p3, 'devices:unassign'), [{ outcome: 'denied', actor_id: integrator.id }], 'the refusal is in P3\'s audit trail')
  const credentials = await app.inject({ method: 'POST', url: `/v1/devices/${device}/credentials`, headers: integrator.headers })
  t.equal(credentials.statusCode, 403, 'nor take over its credential (security pass F5; api-credentials.test.ts)')
})

t.test('a nurse on P1\'s team cannot move P3\'s device to P1', async (t) => {
  const device = await deviceOf(p3)
  const res = await app.inject({ method: 'PUT', url: `/v1/devices/${device}/assignment`, headers: nurse.headers, payload: { patientId: p1 } })
  t.equal(res.statusCode, 403, 'was 200: P3\'s next SpO2 was stored under P1')
  t.equal(res.json().code, 'VIGIL_ERR_FORBIDDEN')
  t.equal(await currentPatient(device), p3)
  const ended = await app.inject({ method: 'DELETE', url: `/v1/devices/${device}/assignment`, headers: nurse.headers })
  t.equal(ended.statusCode, 403, 'nor end it')
  const p3View = await app.inject({ method: 'PUT', url: `/v1/devices/${device}/assignment`, headers: p3Nurse.headers, payload: { patientId: p1 } })
  t.equal(p3View.statusCode, 404, 'P3\'s nurse does not reach P1 either')
  t.equal(p3View.json().code, 'VIGIL_ERR_UNKNOWN_PATIENT')
  t.equal(await currentPatient(device), p3)
})

t.test('a clinician who reaches both patients moves the device; both patients\' trails show it', async (t) => {
  const device = await deviceOf(p3)
  const moved = await app.inject({ method: 'PUT', url: `/v1/devices/${device}/assignment`, headers: bothNurse.headers, payload: { patientId: p1 } })
  t.equal(moved.statusCode, 200)
  t.equal(await currentPatient(device), p1)
  const from = (await auditRows(p3, 'devices:unassign')).filter((r) => r.actor_id === bothNurse.id)
  const to = (await auditRows(p1, 'devices:assign')).filter((r) => r.actor_id === bothNurse.id)
  t.match(from, [{ outcome: 'allowed', details: { deviceId: device, previousPatientId: p3, patientId: p1 } }], 'P3\'s trail names P1')
  t.match(to, [{ outcome: 'allowed', details: { deviceId: device, previousPatientId: p3, patientId: p1 } }], 'P1\'s trail names P3')

  const ended = await app.inject({ method: 'DELETE', url: `/v1/devices/${device}/assignment`, headers: bothNurse.headers })
  t.equal(ended.statusCode, 204, 'the care team ends monitoring')
  t.match((await auditRows(p1, 'devices:unassign')).filter((r) => r.actor_id === bothNurse.id),
    [{ outcome: 'allowed', details: { deviceId: device, previousPatientId: p1, patientId: null } }])
})
