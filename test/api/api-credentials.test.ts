import pino from 'pino'
import t from 'tap'
import { buildApi } from '../../api/app.ts'
import { startApiFixture } from '../helpers/api-deps.ts'
import { newPatient, onCareTeam, userWithLogin } from '../helpers/people.ts'

const { log, db, deps, app, token, headers } = await startApiFixture(t, 'credentials test', {
  apiOptions: { rateLimitPerMinute: 1_000_000, unauthenticatedRateLimitPerMinute: 1_000_000 }
})

const unknownId = '00000000-0000-4000-8000-000000000000'
const device = await deps.devices.create({
  name: 'Thermometer', mac: '02:00:00:00:bb:01', firmwareVersion: '1', softwareVersion: '1', startedAt: '2025-01-01T00:00:00Z'
}, null)
const url = `/v1/devices/${device.id}/credentials`

t.test('issue, rotate and revoke a device credential', async (t) => {
  const revoked: string[] = []
  deps.devices.events.on('credentials-revoked', (id: string) => revoked.push(id))

  const first = await app.inject({ method: 'POST', url, headers })
  t.equal(first.statusCode, 201)
  t.equal(first.headers['cache-control'], 'no-store')
  const one = first.json()
  t.equal(one.username, device.id)
  t.match(one.password, /^vgl_[A-Za-z0-9_-]{43}$/)
  t.type(await deps.devices.authenticate(device.id, one.password), 'string', 'the password works over MQTT auth')

  const second = await app.inject({ method: 'POST', url, headers })
  t.equal(second.statusCode, 201)
  const two = second.json()
  t.not(two.password, one.password, 'rotation gives a new secret')
  t.equal(await deps.devices.authenticate(device.id, one.password), null, 'the old one stops working')
  t.type(await deps.devices.authenticate(device.id, two.password), 'string')
  t.same(revoked, [device.id], 'rotation ends the old credential\'s sessions')

  const del = await app.inject({ method: 'DELETE', url, headers })
  t.equal(del.statusCode, 204)
  t.equal(del.body, '')
  t.equal(await deps.devices.authenticate(device.id, two.password), null)

  const again = await app.inject({ method: 'DELETE', url, headers })
  t.equal(again.statusCode, 404)
  t.equal(again.json().code, 'VIGIL_ERR_NOT_FOUND')
})

t.test('unknown devices', async (t) => {
  for (const method of ['POST', 'DELETE'] as const) {
    const res = await app.inject({ method, url: `/v1/devices/${unknownId}/credentials`, headers })
    t.equal(res.statusCode, 404, method)
    t.equal(res.json().code, 'VIGIL_ERR_UNKNOWN_DEVICE', method)
  }
})

t.test('the password never reaches the logs', async (t) => {
  const lines: string[] = []
  const logged = pino({ level: 'trace' }, { write: (line: string) => { lines.push(line) } })
  const observed = await buildApi({ ...deps, log: logged })
  t.teardown(() => observed.close())
  const ok = await observed.inject({ method: 'POST', url: `${url}?note=secret-in-query`, headers })
  t.equal(ok.statusCode, 201)
  const all = lines.join('')
  t.notMatch(all, ok.json().password)
  t.notMatch(all, token, 'nor the bearer token')
  t.notMatch(all, 'secret-in-query', 'nor query strings')
  t.match(all, '/v1/devices/:id/credentials', 'the route pattern is logged')
})

// Security pass F5: rotating or revoking an assigned device's credential hands its patient's
// monitoring to whoever holds the new secret (forged readings, alerts auto-resolved) or stops
// it, so it needs access to that patient, like changing the assignment (issue 11 §1).
t.test('credentials of an assigned device need its current patient', async (t) => {
  const p2 = await newPatient(app, headers, 'Patient Two')
  const integrator = await userWithLogin(app, headers, ['device-integrator'], 'cred.integrator@example.org')
  const nurse = await userWithLogin(app, headers, ['nurse'], 'cred.p2.nurse@example.org')
  await onCareTeam(app, headers, nurse.id, p2)
  const created = await app.inject({
    method: 'POST', url: '/v1/devices', headers: integrator.headers,
    payload: { name: 'Thermometer', mac: '02:00:00:00:bb:02', firmwareVersion: '1', softwareVersion: '1', startedAt: '2025-01-01' }
  })
  t.equal(created.statusCode, 201)
  const d2 = created.json().id as string
  const d2Url = `/v1/devices/${d2}/credentials`
  const audit = async (patientId: string | null, action: string): Promise<Array<{ outcome: string, actor_id: string, details: Record<string, unknown> | null }>> =>
    (await db.pool.query('SELECT * FROM audit_log WHERE patient_id IS NOT DISTINCT FROM $1 AND action = $2 AND details->>\'deviceId\' = $3 ORDER BY id', [patientId, action, d2])).rows

  const provisioned = await app.inject({ method: 'POST', url: d2Url, headers: integrator.headers })
  t.equal(provisioned.statusCode, 201, 'an unassigned device is provisioned by integrators')
  t.match(await audit(null, 'credentials:issue'), [{ outcome: 'allowed', actor_id: integrator.id }], 'audited without a patient')
  const assigned = await app.inject({ method: 'PUT', url: `/v1/devices/${d2}/assignment`, headers, payload: { patientId: p2 } })
  t.equal(assigned.statusCode, 200)

  const rotated = await app.inject({ method: 'POST', url: d2Url, headers: integrator.headers })
  t.equal(rotated.statusCode, 403, 'was 201: the integrator took over P2\'s thermometer')
  t.equal(rotated.json().code, 'VIGIL_ERR_FORBIDDEN')
  t.type(await deps.devices.authenticate(d2, provisioned.json().password), 'string', 'the device keeps its credential')
  const revoked = await app.inject({ method: 'DELETE', url: d2Url, headers: integrator.headers })
  t.equal(revoked.statusCode, 403, 'was 204: P2\'s monitoring stopped silently')
  t.equal(revoked.json().code, 'VIGIL_ERR_FORBIDDEN')
  t.type(await deps.devices.authenticate(d2, provisioned.json().password), 'string')
  t.match(await audit(p2, 'credentials:issue'), [{ outcome: 'denied', actor_id: integrator.id, details: { deviceId: d2, patientId: p2 } }], 'the refusals are in P2\'s trail')
  t.match(await audit(p2, 'credentials:revoke'), [{ outcome: 'denied', actor_id: integrator.id }])

  const byNurse = await app.inject({ method: 'POST', url: d2Url, headers: nurse.headers })
  t.equal(byNurse.statusCode, 403, 'a nurse has no credentials:write permission')
  const byAdmin = await app.inject({ method: 'POST', url: d2Url, headers })
  t.equal(byAdmin.statusCode, 201, 'an admin (reaching every patient) rotates it')
  const adminRevoke = await app.inject({ method: 'DELETE', url: d2Url, headers })
  t.equal(adminRevoke.statusCode, 204)
  t.equal((await audit(p2, 'credentials:issue')).filter((r) => r.outcome === 'allowed').length, 1, 'audited against P2')
  t.equal((await audit(p2, 'credentials:revoke')).filter((r) => r.outcome === 'allowed').length, 1)
})
