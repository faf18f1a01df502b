import t from 'tap'
import { startApiFixture } from './helpers/api-deps.ts'
import { newPatient, patientWithLogin, userWithLogin } from './helpers/people.ts'

let nowMs = Date.parse('2026-03-01T09:00:00Z')
const now = (): Date => new Date(nowMs)
const advance = (seconds: number): void => { nowMs += seconds * 1000 }

// Long sessions so only the break-glass window expires when the clock moves.
const { db, deps, app, headers: admin } = await startApiFixture(t, 'break-glass admin', {
  access: { now, settings: { breakGlassMinutes: 30, breakGlassGrantsPerHour: 3, accessTokenTtlSeconds: 86_400, sessionIdleSeconds: 86_400, sessionMaxSeconds: 86_400 } },
  apiOptions: { rateLimitPerMinute: 1_000_000, unauthenticatedRateLimitPerMinute: 1_000_000 }
})
const patientId = await newPatient(app, admin, 'Ida Emergency')
const patient = await patientWithLogin(app, admin, patientId, 'ida@example.org')
const doctor = await userWithLogin(app, admin, ['doctor'], 'er.doctor@example.org')
const developer = await userWithLogin(app, admin, ['developer'], 'dev@example.org')
const reason = 'Unconscious in the ER, no care team reachable'

t.test('break-glass opens a patient outside the care team for a limited time, audited with the reason', async (t) => {
  t.equal((await app.inject({ method: 'GET', url: `/v1/patients/${patientId}`, headers: doctor.headers })).statusCode, 404, 'closed before')

  const res = await app.inject({ method: 'POST', url: `/v1/patients/${patientId}/break-glass`, headers: doctor.headers, payload: { reason } })
  t.equal(res.statusCode, 201)
  t.match(res.json(), { userId: doctor.id, patientId, reason, grantedAt: now().toISOString(), expiresAt: new Date(nowMs + 30 * 60_000).toISOString() })

  const read = await app.inject({ method: 'GET', url: `/v1/patients/${patientId}/readings`, headers: doctor.headers })
  t.equal(read.statusCode, 200, 'open during the grant')
  const audit = (await app.inject({ method: 'GET', url: `/v1/audit?actorId=${doctor.id}&limit=2`, headers: admin })).json().items
  t.match(audit[0], { action: 'readings:read', outcome: 'allowed', breakGlassReason: reason })
  t.match(audit[1], { action: 'break-glass', outcome: 'allowed', breakGlassReason: reason })
  const list = await app.inject({ method: 'GET', url: '/v1/patients', headers: doctor.headers })
  t.same(list.json().items.map((p: { id: string }) => p.id), [patientId], 'listed while granted')

  const review = await app.inject({ method: 'GET', url: `/v1/break-glass?patientId=${patientId}`, headers: admin })
  t.equal(review.statusCode, 200)
  t.match(review.json().items, [{ userId: doctor.id, reason }], 'listed for review')

  const log = (await app.inject({ method: 'GET', url: '/v1/me/access-log', headers: patient })).json().items
  t.ok(log.some((e: { actorId: string, breakGlass: boolean }) => e.actorId === doctor.id && e.breakGlass), 'the patient sees a break-glass access')

  advance(29 * 60)
  t.equal((await app.inject({ method: 'GET', url: `/v1/patients/${patientId}`, headers: doctor.headers })).statusCode, 200, 'open a minute before expiry')
  advance(60)
  t.equal((await app.inject({ method: 'GET', url: `/v1/patients/${patientId}`, headers: doctor.headers })).statusCode, 404, 'closed at expiry')
  t.same((await app.inject({ method: 'GET', url: '/v1/patients', headers: doctor.headers })).json().items, [], 'no longer listed')
  const after = (await app.inject({ method: 'GET', url: `/v1/audit?actorId=${doctor.id}&limit=1`, headers: admin })).json().items[0]
  t.match(after, { outcome: 'denied', breakGlassReason: null })
})

t.test('break-glass requests that are refused', async (t) => {
  const cases: Array<[string, Record<string, string>, string, unknown, number, string]> = [
    ['no reason', doctor.headers, patientId, {}, 400, 'VIGIL_ERR_VALIDATION'],
    ['a too short reason', doctor.headers, patientId, { reason: 'because' }, 400, 'VIGIL_ERR_VALIDATION'],
    ['a blank reason', doctor.headers, patientId, { reason: '             ' }, 400, 'VIGIL_ERR_VALIDATION'],
    // Issue 11 §9: normalized (trimmed, invisible characters removed) before the length check.
    ['a reason padded to length', doctor.headers, patientId, { reason: '          x' }, 400, 'VIGIL_ERR_VALIDATION'],
    ['12 zero-width spaces', doctor.headers, patientId, { reason: '\u200b'.repeat(12) }, 400, 'VIGIL_ERR_VALIDATION'],
    ['a short reason stuffed with invisible characters', doctor.headers, patientId, { reason: 'ok\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e\u2800\u3164\u115f' }, 400, 'VIGIL_ERR_VALIDATION'],
    ['an unknown patient', doctor.headers, '00000000-0000-4000-8000-000000000000', { reason }, 404, 'VIGIL_ERR_UNKNOWN_PATIENT'],
    ['a role without break-glass', developer.headers, patientId, { reason }, 403, 'VIGIL_ERR_FORBIDDEN'],
    ['a patient', patient, patientId, { reason }, 403, 'VIGIL_ERR_FORBIDDEN'],
    ['an API token (no person to hold it)', admin, patientId, { reason }, 403, 'VIGIL_ERR_FORBIDDEN']
  ]
  for (const [name, headers, id, payload, status, code] of cases) {
    const res = await app.inject({ method: 'POST', url: `/v1/patients/${id}/break-glass`, headers, payload: payload as object })
    t.equal(res.statusCode, status, name)
    t.equal(res.json().code, code, name)
  }
  const short = await app.inject({ method: 'POST', url: `/v1/patients/${patientId}/break-glass`, headers: doctor.headers, payload: { reason: 'because' } })
  t.equal(short.json().details[0].path, 'body/reason')
  const denied = (await app.inject({ method: 'GET', url: '/v1/audit?patientId=00000000-0000-4000-8000-000000000000', headers: admin })).json().items
  t.match(denied, [{ action: 'break-glass', outcome: 'denied', actorId: doctor.id }], 'the refused attempt is audited')
})

t.test('break-glass grants per clinician per hour are limited; refusals are audited (issue 11 §9)', async (t) => {
  const busy = await userWithLogin(app, admin, ['doctor'], 'busy.doctor@example.org')
  const open = () => app.inject({ method: 'POST', url: `/v1/patients/${patientId}/break-glass`, headers: busy.headers, payload: { reason: `  ${reason}\u200b ` } })
  for (let i = 0; i < 3; i++) {
    const res = await open()
    t.equal(res.statusCode, 201, `grant ${i + 1} of 3`)
    t.equal(res.json().reason, reason, 'stored normalized')
  }
  const fourth = await open()
  t.equal(fourth.statusCode, 429, 'was 201: no limit')
  t.equal(fourth.json().code, 'VIGIL_ERR_BREAK_GLASS_LIMIT')
  t.ok(Number(fourth.headers['retry-after']) > 0, 'says when to retry')
  const { rows } = await db.pool.query("SELECT outcome FROM audit_log WHERE actor_id = $1 AND action = 'break-glass' ORDER BY id", [busy.id])
  t.same(rows.map((r) => r.outcome), ['allowed', 'allowed', 'allowed', 'denied'], 'the refusal is audited')
  advance(3600)
  t.equal((await open()).statusCode, 201, 'an hour later it is allowed again')
})
