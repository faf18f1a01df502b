import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import t from 'tap'
import { change, startAlertingFixture } from '../helpers/alerting.ts'

// The embedded default (PGlite, one connection): the lifecycle's SQL (partial unique index
// with ON CONFLICT, FOR UPDATE SKIP LOCKED, percentile_cont, unnest) must work there too.
const dataDir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-alerts-pglite-'))
const f = await startAlertingFixture({ databaseUrl: null, dataDir, manualClock: true })
t.teardown(async () => {
  await f.close()
  await fs.rm(dataDir, { recursive: true, force: true })
})
const { app, alerting, adminHeaders: headers } = f

t.test('lifecycle, escalation, burden and presence on PGlite', async (t) => {
  f.policies.set('ward', { id: 'ward', tiers: [{ notify: ['nurse'], afterMs: 60_000 }, { notify: ['doctor'], afterMs: 60_000 }] })
  f.webhooks.push({ id: 'nowhere', url: 'http://127.0.0.1:9/', secretEnv: 'VIGIL_WEBHOOK_UNSET_FOR_TEST', minSeverity: 'low', allowListed: true })
  const patientId = await f.createPatient()
  await Promise.all([1, 2, 3].map((i) => alerting.sink.apply([change(patientId, { escalationPolicy: 'ward', at: f.clock!.now() - 1000 + i })])))
  const list = (await app.inject({ method: 'GET', url: `/v1/alerts?patientId=${patientId}`, headers })).json().items
  t.equal(list.length, 1, 'one open alert per patient and rule')
  f.clock!.advance(61_000)
  t.equal(await alerting.escalation.tick(), 1, 'escalated')
  t.equal((await app.inject({ method: 'POST', url: `/v1/alerts/${list[0].id}/acknowledge`, headers })).statusCode, 200)
  t.equal((await app.inject({ method: 'POST', url: `/v1/alerts/${list[0].id}/comments`, headers, payload: { text: 'note' } })).statusCode, 201)
  await alerting.sink.apply([change(patientId, { status: 'cleared', at: f.clock!.now() })])
  const events = (await app.inject({ method: 'GET', url: `/v1/alerts/${list[0].id}/events`, headers })).json().items
  t.same(events.map((e: any) => e.type), ['opened', 'escalated', 'acknowledged', 'commented', 'resolved'])
  const burden = await app.inject({ method: 'GET', url: '/v1/alerts/burden?from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z', headers })
  t.equal(burden.statusCode, 200)
  t.match(burden.json().rules, [{ ruleId: 'hr-high', alerts: 1, acknowledged: 1, medianSecondsToAcknowledge: Number }])
  // The webhook's secret is not set: attempts fail and are recorded (the outbox query runs on PGlite).
  await alerting.notifier.drain()
  const attempts = await f.db.pool.query("SELECT status, error FROM notification_deliveries WHERE channel = 'webhook'")
  t.ok(attempts.rows.length >= 1)
  t.match(attempts.rows[0], { status: 'failed', error: /VIGIL_WEBHOOK_UNSET_FOR_TEST is not set/ })
  t.same((await alerting.presence.presence()).length, 0, 'no devices yet')
  f.webhooks.length = 0
})
