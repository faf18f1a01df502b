import t from 'tap'
import { startApiFixture } from '../helpers/api-deps.ts'
import { newPatient, onCareTeam, patientWithLogin, userWithLogin } from '../helpers/people.ts'

// GET /v1/worklist: who sees which rows, what a row holds, the order, the audit row.

const fixture = await startApiFixture(t, 'worklist test', { apiOptions: { maxEventLoopDelayMs: 0 } })
const { app, deps, headers: admin } = fixture
const nurse = await userWithLogin(app, admin, ['nurse'], 'nurse@worklist.example')
const integrator = await userWithLogin(app, admin, ['device-integrator'], 'integrator@worklist.example')
const calm = await newPatient(app, admin, 'Calm Patient')
const sick = await newPatient(app, admin, 'Sick Patient')
const offTeam = await newPatient(app, admin, 'Elsewhere Patient')
for (const p of [calm, sick]) await onCareTeam(app, admin, nurse.id, p)

const device = (await app.inject({ method: 'POST', url: '/v1/devices', headers: admin, payload: { name: 'Monitor', mac: '02:00:00:00:aa:01', firmwareVersion: '1', softwareVersion: '1', startedAt: '2026-01-01' } })).json()
// Setup checks throw (an assertion at the top level would let tap end the root test while a
// later top-level await is still pending).
const assigned = await app.inject({ method: 'PUT', url: `/v1/devices/${device.id}/assignment`, headers: admin, payload: { patientId: sick, validFrom: new Date(Date.now() - 3_600_000).toISOString() } })
if (assigned.statusCode !== 200) throw new Error(`assignment: ${assigned.statusCode} ${assigned.body}`)
const now = Date.now()
await deps.readings.write([
  { patientId: sick, deviceId: device.id, seq: 1, metric: 'heart_rate', value: 131, unit: '/min', ts: now - 60_000 },
  { patientId: sick, deviceId: device.id, seq: 1, metric: 'news2_score', value: 4, unit: '{score}', ts: now - 120_000 },
  { patientId: sick, deviceId: device.id, seq: 2, metric: 'news2_score', value: 7, unit: '{score}', ts: now - 60_000 },
  { patientId: calm, deviceId: device.id, seq: 1, metric: 'heart_rate', value: 70, unit: '/min', ts: now - 3_600_000 },
  { patientId: offTeam, deviceId: device.id, seq: 1, metric: 'news2_score', value: 9, unit: '{score}', ts: now - 60_000 }
])

t.test('a nurse gets her care team, most urgent first, with NEWS2 and its trend, vitals and devices', async (t) => {
  const res = await app.inject({ method: 'GET', url: '/v1/worklist', headers: nurse.headers })
  t.equal(res.statusCode, 200)
  t.equal(res.headers['cache-control'], 'no-store')
  const { items, truncated } = res.json()
  t.equal(truncated, false)
  t.same(items.map((r: any) => r.displayName), ['Sick Patient', 'Calm Patient'], 'NEWS2 7 before no score; the off-team patient absent')
  const [first, second] = items
  t.match(first, {
    patientId: sick, reach: 'care-team', alerts: [],
    news2: { total: 7, band: 'high', previous: 4 },
    vitals: [{ metric: 'heart_rate', value: 131, unit: '/min' }],
    devices: [{ id: device.id, name: 'Monitor', connected: false, batteryPercent: null }]
  })
  t.notOk(first.vitals.some((v: any) => v.metric === 'news2_score'), 'NEWS2 in its own column, not among the vitals')
  t.match(second, { patientId: calm, news2: null, devices: [] })
})

t.test('one audit row per read, naming no patient', async (t) => {
  const before = (await app.inject({ method: 'GET', url: `/v1/audit?actorId=${nurse.id}&limit=100`, headers: admin })).json().items.length
  await app.inject({ method: 'GET', url: '/v1/worklist', headers: nurse.headers })
  const rows = (await app.inject({ method: 'GET', url: `/v1/audit?actorId=${nurse.id}&limit=100`, headers: admin })).json().items
  t.equal(rows.length, before + 1)
  t.match(rows[0], { action: 'worklist:read', patientId: null, outcome: 'allowed' })
})

t.test('a patient sees only herself; an admin everyone; an integrator no one (no patients:read)', async (t) => {
  const self = await patientWithLogin(app, admin, calm, 'calm@worklist.example')
  const mine = (await app.inject({ method: 'GET', url: '/v1/worklist', headers: self })).json().items
  t.same(mine.map((r: any) => [r.patientId, r.reach]), [[calm, 'self']])
  const all = (await app.inject({ method: 'GET', url: '/v1/worklist', headers: admin })).json().items
  t.same(all.map((r: any) => r.displayName), ['Elsewhere Patient', 'Sick Patient', 'Calm Patient'])
  t.equal(all[0].reach, 'all')
  const refused = await app.inject({ method: 'GET', url: '/v1/worklist', headers: integrator.headers })
  t.equal(refused.statusCode, 403)
  t.equal((await app.inject({ method: 'GET', url: '/v1/worklist' })).statusCode, 401)
})

t.test('break-glass patients are on the list, marked as such', async (t) => {
  const glass = await app.inject({ method: 'POST', url: `/v1/patients/${offTeam}/break-glass`, headers: nurse.headers, payload: { reason: 'Covering the night shift, patient deteriorating' } })
  t.equal(glass.statusCode, 201, glass.body)
  const items = (await app.inject({ method: 'GET', url: '/v1/worklist', headers: nurse.headers })).json().items
  t.same(items.map((r: any) => [r.displayName, r.reach]), [['Elsewhere Patient', 'break-glass'], ['Sick Patient', 'care-team'], ['Calm Patient', 'care-team']])
})

t.test('a worklist read costs the same number of queries for 2 patients as for 8 (no query per patient)', async (t) => {
  let queries = 0
  const original = fixture.db.pool.query.bind(fixture.db.pool)
  // Authentication's own queries (the session, touched at most once a minute) are not the worklist's.
  fixture.db.pool.query = ((...args: Parameters<typeof original>) => {
    if (!/\bsessions\b/.test(String(args[0]))) queries++
    return original(...args)
  }) as typeof original
  t.teardown(() => { fixture.db.pool.query = original })
  const count = async (headers: Record<string, string>): Promise<number> => {
    queries = 0
    const res = await app.inject({ method: 'GET', url: '/v1/worklist', headers })
    t.equal(res.statusCode, 200)
    return queries
  }
  const ward = await userWithLogin(app, admin, ['nurse'], 'counting-nurse@worklist.example')
  for (const p of [calm, sick]) await onCareTeam(app, admin, ward.id, p)
  const two = await count(ward.headers)
  for (let i = 0; i < 6; i++) {
    const p = await newPatient(app, admin, `Counted Patient ${i}`)
    await onCareTeam(app, admin, ward.id, p)
    await deps.readings.write([
      { patientId: p, deviceId: device.id, seq: 1, metric: 'heart_rate', value: 80 + i, unit: '/min', ts: now - 60_000 },
      { patientId: p, deviceId: device.id, seq: 1, metric: 'news2_score', value: i, unit: '{score}', ts: now - 60_000 }
    ])
  }
  const eight = await count(ward.headers)
  t.equal((await app.inject({ method: 'GET', url: '/v1/worklist', headers: ward.headers })).json().items.length, 8)
  t.equal(eight, two, `${two} queries for 2 patients, ${eight} for 8`)
})
