import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import pino from 'pino'
import { Registry } from 'prom-client'
import t from 'tap'
import { startAlertEngine } from '../../../alerts/engine/alert-engine.ts'
import { startRulesFile } from '../../../alerts/engine/rules-file.ts'
import type { StoredReading } from '../../../readings/reading.ts'
import { startAlertingFixture } from '../../helpers/alerting.ts'
import { testKeyring } from '../../helpers/keys.ts'

// The engine and the lifecycle together (engine → sink → alerts table → API), on one clock:
// what a clinician sees when a condition keeps firing after a hand resolve, and while a NEWS2
// score keeps changing inside one band.

const log = pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' })
const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-realert-'))
const rulesPath = path.join(dir, 'alert-rules.yaml')
await fs.writeFile(rulesPath, `
rules:
  - { id: fever, kind: threshold, metric: body_temp, above: 38.5, nOfM: { n: 2, m: 3 }, hysteresis: 0.3, severity: medium }
  - { id: fever-slow, kind: threshold, metric: body_temp, above: 38.5, hysteresis: 0.3, severity: medium, reAlertAfter: 5m }
  - { id: news2, kind: news2, freshness: 1h, bands: { low_medium: medium, medium: high, high: critical } }
`)
const f = await startAlertingFixture({ manualClock: true })
const clock = f.clock!
const rulesFile = await startRulesFile({ pool: f.db.pool, path: rulesPath, log, now: clock.now })
const engine = await startAlertEngine({
  keyring: testKeyring(), pool: f.db.pool, rulesFile, workerThreads: 1, log, registry: new Registry(), now: clock.now,
  sink: f.alerting.sink, writeDerived: async () => {}
})
t.teardown(async () => {
  await engine.close()
  await rulesFile.close()
  await f.close()
  await fs.rm(dir, { recursive: true, force: true })
})
const headers = f.adminHeaders
const deviceId = '33333333-3333-4333-8333-333333333333'

/** Readings of `values` at the clock's time, the clock moving `stepMs` after each. */
async function feed (patientId: string, values: Record<string, number>, stepMs = 0): Promise<void> {
  const readings: StoredReading[] = Object.entries(values).map(([metric, value]) => ({ patientId, deviceId, metric, value, unit: '', ts: clock.now(), seq: null }))
  engine.onAccepted(readings)
  await engine.flush()
  clock.advance(stepMs)
}

async function alertsOf (patientId: string, ruleId: string): Promise<any[]> {
  const res = await f.app.inject({ method: 'GET', url: `/v1/alerts?patientId=${patientId}&ruleId=${ruleId}`, headers })
  t.equal(res.statusCode, 200)
  return res.json().items
}

async function eventsOf (alertId: string): Promise<any[]> {
  return (await f.app.inject({ method: 'GET', url: `/v1/alerts/${alertId}/events`, headers })).json().items
}

t.test('a fever resolved by hand while it persists comes back as a new alert after the re-alert interval', async (t) => {
  const patientId = await f.createPatient()
  // 39.2 °C every 15 s.
  for (let i = 0; i < 3; i++) await feed(patientId, { body_temp: 39.2 }, 15_000)
  const [first, ...none] = await alertsOf(patientId, 'fever')
  t.equal(none.length, 0)
  t.match(first, { status: 'open', ruleId: 'fever' })

  const resolved = await f.app.inject({ method: 'POST', url: `/v1/alerts/${first.id}/resolve`, headers, payload: { reason: 'seen, paracetamol given' } })
  t.equal(resolved.statusCode, 200)
  const resolvedAt = clock.now()

  // Still 39.2 °C. Within the re-alert interval (default 45 s) the resolve holds…
  for (let i = 0; i < 2; i++) await feed(patientId, { body_temp: 39.2 }, 15_000)
  t.equal((await alertsOf(patientId, 'fever')).filter((a) => a.status !== 'resolved').length, 0, 'no alert within the re-alert interval')
  // …at the next evaluation after it, the condition still holding re-opens it as a new alert.
  for (let i = 0; i < 2; i++) await feed(patientId, { body_temp: 39.2 }, 15_000)
  const open = (await alertsOf(patientId, 'fever')).filter((a) => a.status === 'open')
  t.equal(open.length, 1, 'a new alert is open within one minute of the resolve while 39.2 °C persists')
  t.not(open[0]?.id, first.id)
  t.ok(Date.parse(open[0]?.lastChangedAt) - resolvedAt <= 60_000, 'opened at most a minute (engine clock) after the resolve')
  const opened = (await eventsOf(open[0].id))[0]
  t.match(opened, { type: 'opened', body: { reopenedFrom: first.id } })
  t.match(open[0].summary, /body_temp 39\.2/)

  // Six more minutes at 39.2 °C: still that one alert, no flood of new ones.
  for (let i = 0; i < 24; i++) await feed(patientId, { body_temp: 39.2 }, 15_000)
  t.equal((await alertsOf(patientId, 'fever')).length, 2)
  // The temperature comes down: the re-opened alert auto-resolves as usual.
  for (let i = 0; i < 3; i++) await feed(patientId, { body_temp: 37.0 }, 15_000)
  t.same((await alertsOf(patientId, 'fever')).map((a) => a.status), ['resolved', 'resolved'])
})

t.test('the re-alert interval is the rule\'s (reAlertAfter); a condition that ended does not come back', async (t) => {
  const patientId = await f.createPatient()
  await feed(patientId, { body_temp: 39.0 }, 30_000)
  const [alert] = await alertsOf(patientId, 'fever-slow')
  t.equal(alert?.status, 'open')
  await f.app.inject({ method: 'POST', url: `/v1/alerts/${alert.id}/resolve`, headers, payload: {} })
  for (let i = 0; i < 9; i++) await feed(patientId, { body_temp: 39.0 }, 30_000)
  t.equal((await alertsOf(patientId, 'fever-slow')).length, 1, 'no re-open within 5 minutes')
  for (let i = 0; i < 3; i++) await feed(patientId, { body_temp: 39.0 }, 30_000)
  t.equal((await alertsOf(patientId, 'fever-slow')).filter((a) => a.status === 'open').length, 1, 're-opened after 5 minutes')

  // Resolved by hand when the fever has gone: nothing comes back.
  const other = await f.createPatient()
  await feed(other, { body_temp: 39.0 }, 30_000)
  const [a] = await alertsOf(other, 'fever-slow')
  await f.app.inject({ method: 'POST', url: `/v1/alerts/${a.id}/resolve`, headers, payload: {} })
  for (let i = 0; i < 30; i++) await feed(other, { body_temp: 36.8 }, 30_000)
  t.equal((await alertsOf(other, 'fever-slow')).length, 1)
})

t.test('an open NEWS2 alert follows the current score; each change is an event', async (t) => {
  const patientId = await f.createPatient()
  // NEWS2 7: resp 25 (3) + SpO2 95 (1) + pulse 115 (2) + temp 38.5 (1); high band.
  await feed(patientId, { resp_rate: 25, spo2: 95, o2_supplemental: 0, bp_systolic: 120, heart_rate: 115, consciousness: 0, body_temp: 38.5 }, 60_000)
  let [alert] = await alertsOf(patientId, 'news2')
  t.match(alert, { status: 'open', severity: 'critical', summary: /^NEWS2 7,/, details: { total: 7 } })
  // NEWS2 13: resp 25 (3) + SpO2 91 (3) + systolic 95 (2) + pulse 135 (3) + temp 39.2 (2); still the high band.
  await feed(patientId, { spo2: 91, bp_systolic: 95, heart_rate: 135, body_temp: 39.2 }, 60_000)
  ;[alert] = await alertsOf(patientId, 'news2')
  t.match(alert, { status: 'open', summary: /^NEWS2 13,/, details: { total: 13 } }, 'the summary is not stale')
  const news2 = await f.app.inject({ method: 'GET', url: `/v1/patients/${patientId}/news2`, headers })
  if (news2.statusCode === 200) t.match(news2.json(), { total: 13 })
  // The same score again changes nothing; a lower one in the same band is recorded too.
  await feed(patientId, { heart_rate: 135 }, 60_000)
  await feed(patientId, { heart_rate: 120 }, 60_000)
  ;[alert] = await alertsOf(patientId, 'news2')
  t.match(alert, { summary: /^NEWS2 12,/, details: { total: 12 } })
  const events = await eventsOf(alert.id)
  t.same(events.map((e: any) => e.type), ['opened', 'updated', 'updated'])
  t.match(events[1].body, { from: /^NEWS2 7,/, to: /^NEWS2 13,/ })
  t.match(events[2].body, { from: /^NEWS2 13,/, to: /^NEWS2 12,/ })
})
