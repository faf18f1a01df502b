import t from 'tap'
import { change, startAlertingFixture } from '../../helpers/alerting.ts'
import { onCareTeam, userWithLogin } from '../../helpers/people.ts'

const f = await startAlertingFixture({ manualClock: true })
t.teardown(() => f.close())
const { app, alerting, adminHeaders: headers } = f
const clock = f.clock!

async function openAlerts (patientId: string): Promise<any[]> {
  const res = await app.inject({ method: 'GET', url: `/v1/alerts?patientId=${patientId}`, headers })
  t.equal(res.statusCode, 200)
  return res.json().items
}

t.test('firing opens one alert per patient and rule; repeats update it; cleared auto-resolves it', async (t) => {
  const patientId = await f.createPatient()
  const at = clock.now() - 60_000
  await alerting.sink.apply([change(patientId, { at })])
  let [alert, ...more] = await openAlerts(patientId)
  t.equal(more.length, 0)
  t.match(alert, { patientId, ruleId: 'hr-high', kind: 'threshold', severity: 'high', status: 'open', occurrences: 1, openedAt: new Date(at).toISOString() })

  // The same change again (replay) changes nothing; a later one counts and raises severity.
  await alerting.sink.apply([change(patientId, { at })])
  await alerting.sink.apply([change(patientId, { at: at + 1000, severity: 'critical', summary: 'heart_rate 150 /min above 120' })])
  await alerting.sink.apply([change(patientId, { at: at + 2000, severity: 'medium' })])
  const alerts = await openAlerts(patientId)
  t.equal(alerts.length, 1, 'still one alert')
  t.match(alerts[0], { id: alert.id, occurrences: 3, severity: 'critical', status: 'open' })

  // Another rule for the same patient is its own alert.
  await alerting.sink.apply([change(patientId, { ruleId: 'spo2-low', at })])
  t.equal((await openAlerts(patientId)).length, 2)

  // A clear older than the latest firing is stale; the current one resolves.
  await alerting.sink.apply([change(patientId, { status: 'cleared', at: at + 1500 })])
  t.equal((await app.inject({ method: 'GET', url: `/v1/alerts/${alert.id}`, headers })).json().status, 'open')
  await alerting.sink.apply([change(patientId, { status: 'cleared', at: at + 5000 })])
  alert = (await app.inject({ method: 'GET', url: `/v1/alerts/${alert.id}`, headers })).json()
  t.match(alert, { status: 'resolved', resolution: 'auto', resolvedBy: null, nextEscalationAt: null })
  // Clearing again is a no-op; firing again opens a new alert.
  await alerting.sink.apply([change(patientId, { status: 'cleared', at: at + 6000 })])
  await alerting.sink.apply([change(patientId, { at: at + 7000 })])
  const hr = (await openAlerts(patientId)).filter((a) => a.ruleId === 'hr-high')
  t.equal(hr.length, 2)
  t.same(hr.map((a) => a.status).sort(), ['open', 'resolved'])

  const events = (await app.inject({ method: 'GET', url: `/v1/alerts/${alert.id}/events`, headers })).json().items
  // The third firing changed the summary back (not the severity): an 'updated' event records it.
  t.same(events.map((e: any) => e.type), ['opened', 'severity_raised', 'updated', 'resolved'])
})

t.test('concurrent firings for one patient and rule make one alert', async (t) => {
  const patientId = await f.createPatient()
  await Promise.all(Array.from({ length: 8 }, (_, i) => alerting.sink.apply([change(patientId, { at: clock.now() - 10_000 + i })])))
  const alerts = await openAlerts(patientId)
  t.equal(alerts.length, 1)
  t.ok(alerts[0].occurrences >= 1 && alerts[0].occurrences <= 8)
})

t.test('acknowledge, assign, comment, resolve through the API; 409s on resolved alerts', async (t) => {
  const patientId = await f.createPatient()
  await alerting.sink.apply([change(patientId)])
  const [alert] = await openAlerts(patientId)
  const post = async (path: string, payload?: object) =>
    await app.inject({ method: 'POST', url: `/v1/alerts/${alert.id}/${path}`, headers, ...(payload === undefined ? {} : { payload }) })

  const acked = await post('acknowledge')
  t.equal(acked.statusCode, 200)
  t.match(acked.json(), { status: 'acknowledged', acknowledgedAt: String, acknowledgedBy: String, nextEscalationAt: null })
  t.equal((await post('acknowledge')).json().code, 'VIGIL_ERR_ALERT_ACKNOWLEDGED')

  const unknown = await post('assign', { userId: '5a1e0000-0000-4000-8000-000000000001' })
  t.equal(unknown.statusCode, 404, 'only to a person who exists')
  t.equal(unknown.json().code, 'VIGIL_ERR_UNKNOWN_USER')
  const { id: userId } = await userWithLogin(app, headers, ['nurse'], `nurse-${patientId.slice(0, 8)}@example.org`)
  await onCareTeam(app, headers, userId, patientId)
  const assigned = await post('assign', { userId })
  t.equal(assigned.statusCode, 200)
  t.equal(assigned.json().assignedTo, userId)

  const comment = await post('comments', { text: 'Called the patient; on the way to the ward.' })
  t.equal(comment.statusCode, 201)
  t.match(comment.json(), { type: 'commented', body: { text: 'Called the patient; on the way to the ward.' } })

  const resolved = await post('resolve', { reason: 'false alarm: probe off' })
  t.equal(resolved.statusCode, 200)
  t.match(resolved.json(), { status: 'resolved', resolution: 'manual', resolvedBy: String })

  for (const [path, payload] of [['acknowledge', undefined], ['resolve', {}], ['assign', { userId }]] as const) {
    const res = await post(path, payload)
    t.equal(res.statusCode, 409, path)
    t.equal(res.json().code, 'VIGIL_ERR_ALERT_RESOLVED', path)
  }
  t.equal((await post('comments', { text: 'note after the fact' })).statusCode, 201, 'comments stay possible')

  const events = (await app.inject({ method: 'GET', url: `/v1/alerts/${alert.id}/events`, headers })).json().items
  t.same(events.map((e: any) => e.type), ['opened', 'acknowledged', 'assigned', 'commented', 'resolved', 'commented'])
})

t.test('alerts are assigned only to clinicians who reach the patient (issue 11)', async (t) => {
  const patientId = await f.createPatient()
  await alerting.sink.apply([change(patientId)])
  const [alert] = await openAlerts(patientId)
  const assign = async (userId: string) => await app.inject({ method: 'POST', url: `/v1/alerts/${alert.id}/assign`, headers, payload: { userId } })
  const tag = patientId.slice(0, 8)
  const integrator = await userWithLogin(app, headers, ['device-integrator'], `integrator-${tag}@example.org`)
  const offTeam = await userWithLogin(app, headers, ['nurse'], `off-team-${tag}@example.org`)
  const adminOnly = await userWithLogin(app, headers, ['admin'], `admin-${tag}@example.org`)
  for (const [who, id] of <Array<[string, string]>>[['a device integrator', integrator.id], ['a nurse off the care team', offTeam.id], ['an admin who is no clinician', adminOnly.id], ['the patient', patientId]]) {
    const res = await assign(id)
    t.equal(res.statusCode, 422, `${who}: was 200`)
    t.equal(res.json().code, 'VIGIL_ERR_INVALID_ASSIGNEE', who)
  }
  t.equal((await app.inject({ method: 'GET', url: `/v1/alerts/${alert.id}`, headers })).json().assignedTo, null, 'still unassigned')
  await onCareTeam(app, headers, offTeam.id, patientId)
  t.equal((await assign(offTeam.id)).statusCode, 200, 'on the care team now')
})

t.test('bad requests: unknown alert, validation with field paths, bad cursor', async (t) => {
  const unknown = '00000000-0000-4000-8000-00000000dead'
  const cases: Array<[string, string, unknown, number, string, string?]> = [
    ['GET', `/v1/alerts/${unknown}`, undefined, 404, 'VIGIL_ERR_UNKNOWN_ALERT'],
    ['POST', `/v1/alerts/${unknown}/acknowledge`, undefined, 404, 'VIGIL_ERR_UNKNOWN_ALERT'],
    ['GET', '/v1/alerts/not-a-uuid', undefined, 400, 'VIGIL_ERR_VALIDATION', 'params/id'],
    ['POST', `/v1/alerts/${unknown}/assign`, { userId: 'bob' }, 400, 'VIGIL_ERR_VALIDATION', 'body/userId'],
    ['POST', `/v1/alerts/${unknown}/comments`, { text: '' }, 400, 'VIGIL_ERR_VALIDATION', 'body/text'],
    ['POST', `/v1/alerts/${unknown}/comments`, { text: 'x', extra: 1 }, 400, 'VIGIL_ERR_VALIDATION', 'body/extra'],
    ['GET', '/v1/alerts?status=closed', undefined, 400, 'VIGIL_ERR_VALIDATION', 'querystring/status'],
    ['GET', '/v1/alerts?cursor=abc', undefined, 400, 'VIGIL_ERR_BAD_CURSOR'],
    ['GET', '/v1/alerts?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z', undefined, 400, 'VIGIL_ERR_VALIDATION', 'querystring/to'],
    ['GET', '/v1/alerts/burden?from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z', undefined, 400, 'VIGIL_ERR_VALIDATION', 'querystring/from']
  ]
  for (const [method, url, payload, status, code, path] of cases) {
    const res = await app.inject({ method: method as 'GET', url, headers, ...(payload === undefined ? {} : { payload: payload as object }) })
    t.equal(res.statusCode, status, `${method} ${url}`)
    t.equal(res.json().code, code, `${method} ${url}`)
    if (path !== undefined) t.equal(res.json().details?.[0]?.path, path, `${method} ${url}`)
  }
})

t.test('a clinician sees and acts on only their patients; permissions are enforced', async (t) => {
  const mine = await f.createPatient()
  const theirs = await f.createPatient()
  await alerting.sink.apply([change(mine), change(theirs)])
  const { token } = f.access.clinicianToken([mine])
  const h = { authorization: `Bearer ${token}` }
  const list = (await app.inject({ method: 'GET', url: '/v1/alerts?limit=1000', headers: h })).json().items
  t.ok(list.length > 0)
  t.ok(list.every((a: any) => a.patientId === mine), 'only visible patients listed')
  const [hidden] = await openAlerts(theirs)
  t.equal((await app.inject({ method: 'GET', url: `/v1/alerts/${hidden.id}`, headers: h })).json().code, 'VIGIL_ERR_UNKNOWN_ALERT')
  t.equal((await app.inject({ method: 'POST', url: `/v1/alerts/${hidden.id}/acknowledge`, headers: h })).statusCode, 404)
  t.equal((await app.inject({ method: 'GET', url: `/v1/alerts?patientId=${theirs}`, headers: h })).statusCode, 404)

  const readOnly = f.access.clinicianToken([mine], ['alerts:read'])
  const [own] = await openAlerts(mine)
  const refused = await app.inject({ method: 'POST', url: `/v1/alerts/${own.id}/acknowledge`, headers: { authorization: `Bearer ${readOnly.token}` } })
  t.equal(refused.json().code, 'VIGIL_ERR_FORBIDDEN')
  t.equal((await app.inject({ method: 'GET', url: '/v1/alerts/burden', headers: { authorization: `Bearer ${readOnly.token}` } })).json().code, 'VIGIL_ERR_FORBIDDEN', 'burden needs rules:read')
  t.equal((await app.inject({ method: 'GET', url: '/v1/alerts' })).statusCode, 401)
})

t.test('list filters and paging', async (t) => {
  const patientId = await f.createPatient()
  for (let i = 0; i < 5; i++) await alerting.sink.apply([change(patientId, { ruleId: `rule-${i}`, severity: i % 2 === 0 ? 'low' : 'critical' })])
  const q = (qs: string) => app.inject({ method: 'GET', url: `/v1/alerts?patientId=${patientId}&${qs}`, headers }).then((r) => r.json())
  t.equal((await q('severity=critical')).items.length, 2)
  t.equal((await q('ruleId=rule-3')).items.length, 1)
  t.equal((await q('status=resolved')).items.length, 0)
  const first = await q('limit=2')
  t.equal(first.items.length, 2)
  t.same(first.items.map((a: any) => a.ruleId), ['rule-4', 'rule-3'], 'newest first')
  const second = await q(`limit=2&cursor=${first.nextCursor}`)
  t.same(second.items.map((a: any) => a.ruleId), ['rule-2', 'rule-1'])
  const third = await q(`limit=2&cursor=${second.nextCursor}`)
  t.same(third.items.map((a: any) => a.ruleId), ['rule-0'])
  t.equal(third.nextCursor, null)
})

t.test('burden: alerts per patient-day and time to acknowledge, per rule', async (t) => {
  // A window of its own: two patients monitored for the whole of one day.
  const dayStart = Date.parse('2026-10-01T00:00:00Z')
  const p1 = await f.createPatient()
  const p2 = await f.createPatient()
  for (const p of [p1, p2]) {
    const device = await f.deps.devices.create({ name: 'm', mac: `02:00:00:00:${p.slice(0, 2)}:${p.slice(2, 4)}`, firmwareVersion: '1', softwareVersion: '1', startedAt: '2026-01-01T00:00:00Z' } as any, null)
    await f.deps.devices.assign(device.id, p, new Date(dayStart - 86_400_000), null)
  }
  // Three alerts on one rule, acknowledged after 60 s, 120 s and 600 s.
  const acks = [60, 120, 600]
  for (const [i, seconds] of acks.entries()) {
    const p = i === 0 ? p1 : p2
    clock.set(dayStart + 3_600_000 * (i + 1))
    await alerting.sink.apply([change(p, { ruleId: 'burden-rule', at: clock.now() })])
    const [a] = (await app.inject({ method: 'GET', url: `/v1/alerts?patientId=${p}&ruleId=burden-rule&status=open`, headers })).json().items
    clock.advance(seconds * 1000)
    t.equal((await app.inject({ method: 'POST', url: `/v1/alerts/${a.id}/acknowledge`, headers })).statusCode, 200)
    await app.inject({ method: 'POST', url: `/v1/alerts/${a.id}/resolve`, headers, payload: {} })
  }
  const res = await app.inject({ method: 'GET', url: `/v1/alerts/burden?from=${new Date(dayStart).toISOString()}&to=${new Date(dayStart + 86_400_000).toISOString()}`, headers })
  t.equal(res.statusCode, 200)
  const rule = res.json().rules.find((r: any) => r.ruleId === 'burden-rule')
  t.match(rule, { alerts: 3, patients: 2, acknowledged: 3, medianSecondsToAcknowledge: 120 })
  t.ok(Math.abs(rule.p90SecondsToAcknowledge - 504) < 0.001, 'p90 interpolates (120 + 0.8 * 480)')
  // Other test patients have no assignments, so the two patients here are the monitored ones.
  t.ok(Math.abs(rule.alertsPerPatientDay - 1.5) < 0.001, '3 alerts over 2 patient-days')
})

t.test('the OpenAPI document lists the alert routes; metrics count events without ids', async (t) => {
  const doc = (await app.inject({ method: 'GET', url: '/docs/json' })).json()
  for (const route of ['/v1/alerts', '/v1/alerts/stream', '/v1/alerts/burden', '/v1/alerts/{id}', '/v1/alerts/{id}/acknowledge']) {
    t.ok(doc.paths[route], route)
  }
  const metrics = (await app.inject({ method: 'GET', url: '/metrics' })).body
  t.match(metrics, /vigil_alert_events_total\{type="opened",severity="high"\} \d+/)
  t.notMatch(metrics, /hr-high/, 'no rule ids in labels')
})
