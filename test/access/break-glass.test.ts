import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import pino from 'pino'
import t from 'tap'
import { buildApi } from '../../api/app.ts'
import { openDatabase } from '../../store/database.ts'
import { apiDepsFor, startApiFixture } from '../helpers/api-deps.ts'
import { newPatient, patientWithLogin, userWithLogin } from '../helpers/people.ts'
import { seedEmbeddedDatabase } from '../helpers/pglite-template.ts'

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

// Security pass F1: the count and the grant were separate statements, so parallel requests
// all saw the same count and all got 201 (16 of 16 with a limit of 10).
t.test('parallel break-glass requests cannot beat the hourly limit', async (t) => {
  const racer = await userWithLogin(app, admin, ['doctor'], 'racing.doctor@example.org')
  const results = await Promise.all(Array.from({ length: 16 }, async () =>
    await app.inject({ method: 'POST', url: `/v1/patients/${patientId}/break-glass`, headers: racer.headers, payload: { reason } })))
  const statuses = results.map((r) => r.statusCode).sort()
  t.same(statuses, [...Array(3).fill(201), ...Array(13).fill(429)], 'exactly the limit (3) is granted')
  const { rows } = await db.pool.query('SELECT count(*)::int AS n FROM break_glass_grants WHERE user_id = $1', [racer.id])
  t.equal(rows[0].n, 3, 'three grants stored')
  const audit = await db.pool.query("SELECT outcome, count(*)::int AS n FROM audit_log WHERE actor_id = $1 AND action = 'break-glass' GROUP BY outcome ORDER BY outcome", [racer.id])
  t.same(audit.rows, [{ outcome: 'allowed', n: 3 }, { outcome: 'denied', n: 13 }], 'each decision audited')
})

t.test('parallel break-glass requests cannot beat the hourly limit on embedded PGlite', async (t) => {
  const log = pino({ level: 'silent' })
  const dataDir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-break-glass-'))
  t.teardown(async () => { await fs.rm(dataDir, { recursive: true, force: true }) })
  const embedded = await openDatabase({ databaseUrl: null, dataDir: await seedEmbeddedDatabase(dataDir), log })
  t.teardown(async () => { await embedded.close() })
  const deps = apiDepsFor(embedded, log, { settings: { breakGlassGrantsPerHour: 3 } })
  const api = await buildApi({ ...deps, rateLimitPerMinute: 1_000_000, unauthenticatedRateLimitPerMinute: 1_000_000 })
  t.teardown(async () => { await api.close() })
  t.equal(embedded.kind, 'pglite')
  const { token } = await deps.tokens.create('embedded admin', 'admin')
  const embeddedAdmin = { authorization: `Bearer ${token}` }
  const p = await newPatient(api, embeddedAdmin, 'Embedded Emergency')
  const racer = await userWithLogin(api, embeddedAdmin, ['doctor'], 'embedded.racer@example.org')
  const results = await Promise.all(Array.from({ length: 8 }, async () =>
    await api.inject({ method: 'POST', url: `/v1/patients/${p}/break-glass`, headers: racer.headers, payload: { reason } })))
  t.same(results.map((r) => r.statusCode).sort(), [201, 201, 201, 429, 429, 429, 429, 429], 'exactly the limit (3) is granted')
})

// Security pass F2: characters that show nothing but are not \p{Cf} (variation selectors,
// Mongolian free variation selectors, Khmer inherent vowels, musical symbol combining marks,
// the object replacement character, lone combining marks) padded a reason to length.
t.test('reasons made of default-ignorable or non-letter characters are refused', async (t) => {
  const cases: Array<[string, string]> = [
    ['U+FE0F variation selector', '\ufe0f'.repeat(12)],
    ['U+E0100 variation selector supplement', '\u{e0100}'.repeat(12)],
    ['U+180B Mongolian free variation selector', '\u180b'.repeat(12)],
    ['U+17B4 Khmer vowel inherent AQ', '\u17b4'.repeat(12)],
    ['U+17B5 Khmer vowel inherent AA', '\u17b5'.repeat(12)],
    ['U+1D159 musical symbol null notehead', '\u{1d159}'.repeat(12)],
    ['U+FFFC object replacement character', '\ufffc'.repeat(12)],
    ['U+0300 lone combining grave accents', '\u0300'.repeat(12)],
    ['punctuation only', '.,;:!?-_()[]'],
    ['short text padded with variation selectors', 'ok\ufe0f\ufe0f\ufe0f\ufe0f\ufe0f\ufe0f\ufe0f\ufe0f\ufe0f\ufe0f']
  ]
  for (const [name, text] of cases) {
    const res = await app.inject({ method: 'POST', url: `/v1/patients/${patientId}/break-glass`, headers: doctor.headers, payload: { reason: text } })
    t.equal(res.statusCode, 400, name)
    t.equal(res.json().code, 'VIGIL_ERR_VALIDATION', name)
  }
})
