import fs from 'node:fs'
import t from 'tap'
import type { ConditionChange, DevicePresence } from '../../../alerts/contract.ts'
import { applyChangedStates, createEvaluateTask, DERIVED_DEVICE_ID, evaluate, leastSquaresSlope } from '../../../alerts/engine/evaluate.ts'
import type { EvaluateTaskInput, EvaluateTaskOutput, EvaluatedTask } from '../../../alerts/engine/evaluate.ts'
import type { EvalReading, PatientRuleState, RuleOverride } from '../../../alerts/engine/evaluate.ts'
import { evaluateNoData } from '../../../alerts/engine/no-data.ts'
import { parseRuleSet } from '../../../alerts/engine/rule-set.ts'
import type { Rule } from '../../../alerts/engine/rule-set.ts'
import type { StoredReading } from '../../../readings/reading.ts'

const patientId = '11111111-1111-4111-8111-111111111111'
const deviceId = '22222222-2222-4222-8222-222222222222'
const T0 = Date.UTC(2026, 0, 1, 8, 0, 0)
const MIN = 60_000

function rulesOf (yaml: string): Rule[] {
  const parsed = parseRuleSet(yaml)
  if (!parsed.ok) throw new Error(parsed.problems.map((p) => p.message).join('; '))
  return parsed.ruleSet.rules
}

/**
 * A controllable clock over the pure evaluator: each step is one batch at its own time, and the
 * state goes through JSON between batches, as it does through the database and worker threads.
 * `changes` and what feed returns are the transitions; restatements of a condition already
 * firing (ongoing: reminders, NEWS2 updates) are kept apart in `ongoing`.
 */
function monitor (rules: Rule[], options: { overrides?: RuleOverride[], spo2Scale?: 1 | 2 } = {}) {
  let state: PatientRuleState = {}
  const changes: ConditionChange[] = []
  const ongoing: ConditionChange[] = []
  const derived: StoredReading[] = []
  return {
    changes,
    ongoing,
    derived,
    get state () { return state },
    feed (readings: Array<[offsetMs: number, metric: string, value: number]>, nowMs?: number): ConditionChange[] {
      const batch: EvalReading[] = readings.map(([offset, metric, value]) => ({ metric, value, ts: T0 + offset, deviceId, receivedAt: T0 + offset }))
      const out = evaluate({
        rules,
        patients: [{ patientId, state, readings: batch, overrides: options.overrides ?? [], spo2Scale: options.spo2Scale ?? 1 }],
        nowMs: nowMs ?? T0 + Math.max(0, ...readings.map(([o]) => o))
      })
      state = JSON.parse(JSON.stringify(out.states[0]!.state))
      const transitions = out.changes.filter((c) => c.ongoing === undefined)
      changes.push(...transitions)
      ongoing.push(...out.changes.filter((c) => c.ongoing !== undefined))
      derived.push(...out.derivedReadings)
      t.equal(out.triggeredAt.length, out.changes.length)
      return transitions
    },
    /** One reading per batch, every `stepMs`, from `fromMs`. */
    series (metric: string, values: number[], fromMs: number, stepMs: number): ConditionChange[] {
      const out: ConditionChange[] = []
      values.forEach((v, i) => out.push(...this.feed([[fromMs + i * stepMs, metric, v]])))
      return out
    }
  }
}

const tachycardia = rulesOf(`
escalationPolicies: [{ id: standard, tiers: [{ notify: [nurse], escalateAfter: 5m }] }]
rules:
  - { id: tachy, kind: threshold, metric: heart_rate, above: 120, for: 5m, hysteresis: 5, clearAfter: 2m, severity: high, escalation: standard }
`)

t.test('sustained tachycardia fires after its duration and not before', async (t) => {
  const m = monitor(tachycardia)
  // 130 /min every 30 s from T0: 4 min 30 s of breach is not enough.
  t.same(m.series('heart_rate', Array(10).fill(130), 0, 30_000), [], 'nothing before 5 min')
  const fired = m.feed([[5 * MIN, 'heart_rate', 131]])
  t.equal(fired.length, 1, 'fires at 5 min')
  t.match(fired[0], {
    patientId, ruleId: 'tachy', kind: 'threshold', status: 'firing', severity: 'high', escalationPolicy: 'standard', at: T0 + 5 * MIN,
    summary: 'heart_rate 131 /min above 120 for 5 min', details: { metric: 'heart_rate', value: 131, threshold: 120, breachSince: T0 }
  })
  t.same(m.series('heart_rate', [135, 140], 5 * MIN + 30_000, 30_000), [], 'fires once, not per reading')
})

t.test('a dip below the threshold restarts the sustained clock', async (t) => {
  const m = monitor(tachycardia)
  m.series('heart_rate', Array(9).fill(130), 0, 30_000) // 0 … 4 min
  m.feed([[4.5 * MIN, 'heart_rate', 118]])
  t.same(m.series('heart_rate', Array(10).fill(130), 5 * MIN, 30_000), [], '4.5 min of breach after the dip: nothing')
  t.equal(m.feed([[10 * MIN, 'heart_rate', 130]]).length, 1, 'fires 5 min after the breach resumed')
})

t.test('a value hovering at the threshold does not flap', async (t) => {
  const m = monitor(tachycardia)
  m.series('heart_rate', Array(11).fill(125), 0, 30_000)
  t.equal(m.changes.length, 1, 'firing')
  // 40 minutes hovering around 120: never back past 115 for 2 min.
  const hover = Array.from({ length: 80 }, (_, i) => [119, 121, 117, 120, 122, 116][i % 6]!)
  t.same(m.series('heart_rate', hover, 6 * MIN, 30_000), [], 'no clear, no re-fire while hovering')
  // Back at or below 115 (threshold − hysteresis), held for clearAfter (2 min).
  const cleared = m.series('heart_rate', [115, 110, 108, 112, 110], 50 * MIN, 30_000)
  t.equal(cleared.length, 1, 'cleared once')
  t.match(cleared[0], { status: 'cleared', at: T0 + 52 * MIN, details: { hysteresis: 5, firingSince: T0 + 5 * MIN } })

  // The same hover without hysteresis or durations flaps on every crossing: what the settings prevent.
  const naive = monitor(rulesOf('rules: [{ id: naive, kind: threshold, metric: heart_rate, above: 120, hysteresis: 0, severity: high }]'))
  naive.series('heart_rate', hover, 0, 30_000)
  t.ok(naive.changes.length > 20, `without hysteresis: ${naive.changes.length} changes`)
})

t.test('cleared needs the value to stay back for clearAfter', async (t) => {
  const m = monitor(tachycardia)
  m.series('heart_rate', Array(11).fill(130), 0, 30_000)
  t.same(m.series('heart_rate', [110, 110, 110, 125, 110, 110, 110], 6 * MIN, 30_000), [], 'a relapse restarts clearAfter')
  t.equal(m.feed([[10 * MIN, 'heart_rate', 110]])[0]?.status, 'cleared')
})

t.test('below, n of m, immediate', async (t) => {
  const fever = monitor(rulesOf('rules: [{ id: fever, kind: threshold, metric: body_temp, above: 38.5, nOfM: { n: 2, m: 3 }, hysteresis: 0.3, severity: medium }]'))
  t.same(fever.series('body_temp', [38.9, 37.0, 37.1, 38.7], 0, MIN), [], 'one in three is not two')
  t.equal(fever.feed([[4 * MIN, 'body_temp', 38.6]])[0]?.status, 'firing', 'two of the last three')
  t.equal(fever.feed([[5 * MIN, 'body_temp', 38.3]]).length, 0, '38.3 is within the hysteresis')
  t.equal(fever.feed([[6 * MIN, 'body_temp', 38.2]])[0]?.status, 'cleared')

  const brady = monitor(rulesOf('rules: [{ id: brady, kind: threshold, metric: heart_rate, below: 40, severity: high }]'))
  t.match(brady.feed([[0, 'heart_rate', 38]]), [{ status: 'firing', summary: 'heart_rate 38 /min below 40', details: { direction: 'below' } }])
})

t.test('readings out of order or repeated are skipped', async (t) => {
  const m = monitor(rulesOf('rules: [{ id: brady, kind: threshold, metric: heart_rate, below: 40, for: 1m, severity: high }]'))
  m.feed([[MIN, 'heart_rate', 35]])
  t.same(m.feed([[0, 'heart_rate', 35], [MIN, 'heart_rate', 35]]), [], 'older and equal timestamps do not extend the breach')
  t.equal(m.feed([[2 * MIN, 'heart_rate', 35]]).length, 1)
})

t.test('rate of change: SpO2 falling 4 points in 10 minutes', async (t) => {
  const rules = rulesOf('rules: [{ id: spo2-falling, kind: rate_of_change, metric: spo2, window: 10m, fallBy: 4, hysteresis: 1, severity: medium }]')
  const stable = monitor(rules)
  stable.series('spo2', [97, 96, 97, 98, 97, 96, 97, 97, 96, 97, 97], 0, MIN)
  t.same(stable.changes, [], 'noise around a level does not fire')

  const falling = monitor(rules)
  // 97 → 93 over 10 minutes, one reading a minute.
  const fired = falling.series('spo2', [97, 96.6, 96.2, 95.8, 95.4, 95, 94.6, 94.2, 93.8, 93.4, 93], 0, MIN)
  t.equal(fired.length, 1)
  // The slope is a rate: once half the window is covered (5 min here) it is trusted.
  t.match(fired[0], { status: 'firing', at: T0 + 5 * MIN, details: { changeOverWindow: -4, windowMs: 10 * MIN, method: 'least_squares' } })
  t.equal(fired[0]!.summary, 'spo2 falling 4 % over 10 min (now 95)')
  // Levels off: the slope over the window comes back above −3 (fallBy − hysteresis).
  const cleared = falling.series('spo2', Array(10).fill(93), 11 * MIN, MIN)
  t.equal(falling.changes.length, 2)
  t.same(cleared.map((c) => c.status), ['cleared'])

  t.equal(leastSquaresSlope([[0, 1], [1, 3], [2, 5]]), 2)
  t.equal(leastSquaresSlope([[0, 1]]), 0)
  t.ok(Math.abs(leastSquaresSlope([[0, 1, 3], [1, 3, 1], [2, 5, 1]]) - leastSquaresSlope([[0, 1], [0, 1], [0, 1], [1, 3], [2, 5]])) < 1e-12, 'a weight counts as repeated points')
})

t.test('rate of change at 1 Hz: the window state stays small, the slope stays right', async (t) => {
  const m = monitor(rulesOf('rules: [{ id: spo2-falling, kind: rate_of_change, metric: spo2, window: 10m, fallBy: 4, hysteresis: 1, severity: medium }]'))
  // 97 falling 0.3 per minute, one reading a second, in 1-minute batches, for 12 minutes.
  for (let minute = 0; minute < 12; minute++) {
    m.feed(Array.from({ length: 60 }, (_, s) => [minute * MIN + s * 1000, 'spo2', Number((97 - 0.3 * (minute + s / 60)).toFixed(2))] as [number, string, number]))
  }
  const points = (m.state['spo2-falling'] as { points: unknown[] }).points
  t.ok(points.length <= 61, `${points.length} points kept for 600 readings in the window`)
  t.same(m.changes, [], '3 points in 10 minutes is not 4')
  m.feed(Array.from({ length: 300 }, (_, s) => [12 * MIN + s * 1000, 'spo2', Number((93.4 - 1.2 * (s / 60)).toFixed(2))] as [number, string, number]))
  t.match(m.changes, [{ status: 'firing', summary: /^spo2 falling 4(\.\d)? % over 10 min/, details: { method: 'least_squares', readingCount: Number } }], 'a steeper fall fires')
})

t.test('per-patient overrides apply until they expire', async (t) => {
  const override: RuleOverride = {
    patientId, ruleId: 'tachy', parameters: { above: 140 }, reason: 'on a medication that raises the heart rate',
    setBy: 'user:doctor', setAt: T0 - MIN, expiresAt: T0 + 30 * MIN
  }
  const m = monitor(tachycardia, { overrides: [override] })
  m.series('heart_rate', Array(11).fill(130), 0, 30_000)
  t.same(m.changes, [], '130 is below the overridden 140')
  const fired = m.series('heart_rate', Array(11).fill(145), 6 * MIN, 30_000)
  t.match(fired, [{ status: 'firing', details: { threshold: 140, override: { setBy: 'user:doctor', expiresAt: T0 + 30 * MIN } } }])
  t.notMatch(JSON.stringify(fired), /medication/, 'the reason (possible PHI) is not in the change')

  const expired = monitor(tachycardia, { overrides: [{ ...override, expiresAt: T0 }] })
  expired.series('heart_rate', Array(11).fill(130), 0, 30_000)
  t.match(expired.changes, [{ status: 'firing', details: { threshold: 120 } }], 'an expired override is ignored')
})

const news2Rules = rulesOf(`
rules:
  - { id: news2, kind: news2, freshness: 1h, bands: { low_medium: medium, medium: high, high: critical }, clearAfter: 10m }
`)
const calm: Array<[number, string, number]> = [
  [0, 'resp_rate', 16], [0, 'spo2', 97], [0, 'o2_supplemental', 0], [0, 'bp_systolic', 120], [0, 'heart_rate', 70], [0, 'consciousness', 0], [0, 'body_temp', 37]
]

t.test('NEWS2: stored as a reading when complete, alerts by band, clears after clearAfter', async (t) => {
  const m = monitor(news2Rules)
  t.same(m.feed(calm), [])
  t.match(m.derived, [{ patientId, deviceId: DERIVED_DEVICE_ID, metric: 'news2_score', value: 0, unit: '{score}', ts: T0 }])

  const medium = m.feed([[MIN, 'heart_rate', 115], [MIN, 'resp_rate', 22], [MIN, 'body_temp', 38.5]])
  t.match(medium, [{ kind: 'news2', status: 'firing', severity: 'high', summary: 'NEWS2 5, medium risk', details: { total: 5, band: 'medium', complete: true, missing: [] } }])
  t.same(m.derived.map((d) => d.value), [0, 5], 'stored when the total changes')

  t.same(m.feed([[90_000, 'heart_rate', 135]]), [], '6 is still medium')
  const high = m.feed([[2 * MIN, 'resp_rate', 26]])
  t.match(high, [{ status: 'firing', severity: 'critical', details: { total: 7, band: 'high', redScores: ['resp_rate', 'heart_rate'] } }], 'a band change updates the condition')
  t.same(m.feed([[3 * MIN, 'heart_rate', 136]]), [], 'same band: no new change')

  t.same(m.feed([[4 * MIN, 'heart_rate', 70], [4 * MIN, 'resp_rate', 16], [4 * MIN, 'body_temp', 37]]), [], 'low again: waits clearAfter')
  t.match(m.feed([[15 * MIN, 'heart_rate', 72]]), [{ status: 'cleared', details: { total: 0, band: 'low' } }])
})

t.test('NEWS2: missing and stale parameters are named; a partial score is not stored', async (t) => {
  const m = monitor(news2Rules)
  const changes = m.feed([[0, 'heart_rate', 135], [0, 'spo2', 97], [0, 'resp_rate', 16]])
  t.match(changes, [{
    status: 'firing', severity: 'medium',
    summary: 'NEWS2 3, low-medium risk (partial: o2_supplemental, bp_systolic, consciousness, body_temp missing; at least this)',
    details: { complete: false, missing: ['o2_supplemental', 'bp_systolic', 'consciousness', 'body_temp'] }
  }])
  t.same(m.derived, [], 'no news2_score reading from a partial score')

  const strict = monitor(rulesOf('rules: [{ id: news2, kind: news2, freshness: 1h, minParameters: 3, bands: { low_medium: medium } }]'))
  t.same(strict.feed([[0, 'heart_rate', 135], [0, 'spo2', 97]]), [], 'two parameters are fewer than minParameters 3')
  t.match(strict.feed([[MIN, 'resp_rate', 16]]), [{ status: 'firing', details: { complete: false } }], 'three are enough')

  const stale = monitor(news2Rules)
  stale.feed(calm)
  stale.feed([[2 * 60 * MIN, 'heart_rate', 70]])
  t.equal(stale.derived.length, 1, 'two hours later the other parameters are stale: not stored')

  const hypercapnic = monitor(news2Rules, { spo2Scale: 2 })
  hypercapnic.feed(calm.map(([o, metric, v]) => [o, metric, metric === 'spo2' ? 89 : v]))
  t.match(hypercapnic.derived, [{ value: 0 }], 'SpO2 89 scores 0 on scale 2')
})

t.test('no data: cause from presence, cleared when readings return', async (t) => {
  const rules = rulesOf(`
rules:
  - { id: silent, kind: no_data, after: 15m, lowBatteryPercent: 20, severity: medium }
  - { id: no-spo2, kind: no_data, metric: spo2, after: 30m, severity: low }
`)
  const now = T0 + 60 * MIN
  const device = (over: Partial<DevicePresence>): DevicePresence => ({
    deviceId, patientId, connected: true, changedAt: T0, lastReadingAt: now - 20 * MIN, batteryPercent: 80, lastStatusAt: now - MIN, ...over
  })
  const cases: Array<[string, Partial<DevicePresence>, string, RegExp]> = [
    ['disconnected', { connected: false, changedAt: now - 18 * MIN }, 'disconnected', /disconnected since 2026-01-01T08:42:00.000Z/],
    ['connected but silent', {}, 'connected_silent', /connected but sending nothing/],
    ['low battery', { batteryPercent: 12 }, 'low_battery', /battery low \(12%\)/],
    ['never reported', { lastReadingAt: null, changedAt: now - 16 * MIN }, 'never_reported', /never sent a reading/]
  ]
  for (const [name, over, cause, text] of cases) {
    const out = evaluateNoData({ rules, presence: [device(over)], states: new Map(), nowMs: now })
    t.equal(out.changes.length, 1, name)
    t.match(out.changes[0], { ruleId: 'silent', status: 'firing', kind: 'no_data', details: { cause } }, name)
    t.match(out.changes[0]!.summary, text, name)
  }
  t.same(evaluateNoData({ rules, presence: [device({ lastReadingAt: now - 5 * MIN })], states: new Map(), nowMs: now }).changes, [], 'recent data: nothing')

  // The metric rule uses the engine's per-patient state (last spo2 reading) and fires once.
  const m = monitor(rules)
  m.feed([[0, 'spo2', 97]])
  const first = evaluateNoData({ rules, presence: [device({ lastReadingAt: now - MIN })], states: new Map([[patientId, m.state]]), nowMs: now })
  t.match(first.changes, [{ ruleId: 'no-spo2', status: 'firing', details: { metric: 'spo2', cause: 'connected_silent', lastReadingAt: T0 } }])
  const merged = { ...m.state, ...first.states.get(patientId) }
  const later = evaluateNoData({ rules, presence: [device({ lastReadingAt: now - MIN })], states: new Map([[patientId, merged]]), nowMs: now + MIN }).changes
  t.same(later.filter((c) => c.ongoing === undefined), [], 'fires once')
  t.match(later, [{ ruleId: 'no-spo2', status: 'firing', ongoing: 'reminder', reAlertMs: 45_000 }], 'a minute on, still silent: restated')
  // A reading ends it at once, in the batch evaluation.
  const back = evaluate({ rules, patients: [{ patientId, state: merged, readings: [{ metric: 'spo2', value: 96, ts: now + 2 * MIN, deviceId, receivedAt: now + 2 * MIN }], overrides: [], spo2Scale: 1 }], nowMs: now + 2 * MIN })
  t.match(back.changes, [{ ruleId: 'no-spo2', status: 'cleared' }])
})

t.test('a rule that changes kind or metric under the same id ends its open condition', async (t) => {
  const m = monitor(rulesOf('rules: [{ id: hr, kind: threshold, metric: heart_rate, above: 150, severity: high }]'))
  m.feed([[0, 'heart_rate', 160]])
  const out = evaluate({
    rules: rulesOf('rules: [{ id: hr, kind: rate_of_change, metric: heart_rate, window: 10m, riseBy: 30, severity: high }]'),
    patients: [{ patientId, state: m.state, readings: [], overrides: [], spo2Scale: 1 }],
    nowMs: T0 + MIN
  })
  t.match(out.changes, [{ ruleId: 'hr', status: 'cleared', kind: 'rate_of_change', details: { reason: 'rule_changed', previousKind: 'threshold' } }])
  t.match(out.states[0]!.state.hr, { kind: 'rate_of_change', firing: false })

  const metricChanged = evaluate({
    rules: rulesOf('rules: [{ id: hr, kind: threshold, metric: resp_rate, above: 30, severity: high }]'),
    patients: [{ patientId, state: m.state, readings: [], overrides: [], spo2Scale: 1 }],
    nowMs: T0 + MIN
  })
  t.match(metricChanged.changes, [{ ruleId: 'hr', status: 'cleared', details: { reason: 'rule_changed', previousMetric: 'heart_rate' } }])
  t.match(metricChanged.states[0]!.state.hr, { metric: 'resp_rate', firing: false, lastTs: null })
})

t.test('rules file validation: defaults and cross-field checks', async (t) => {
  const [tachy] = rulesOf('rules: [{ id: a, kind: threshold, metric: heart_rate, above: 120, severity: high }]') as [any]
  t.match(tachy, { hysteresis: 5.6, forMs: 0, clearAfterMs: 0, nOfM: null, below: null, escalationPolicy: null, reAlertMs: 45_000 })
  const parsed = parseRuleSet(`
escalationPolicies: [{ id: p, tiers: [{ notify: [nurse], escalateAfter: 5m }, { notify: [doctor, night-pager], escalateAfter: 5m }] }]
webhooks:
  - { id: night-pager, url: "https://pager.example.org/a", secretEnv: VIGIL_WEBHOOK_A }
  - { id: all-high, url: "https://pager.example.org/b", secretEnv: VIGIL_WEBHOOK_B, minSeverity: high }
  - { id: tier-and-high, url: "https://pager.example.org/c", secretEnv: VIGIL_WEBHOOK_C, minSeverity: high }
rules: [{ id: a, kind: threshold, metric: heart_rate, above: 120, severity: high, reAlertAfter: 2m, escalation: p }]
`.replace('[doctor, night-pager]', '[doctor, night-pager, tier-and-high]'))
  t.ok(parsed.ok)
  if (parsed.ok) {
    t.same(parsed.ruleSet.webhooks.map((w) => [w.id, w.tierOnly === true]), [['night-pager', true], ['all-high', false], ['tier-and-high', false]],
      'named in a tier without minSeverity: tier only')
    t.equal(parsed.ruleSet.rules[0]!.reAlertMs, 120_000)
  }
  const [rate] = rulesOf('rules: [{ id: b, kind: rate_of_change, metric: heart_rate, window: 5m, riseBy: 8, severity: low }]') as [any]
  t.match(rate, { hysteresis: 2, minReadings: 3, windowMs: 300_000 }, 'a default hysteresis never exceeds a quarter of the bound')
  const [band] = rulesOf('rules: [{ id: c, kind: threshold, metric: spo2, above: 99, below: 97, severity: low }]') as [any]
  t.equal(band.hysteresis, 0.5)

  const problems = (yaml: string): string[] => {
    const parsed = parseRuleSet(yaml)
    return parsed.ok ? [] : parsed.problems.map((p) => p.message)
  }
  const cases: Array<[string, string]> = [
    ['rules: [{ id: a, kind: threshold, metric: heart_rate, severity: high }]', 'rules[0] (id "a"): above or below must be set'],
    ['rules: [{ id: a, kind: threshold, metric: heart_rate, above: 1, below: 2, severity: high }]', 'rules[0] (id "a"): below must be less than above'],
    ['rules: [{ id: a, kind: threshold, metric: heart_rate, above: 1, for: 1m, nOfM: { n: 1, m: 2 }, severity: high }]', 'rules[0] (id "a"): nOfM cannot be combined with for'],
    ['rules: [{ id: a, kind: threshold, metric: heart_rate, above: 1, nOfM: { n: 3, m: 2 }, severity: high }]', 'rules[0] (id "a"): nOfM.n must not exceed nOfM.m'],
    ['rules: [{ id: a, kind: threshold, metric: heart_rate, above: 1, severity: high, escalation: nobody }]', 'rules[0] (id "a"): escalation names no escalation policy ("nobody")'],
    ['rules: [{ id: a, kind: threshold, metric: heart_rate, above: 1, severity: high }, { id: a, kind: threshold, metric: spo2, below: 90, severity: high }]', 'rules[1] (id "a"): id is used twice'],
    ['rules: [{ id: a, kind: rate_of_change, metric: spo2, window: 10m, severity: high }]', 'rules[0] (id "a"): fallBy or riseBy must be set'],
    ['rules: [{ id: a, kind: rate_of_change, metric: spo2, window: 10m, fallBy: 2, hysteresis: 2, severity: high }]', 'rules[0] (id "a"): hysteresis must be less than fallBy and riseBy'],
    ['rules: [{ id: a, kind: no_data, after: 10 minutes, severity: high }]', 'rules[0] (id "a"): after must be a duration such as 30s, 5m, 2h, 1d'],
    ['rules: [{ id: a, kind: news2, freshness: 1h, bands: {} }]', 'rules[0] (id "a"): bands must give a severity for at least one band'],
    ['rules: [{ id: a, kind: news2, freshness: 1h, bands: { amber: high } }]', 'rules[0] (id "a"): bands.amber is not a known field'],
    ['rules: [{ id: Bad Id, kind: threshold, metric: heart_rate, above: 1, severity: high }]', 'rules[0] (id "Bad Id"): id must be 1–64 lower-case letters, digits, _ or -'],
    ['rules: {}', 'rules must be an array'],
    ['{}', 'rules is required'],
    ['rules: []\nextra: 1', 'extra is not a known field'],
    ['rules: []\nescalationPolicies: [{ id: p, tiers: [] }]', 'escalationPolicies[0] (id "p"): tiers must NOT have fewer than 1 items'],
    ['rules: []\nwebhooks: [{ id: w, url: "ftp://x", secretEnv: S }]', 'webhooks[0] (id "w"): url must be an http:// or https:// URL'],
    ['rules: []\nwebhooks: [{ id: w, url: "https://x", secretEnv: "lower" }]', 'webhooks[0] (id "w"): secretEnv must be an environment variable name'],
    ['rules: [{ id: a, kind: threshold, metric: heart_rate, above: 1, severity: high, reAlertAfter: 1s }]', 'rules[0] (id "a"): reAlertAfter must be at least 3s'],
    ['rules: [{ id: a, kind: threshold, metric: heart_rate, above: 1, severity: high, reAlertAfter: soon }]', 'rules[0] (id "a"): reAlertAfter must be a duration such as 30s, 5m, 2h, 1d'],
    ['rules: [a: b', 'YAML']
  ]
  for (const [yaml, expected] of cases) {
    const found = problems(yaml)
    t.ok(found.some((m) => m.startsWith(expected)), `${expected} (got ${JSON.stringify(found)})`)
    t.ok(found.length <= 2, `no cascade of follow-on errors for ${yaml}`)
  }
  const webhooks = parseRuleSet('rules: []\nwebhooks: [{ id: pager, url: "https://pager.example.org/x", secretEnv: VIGIL_WEBHOOK_PAGER_SECRET }]')
  t.match(webhooks, { ok: true, ruleSet: { webhooks: [{ id: 'pager', url: 'https://pager.example.org/x', secretEnv: 'VIGIL_WEBHOOK_PAGER_SECRET', minSeverity: 'low', allowListed: false }] } })
})

t.test('the shipped rules file is valid and holds the documented defaults', async (t) => {
  const { readFileSync } = await import('node:fs')
  const { defaultAlertRulesPath } = await import('../../../config/config.ts')
  const parsed = parseRuleSet(readFileSync(defaultAlertRulesPath, 'utf8'))
  if (!parsed.ok) return t.fail(parsed.problems.map((p) => p.message).join('; '))
  t.match(parsed.ruleSet.rules, [
    { id: 'tachycardia', kind: 'threshold', metric: 'heart_rate', above: 120, forMs: 5 * MIN },
    { id: 'bradycardia', kind: 'threshold', metric: 'heart_rate', below: 40 },
    { id: 'hypoxaemia', kind: 'threshold', metric: 'spo2', below: 92, forMs: 2 * MIN },
    { id: 'spo2-falling', kind: 'rate_of_change', metric: 'spo2', fallBy: 4, windowMs: 10 * MIN },
    { id: 'fever', kind: 'threshold', metric: 'body_temp', above: 38.5 },
    { id: 'device-silent', kind: 'no_data', metric: null, afterMs: 15 * MIN },
    { id: 'news2', kind: 'news2', minParameters: 3 }
  ])
  t.match(parsed.ruleSet.escalationPolicies[0], {
    id: 'standard', tiers: [{ notify: ['nurse'], afterMs: 5 * MIN }, { notify: ['doctor'], afterMs: 10 * MIN }, { notify: ['rapid_response'] }]
  })
  t.same(parsed.ruleSet.webhooks, [])
})

t.test('a condition still firing is restated every third of reAlertAfter, and only while it holds', async (t) => {
  const m = monitor(rulesOf('rules: [{ id: fever, kind: threshold, metric: body_temp, above: 38.5, hysteresis: 0.3, severity: medium, reAlertAfter: 1m }]'))
  t.equal(m.series('body_temp', [39.2], 0, 5000).length, 1, 'fires')
  // 39.2 every 5 s for a minute: restated every 20 s.
  m.series('body_temp', Array(12).fill(39.2), 5000, 5000)
  t.same(m.ongoing.map((c) => [c.ongoing, c.at - T0, c.reAlertMs]), [['reminder', 20_000, 60_000], ['reminder', 40_000, 60_000], ['reminder', 60_000, 60_000]])
  t.match(m.ongoing[0], { status: 'firing', summary: 'body_temp 39.2 Cel above 38.5', details: { firingSince: T0 } })
  // Inside the hysteresis band (38.4: not above 38.5, not back to 38.2): firing, but not restated.
  m.series('body_temp', Array(12).fill(38.4), 65_000, 5000)
  t.equal(m.ongoing.length, 3)
  t.equal(m.changes.length, 1, 'no transition either')

  // NEWS2: a new total within the band is an update; the same total is restated like any condition.
  const news2 = monitor(rulesOf('rules: [{ id: news2, kind: news2, freshness: 1h, bands: { high: critical }, reAlertAfter: 3m }]'))
  const vitals = (offset: number, hr: number): Array<[number, string, number]> =>
    [[offset, 'resp_rate', 25], [offset, 'spo2', 95], [offset, 'o2_supplemental', 0], [offset, 'bp_systolic', 120], [offset, 'heart_rate', hr], [offset, 'consciousness', 0], [offset, 'body_temp', 38.5]]
  t.match(news2.feed(vitals(0, 115)), [{ status: 'firing', summary: /^NEWS2 7,/ }])
  news2.feed([[MIN, 'heart_rate', 135]])
  news2.feed([[2 * MIN, 'heart_rate', 135]])
  news2.feed([[3 * MIN, 'heart_rate', 136]])
  news2.feed([[4 * MIN, 'heart_rate', 136]])
  t.same(news2.ongoing.map((c) => [c.ongoing, c.at - T0, c.summary.split(',')[0]]), [
    ['update', MIN, 'NEWS2 8'], ['reminder', 2 * MIN, 'NEWS2 8'], ['reminder', 3 * MIN, 'NEWS2 8'], ['reminder', 4 * MIN, 'NEWS2 8']
  ], 'pulse 136 scores as 135 did: the same total, restated every minute')
  t.equal(news2.changes.length, 1)
})

t.test('the worker task answers with the changed states only and keeps the new ones: the engine\'s merged state is evaluate\'s, across threads and failed stores', async (t) => {
  const parsed = parseRuleSet(fs.readFileSync(new URL('../../../config/alert-rules.yaml', import.meta.url), 'utf8'))
  if (!parsed.ok) throw new Error('the shipped rules do not parse')
  const rules = parsed.ruleSet.rules
  const metrics = ['heart_rate', 'spo2', 'resp_rate', 'temperature', 'systolic_bp', 'consciousness']
  const ids = ['11111111-1111-4111-8111-000000000001', '11111111-1111-4111-8111-000000000002', '11111111-1111-4111-8111-000000000003']
  // Each patient's state as the engine keeps it (merged) and as evaluate returns it (whole); one starts with a retired rule's state.
  const merged = new Map<string, PatientRuleState>(ids.map((id) => [id, {}]))
  const whole = new Map<string, PatientRuleState>(ids.map((id) => [id, {}]))
  merged.get(ids[0]!)!['retired-rule'] = { kind: 'threshold', metric: 'heart_rate', firing: false, breachSince: null, recent: [] } as never
  whole.get(ids[0]!)!['retired-rule'] = merged.get(ids[0]!)!['retired-rule']!
  // Two threads, each with its task (and its kept states; the second keeps at most two patients),
  // taken in a fixed pseudo-random order, as Piscina may; the engine's stamps and its retry.
  const threads = [createEvaluateTask(), createEvaluateTask(2)]
  const stamps = new Map<string, number>()
  let lastStamp = 0
  let random = 7
  const pick = (): number => { random = (random * 1103515245 + 12345) % 2147483648; return random }
  let statesLeftOut = 0
  let missed = 0
  const run = (input: EvaluateTaskInput): EvaluatedTask => {
    let answer: EvaluateTaskOutput = threads[pick() % 2]!(structuredClone(input))
    if (answer.missing !== undefined) {
      missed++
      const missing = new Set(answer.missing)
      answer = threads[pick() % 2]!(structuredClone({ ...input, patients: input.patients.map((p) => ({ ...p, state: merged.get(p.patientId)! })) }))
      t.equal(answer.missing, undefined, 'every state sent: nothing missing')
      t.ok(missing.size > 0)
    }
    return answer as EvaluatedTask
  }
  let unchangedRules = 0
  for (let step = 0; step < 300; step++) {
    const at = T0 + step * 20_000
    const patients = ids.filter((_, i) => (step + i) % 2 === 0).map((id, i) => ({
      patientId: id,
      readings: [{ metric: metrics[(step + i) % metrics.length]!, value: 60 + ((step * 37) % 90), ts: at, deviceId, receivedAt: at }],
      overrides: [],
      spo2Scale: 1 as const
    }))
    const full = evaluate({ rules, patients: patients.map((p) => ({ ...p, state: structuredClone(whole.get(p.patientId)!) })), nowMs: at })
    const input: EvaluateTaskInput = {
      rules,
      nowMs: at,
      patients: patients.map((p) => {
        const stamp = stamps.get(p.patientId) ?? null
        if (stamp !== null) statesLeftOut++
        return { ...p, ...(stamp === null ? { state: merged.get(p.patientId)! } : {}), stamp, next: ++lastStamp }
      })
    }
    const task = run(input)
    t.same(task.changes, full.changes)
    // Every seventh batch fails to be stored: the engine keeps the old state and stamp and evaluates it again.
    if (step % 7 === 3) {
      const retry = run({ ...input, patients: input.patients.map((p) => ({ ...p, next: ++lastStamp })) })
      t.same(retry.changes, full.changes, 'the retry from the old state gives the same changes')
      continue
    }
    full.states.forEach(({ patientId, state, changed }, i) => {
      const answer = task.states[i]!
      unchangedRules += Object.keys(state).length - Object.keys(answer.changed).length
      const before = applyChangedStates(merged.get(patientId)!, answer.changed, new Set(rules.map((r) => r.id)))
      stamps.set(patientId, input.patients[i]!.next)
      whole.set(patientId, state)
      if (JSON.stringify(before) !== JSON.stringify(Object.fromEntries(Object.keys(before).map((k) => [k, state[k]]))) ||
        Object.keys(before).length !== Object.keys(state).length || JSON.stringify(Object.keys(answer.changed).sort()) !== JSON.stringify([...changed].sort())) {
        t.fail(`step ${step}, patient ${patientId}: the merged state differs from evaluate's`)
      }
    })
  }
  t.notOk('retired-rule' in merged.get(ids[0]!)!, 'a rule no longer in the rules is dropped from the kept state')
  t.ok(unchangedRules > 1000, `${unchangedRules} unchanged rule states not sent back`)
  t.ok(statesLeftOut > 300, `${statesLeftOut} states not sent to a thread that kept them`)
  t.ok(missed > 50, `${missed} tasks sent again: a thread without the state says so instead of evaluating from nothing`)
})
