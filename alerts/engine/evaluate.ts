/**
 * Rule evaluation: pure functions of (state, rules, readings, overrides, now). The Piscina task
 * (alerts/engine/evaluate-task.ts) is `evaluateTask`; the engine (alert-engine.ts) owns I/O and state storage.
 */
import type { StoredReading } from '../../readings/reading.ts'
import { lookupMetric } from '../../readings/vitals-catalogue.ts'
import type { ConditionChange } from '../contract.ts'
import { news2Parameters, scoreNews2 } from './news2.ts'
import type { News2Band, News2Parameter, Spo2Scale } from './news2.ts'
import type { News2Rule, RateOfChangeRule, Rule, ThresholdRule } from './rule-set.ts'
import { copyJson, sameJson } from './json-state.ts'

/** Derived readings (NEWS2) are stored under this device id: Vigil itself, not a device. */
export const DERIVED_DEVICE_ID = '00000000-0000-0000-0000-000000000000'

/** A NEWS2 score is stored when its total changes, or at least this often while it holds. */
export const NEWS2_STORE_INTERVAL_MS = 60_000

// A rate-of-change window keeps at most this many points: readings within one slot of
// window / WINDOW_SLOTS are merged into their mean (time, value, count). The state is written
// after every batch, so its size is the write cost: 60 slots instead of 600 raw points for a
// 1 Hz device over 10 minutes.
export const WINDOW_SLOTS = 60

export interface EvalReading {
  metric: string
  value: number
  /** Device clock. */
  ts: number
  deviceId: string
  /** When Vigil accepted it (for the reading→condition latency metric). */
  receivedAt: number
}

/** Fields of a rule a doctor may override for one patient (thresholds, not kinds or windows). */
export interface OverrideParameters {
  above?: number | null
  below?: number | null
  fallBy?: number | null
  riseBy?: number | null
}

export interface RuleOverride {
  patientId: string
  ruleId: string
  parameters: OverrideParameters
  /** Free text; may name a medication (PHI): never copied into changes or logs. */
  reason: string
  setBy: string
  setAt: number
  expiresAt: number
}

interface ConditionState {
  kind: Rule['kind']
  /** The metric the state describes: a rule edited to watch another metric starts afresh. */
  metric: string | null
  firing: boolean
  firingSince: number | null
  /** When the value first came back past the hysteresis bound (clearAfter counts from here). */
  clearSince: number | null
  /** Newest reading time seen; older or equal ones (redeliveries, stragglers) are skipped. */
  lastTs: number | null
  /**
   * When the firing condition was last reported to the lifecycle (a transition or a restatement).
   * Optional: states stored before re-alerting existed lack it.
   */
  notedAt?: number | null
}
export interface ThresholdState extends ConditionState { kind: 'threshold', breachSince: number | null, recent: number[] }
/** points: [mean ts, mean value, readings merged, slot index] */
export interface RateState extends ConditionState { kind: 'rate_of_change', points: Array<[number, number, number, number]> }
export interface News2State extends ConditionState {
  kind: 'news2'
  latest: Partial<Record<News2Parameter, [ts: number, value: number]>>
  band: News2Band | null
  /** The total last reported while firing (the open alert's summary follows it). */
  total?: number | null
  lastStored: [ts: number, total: number] | null
}
export interface NoDataState extends ConditionState { kind: 'no_data', lastReadingAt: number | null }
export type RuleState = ThresholdState | RateState | News2State | NoDataState

/** One patient's state: rule id → state. JSON-serialisable (stored as jsonb, sent to workers). */
export type PatientRuleState = Record<string, RuleState>

export interface PatientBatch {
  patientId: string
  state: PatientRuleState
  readings: EvalReading[]
  overrides: RuleOverride[]
  spo2Scale: Spo2Scale
}

export interface EvaluateInput {
  rules: Rule[]
  patients: PatientBatch[]
  nowMs: number
}

export interface EvaluateOutput {
  /** Each patient's new state, and the ids of the rules whose state differs from the input's (what needs storing). */
  states: Array<{ patientId: string, state: PatientRuleState, changed: string[] }>
  changes: ConditionChange[]
  /** receivedAt of the reading behind each change (same index). */
  triggeredAt: number[]
  derivedReadings: StoredReading[]
}

/** Evaluates each patient's readings against the rules. Pure: same input, same output. */
export function evaluate (input: EvaluateInput): EvaluateOutput {
  const out: EvaluateOutput = { states: [], changes: [], triggeredAt: [], derivedReadings: [] }
  for (const batch of input.patients) {
    const result = evaluatePatient(input.rules, batch, input.nowMs)
    // Compared here, in the worker thread: on the event loop this diff cost ~8 % of Vigil's CPU at 8,000 readings/s.
    const changed = Object.keys(result.state).filter((id) => !sameJson(result.state[id], batch.state[id]))
    out.states.push({ patientId: batch.patientId, state: result.state, changed })
    out.changes.push(...result.changes)
    out.triggeredAt.push(...result.triggeredAt)
    out.derivedReadings.push(...result.derivedReadings)
  }
  return out
}

/**
 * What the worker hands back: per patient, only the states of the rules that changed (the
 * engine holds the rest; applyChangedStates brings them together). Sending whole states back
 * cost as much again as sending them in.
 */
export interface EvaluatedTask extends Omit<EvaluateOutput, 'states'> {
  missing?: undefined
  states: Array<{ patientId: string, changed: PatientRuleState }>
}

/**
 * Or, when the thread did not hold a state the task left out (another thread evaluated that
 * patient last, or this thread was restarted): those patients, and nothing was evaluated. The
 * engine sends the task again with their states.
 */
export interface MissingStates { missing: string[] }

export type EvaluateTaskOutput = EvaluatedTask | MissingStates

/** A patient of a task: its state may be left out when the thread keeps it (createEvaluateTask). */
export interface TaskPatient extends Omit<PatientBatch, 'state'> {
  /** The state to evaluate from; absent: the one this thread kept under `stamp`. */
  state?: PatientRuleState
  /** The stamp of the state the engine holds for this patient (null: none a thread may have). */
  stamp: number | null
  /** The stamp this thread keeps the new state under: unique, never reused by the engine. */
  next: number
}

export interface EvaluateTaskInput {
  rules: Rule[]
  patients: TaskPatient[]
  nowMs: number
}

/** Patients whose state one thread keeps between tasks, at most (~1 KB each with the shipped rules). */
export const KEPT_STATES_PER_THREAD = 20_000

/**
 * The Piscina task (alerts/engine/evaluate-task.ts): evaluate, answering with changed states
 * only, and keeping each patient's new state in the thread under the task's `next` stamp, so the
 * engine's next task for that patient need not send it again when it comes to this thread: a
 * patient's state is ~1 KB with the shipped rules, and copying it into the thread with every
 * batch was the larger part of a task's structured clone (57 KB for 50 patients). The engine
 * moves a patient's stamp to `next` only once the new state is stored, so after a failed batch
 * the thread's copy no longer matches and the engine's (older) state is sent, as before. Pure
 * but for that cache: the same input gives the same output, or `missing`.
 */
export function createEvaluateTask (limit = KEPT_STATES_PER_THREAD): (input: EvaluateTaskInput) => EvaluateTaskOutput {
  const kept = new Map<string, { stamp: number, state: PatientRuleState }>()
  return (input) => {
    const missing: string[] = []
    const patients: PatientBatch[] = input.patients.map((p) => {
      let state = p.state
      if (state === undefined) {
        const held = kept.get(p.patientId)
        if (held !== undefined && held.stamp === p.stamp) state = held.state
        else missing.push(p.patientId)
      }
      return { patientId: p.patientId, state: state ?? {}, readings: p.readings, overrides: p.overrides, spo2Scale: p.spo2Scale }
    })
    if (missing.length > 0) return { missing }
    const out = evaluate({ rules: input.rules, patients, nowMs: input.nowMs })
    out.states.forEach(({ patientId, state }, i) => {
      // Re-inserted: the Map's order is least recently evaluated first, what the limit drops.
      kept.delete(patientId)
      kept.set(patientId, { stamp: input.patients[i]!.next, state })
    })
    for (const patientId of kept.keys()) {
      if (kept.size <= limit) break
      kept.delete(patientId)
    }
    return {
      ...out,
      states: out.states.map(({ patientId, state, changed }) => ({ patientId, changed: Object.fromEntries(changed.map((id) => [id, state[id]!])) }))
    }
  }
}

/**
 * `kept`, the state a patient's batch was evaluated from, made into evaluate's new state from
 * the task's answer: the changed rules' states in, and the states of rules not among `ruleIds`
 * (the batch's rules) out, as evaluate keeps only the rules it was given. Changes `kept`.
 */
export function applyChangedStates (kept: PatientRuleState, changed: PatientRuleState, ruleIds: ReadonlySet<string>): PatientRuleState {
  Object.assign(kept, changed)
  for (const id of Object.keys(kept)) if (!ruleIds.has(id)) delete kept[id]
  return kept
}

/** The rule with this patient's unexpired override applied (overrides expiring at or before now are ignored). */
export function effectiveRule (rule: Rule, overrides: readonly RuleOverride[], nowMs: number): { rule: Rule, override: RuleOverride | null } {
  const override = overrides.find((o) => o.ruleId === rule.id && o.expiresAt > nowMs) ?? null
  if (override === null) return { rule, override }
  const p = override.parameters
  if (rule.kind === 'threshold') {
    return { rule: { ...rule, above: p.above === undefined ? rule.above : p.above, below: p.below === undefined ? rule.below : p.below }, override }
  }
  if (rule.kind === 'rate_of_change') {
    return { rule: { ...rule, fallBy: p.fallBy === undefined ? rule.fallBy : p.fallBy, riseBy: p.riseBy === undefined ? rule.riseBy : p.riseBy }, override }
  }
  return { rule, override: null }
}

interface Emitter {
  emit (status: 'firing' | 'cleared', at: number, receivedAt: number, summary: string, details: Record<string, unknown>, severity?: ConditionChange['severity'], ongoing?: ConditionChange['ongoing']): void
}

/**
 * Whether a condition still firing at `at` is due to be restated: every third of the rule's
 * re-alert interval, so that the lifecycle, which alone knows whether someone resolved the alert
 * by hand, can re-open it within the interval plus a third (alerts/lifecycle/alert-store.ts).
 */
export function reminderDue (st: ConditionState, at: number, reAlertMs: number): boolean {
  return at - (st.notedAt ?? st.firingSince ?? at) >= reAlertMs / 3
}

export function evaluatePatient (rules: Rule[], batch: PatientBatch, nowMs: number) {
  const readings = [...batch.readings].sort((a, b) => a.ts - b.ts)
  const state: PatientRuleState = {}
  const changes: ConditionChange[] = []
  const triggeredAt: number[] = []
  const derivedReadings: StoredReading[] = []
  for (const base of rules) {
    const { rule, override } = effectiveRule(base, batch.overrides, nowMs)
    const previous = batch.state[rule.id]
    // A rule whose kind or metric changed under the same id starts afresh.
    const same = previous !== undefined && previous.kind === rule.kind && previous.metric === metricOf(rule)
    const st = copyJson(same ? previous : initialState(rule))
    const emitter: Emitter = {
      emit (status, at, receivedAt, summary, details, severity, ongoing) {
        st.notedAt = status === 'firing' ? at : null
        changes.push({
          patientId: batch.patientId,
          ruleId: rule.id,
          kind: rule.kind,
          status,
          severity: severity ?? rule.severity,
          escalationPolicy: rule.escalationPolicy,
          at,
          summary,
          // The override's reason is left out: it may name a medication.
          details: override === null ? details : { ...details, override: { setBy: override.setBy, expiresAt: override.expiresAt } },
          ...(ongoing === undefined ? {} : { ongoing, reAlertMs: rule.reAlertMs })
        })
        triggeredAt.push(receivedAt)
      }
    }
    if (previous !== undefined && !same && previous.firing) {
      // The condition the old rule watched is gone with it: end it rather than leave an alert open.
      emitter.emit('cleared', nowMs, nowMs, `rule ${rule.id} now watches something else`, {
        reason: 'rule_changed', previousKind: previous.kind, previousMetric: previous.metric
      })
    }
    if (rule.kind === 'threshold') stepThreshold(rule, st as ThresholdState, readings, emitter)
    else if (rule.kind === 'rate_of_change') stepRate(rule, st as RateState, readings, emitter)
    else if (rule.kind === 'news2') stepNews2(rule, st as News2State, readings, batch, emitter, derivedReadings)
    else stepNoDataReadings(rule, st as NoDataState, readings, emitter)
    state[rule.id] = st
  }
  return { state, changes, triggeredAt, derivedReadings }
}

function metricOf (rule: Rule): string | null {
  return rule.kind === 'news2' ? null : rule.metric
}

export function initialState (rule: Rule): RuleState {
  const common = { metric: metricOf(rule), firing: false, firingSince: null, clearSince: null, lastTs: null }
  switch (rule.kind) {
    case 'threshold': return { kind: 'threshold', ...common, breachSince: null, recent: [] }
    case 'rate_of_change': return { kind: 'rate_of_change', ...common, points: [] }
    case 'news2': return { kind: 'news2', ...common, latest: {}, band: null, lastStored: null }
    case 'no_data': return { kind: 'no_data', ...common, lastReadingAt: null }
  }
}

function fresh (st: ConditionState, r: EvalReading): boolean {
  if (st.lastTs !== null && r.ts <= st.lastTs) return false
  st.lastTs = r.ts
  return true
}

export function formatDuration (ms: number): string {
  if (ms % 86_400_000 === 0 && ms > 0) return `${ms / 86_400_000} d`
  if (ms % 3_600_000 === 0 && ms > 0) return `${ms / 3_600_000} h`
  if (ms % 60_000 === 0 && ms > 0) return `${ms / 60_000} min`
  return `${Math.round(ms / 1000)} s`
}

function unitOf (metric: string): string {
  return lookupMetric(metric)?.unit ?? ''
}

function stepThreshold (rule: ThresholdRule, st: ThresholdState, readings: EvalReading[], out: Emitter): void {
  const h = rule.hysteresis
  for (const r of readings) {
    if (r.metric !== rule.metric || !fresh(st, r)) continue
    const above = rule.above !== null && r.value > rule.above
    const below = rule.below !== null && r.value < rule.below
    const breach = above || below
    if (rule.nOfM !== null) {
      st.recent.push(breach ? 1 : 0)
      if (st.recent.length > rule.nOfM.m) st.recent.splice(0, st.recent.length - rule.nOfM.m)
    }
    if (!st.firing) {
      let fire: boolean
      if (rule.nOfM !== null) {
        fire = st.recent.reduce((a, b) => a + b, 0) >= rule.nOfM.n
      } else if (breach) {
        st.breachSince ??= r.ts
        fire = r.ts - st.breachSince >= rule.forMs
      } else {
        st.breachSince = null
        fire = false
      }
      if (!fire) continue
      st.firing = true
      st.firingSince = r.ts
      st.clearSince = null
      const bound = above ? rule.above : rule.below
      const sustained = rule.nOfM !== null
        ? ` in ${rule.nOfM.n} of the last ${rule.nOfM.m} readings`
        : rule.forMs > 0 ? ` for ${formatDuration(rule.forMs)}` : ''
      out.emit('firing', r.ts, r.receivedAt, `${rule.metric} ${r.value} ${unitOf(rule.metric)} ${above ? 'above' : 'below'} ${bound}${sustained}`, {
        metric: rule.metric, value: r.value, unit: unitOf(rule.metric), direction: above ? 'above' : 'below', threshold: bound,
        forMs: rule.forMs, nOfM: rule.nOfM, breachSince: st.breachSince ?? r.ts
      })
    } else {
      // Hysteresis: clear only once the value is back past the bound by `hysteresis`, and
      // stays there clearAfter, so a value hovering at the threshold does not flap.
      const back = (rule.above === null || r.value <= rule.above - h) && (rule.below === null || r.value >= rule.below + h)
      if (!back) {
        st.clearSince = null
        // Still past the bound (not merely inside the hysteresis band): the condition holds.
        if (breach && reminderDue(st, r.ts, rule.reAlertMs)) {
          const bound = above ? rule.above : rule.below
          out.emit('firing', r.ts, r.receivedAt, `${rule.metric} ${r.value} ${unitOf(rule.metric)} ${above ? 'above' : 'below'} ${bound}`, {
            metric: rule.metric, value: r.value, unit: unitOf(rule.metric), direction: above ? 'above' : 'below', threshold: bound,
            forMs: rule.forMs, nOfM: rule.nOfM, firingSince: st.firingSince
          }, undefined, 'reminder')
        }
        continue
      }
      st.clearSince ??= r.ts
      if (r.ts - st.clearSince < rule.clearAfterMs) continue
      const since = st.firingSince
      st.firing = false
      st.firingSince = null
      st.clearSince = null
      st.breachSince = null
      st.recent = []
      out.emit('cleared', r.ts, r.receivedAt, `${rule.metric} ${r.value} ${unitOf(rule.metric)} back within limits`, {
        metric: rule.metric, value: r.value, unit: unitOf(rule.metric), above: rule.above, below: rule.below, hysteresis: h, firingSince: since
      })
    }
  }
}

/**
 * Least-squares slope of value over time (per ms), each point weighted by the readings it
 * stands for (a third element; 1 when absent). Chosen over last-minus-first because one noisy
 * reading at either end of the window would otherwise decide the result.
 */
export function leastSquaresSlope (points: ReadonlyArray<readonly number[]>): number {
  if (points.length < 2) return 0
  const t0 = points[0]![0]!
  let sw = 0; let st = 0; let sv = 0
  for (const [t, v, w = 1] of points) { sw += w; st += w * (t! - t0); sv += w * v! }
  const mt = st / sw; const mv = sv / sw
  let num = 0; let den = 0
  for (const [t, v, w = 1] of points) {
    const dt = t! - t0 - mt
    num += w * dt * (v! - mv)
    den += w * dt * dt
  }
  return den === 0 ? 0 : num / den
}

function stepRate (rule: RateOfChangeRule, st: RateState, readings: EvalReading[], out: Emitter): void {
  const h = rule.hysteresis
  for (const r of readings) {
    if (r.metric !== rule.metric || !fresh(st, r)) continue
    const slot = Math.floor(r.ts / Math.max(1, Math.floor(rule.windowMs / WINDOW_SLOTS)))
    const last = st.points[st.points.length - 1]
    if (last !== undefined && last[3] === slot) {
      const n = last[2] + 1
      st.points[st.points.length - 1] = [last[0] + (r.ts - last[0]) / n, last[1] + (r.value - last[1]) / n, n, slot]
    } else {
      st.points.push([r.ts, r.value, 1, slot])
    }
    const from = r.ts - rule.windowMs
    let drop = 0
    while (drop < st.points.length && st.points[drop]![0] < from) drop++
    if (drop > 0) st.points.splice(0, drop)
    const readingCount = st.points.reduce((sum, p) => sum + p[2], 0)
    // The slope over less than half the window would extrapolate noise to the whole window.
    if (readingCount < rule.minReadings || r.ts - st.points[0]![0] < rule.windowMs / 2) continue
    const change = Number((leastSquaresSlope(st.points) * rule.windowMs).toFixed(3))
    const falling = rule.fallBy !== null && change <= -rule.fallBy
    const rising = rule.riseBy !== null && change >= rule.riseBy
    const details = {
      metric: rule.metric, value: r.value, unit: unitOf(rule.metric), changeOverWindow: change, windowMs: rule.windowMs,
      fallBy: rule.fallBy, riseBy: rule.riseBy, readingCount, method: 'least_squares'
    }
    if (!st.firing) {
      if (!falling && !rising) continue
      st.firing = true
      st.firingSince = r.ts
      st.clearSince = null
      out.emit('firing', r.ts, r.receivedAt,
        `${rule.metric} ${falling ? 'falling' : 'rising'} ${Number(Math.abs(change).toFixed(1))} ${unitOf(rule.metric)} over ${formatDuration(rule.windowMs)} (now ${r.value})`, details)
    } else {
      const back = (rule.fallBy === null || change > -(rule.fallBy - h)) && (rule.riseBy === null || change < rule.riseBy - h)
      if (!back) {
        st.clearSince = null
        if ((falling || rising) && reminderDue(st, r.ts, rule.reAlertMs)) {
          out.emit('firing', r.ts, r.receivedAt,
            `${rule.metric} ${falling ? 'falling' : 'rising'} ${Number(Math.abs(change).toFixed(1))} ${unitOf(rule.metric)} over ${formatDuration(rule.windowMs)} (now ${r.value})`,
            details, undefined, 'reminder')
        }
        continue
      }
      st.clearSince ??= r.ts
      if (r.ts - st.clearSince < rule.clearAfterMs) continue
      st.firing = false
      st.firingSince = null
      st.clearSince = null
      out.emit('cleared', r.ts, r.receivedAt, `${rule.metric} change over ${formatDuration(rule.windowMs)} back within limits (${change})`, details)
    }
  }
}

function stepNews2 (rule: News2Rule, st: News2State, readings: EvalReading[], batch: PatientBatch, out: Emitter, derived: StoredReading[]): void {
  let newest: EvalReading | null = null
  for (const r of readings) {
    if (!(news2Parameters as readonly string[]).includes(r.metric)) continue
    const parameter = r.metric as News2Parameter
    const held = st.latest[parameter]
    if (held !== undefined && r.ts <= held[0]) continue
    st.latest[parameter] = [r.ts, r.value]
    if (newest === null || r.ts >= newest.ts) newest = r
  }
  if (newest === null) return
  const at = newest.ts
  st.lastTs = Math.max(st.lastTs ?? at, at)
  // Each parameter's latest value within the freshness window before the newest reading.
  const values: Partial<Record<News2Parameter, number>> = {}
  for (const parameter of news2Parameters) {
    const held = st.latest[parameter]
    if (held !== undefined && at - held[0] <= rule.freshnessMs) values[parameter] = held[1]
  }
  const result = scoreNews2(values, batch.spo2Scale)
  // Only a complete score is a NEWS2 reading; a partial total is a lower bound.
  if (result.complete && (st.lastStored === null || st.lastStored[1] !== result.total || at - st.lastStored[0] >= NEWS2_STORE_INTERVAL_MS)) {
    derived.push({ patientId: batch.patientId, deviceId: DERIVED_DEVICE_ID, metric: 'news2_score', value: result.total, unit: '{score}', ts: at, seq: null })
    st.lastStored = [at, result.total]
  }
  // Too few parameters to say anything either way: the condition stays as it is.
  if (7 - result.missing.length < rule.minParameters) return
  const severity = rule.severityByBand[result.band]
  const details = {
    total: result.total, band: result.band, subScores: result.subScores, redScores: result.redScores,
    complete: result.complete, missing: result.missing, spo2Scale: result.spo2Scale, freshnessMs: rule.freshnessMs
  }
  const partial = result.complete ? '' : ` (partial: ${result.missing.join(', ')} missing; at least this)`
  if (severity !== undefined) {
    st.clearSince = null
    const summary = `NEWS2 ${result.total}, ${result.band.replace('_', '-')} risk${partial}`
    if (st.firing && st.band === result.band) {
      // Same band: the open alert follows the score (an 'update'), or is restated (a 'reminder').
      if (st.total !== result.total) {
        st.total = result.total
        out.emit('firing', at, newest.receivedAt, summary, details, severity, 'update')
      } else if (reminderDue(st, at, rule.reAlertMs)) {
        out.emit('firing', at, newest.receivedAt, summary, details, severity, 'reminder')
      }
      return
    }
    st.firing = true
    st.firingSince ??= at
    st.band = result.band
    st.total = result.total
    out.emit('firing', at, newest.receivedAt, summary, details, severity)
    return
  }
  if (!st.firing) return
  st.clearSince ??= at
  if (at - st.clearSince < rule.clearAfterMs) return
  st.firing = false
  st.firingSince = null
  st.clearSince = null
  st.band = null
  st.total = null
  out.emit('cleared', at, newest.receivedAt, `NEWS2 ${result.total}, ${result.band.replace('_', '-')} risk${partial}`, details)
}

/** Readings end a no-data condition at once; the silence itself is found by evaluateNoData. */
function stepNoDataReadings (rule: Rule & { kind: 'no_data' }, st: NoDataState, readings: EvalReading[], out: Emitter): void {
  let last: EvalReading | null = null
  for (const r of readings) {
    if (rule.metric !== null && r.metric !== rule.metric) continue
    if (last === null || r.receivedAt >= last.receivedAt) last = r
  }
  if (last === null) return
  st.lastReadingAt = Math.max(st.lastReadingAt ?? 0, last.receivedAt)
  st.lastTs = Math.max(st.lastTs ?? last.ts, last.ts)
  if (!st.firing) return
  st.firing = false
  st.firingSince = null
  out.emit('cleared', last.receivedAt, last.receivedAt, `${rule.metric ?? 'readings'} arriving again`, { metric: rule.metric, deviceId: last.deviceId })
}
