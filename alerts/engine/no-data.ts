import type { ConditionChange, DevicePresence, NoDataCause } from '../contract.ts'
import { formatDuration, initialState, reminderDue } from './evaluate.ts'
import type { NoDataState, PatientRuleState } from './evaluate.ts'
import type { NoDataRule, Rule } from './rule-set.ts'
import { copyJson } from './json-state.ts'

export interface NoDataInput {
  rules: readonly Rule[]
  /** Every known device; those with a patient are checked. */
  presence: readonly DevicePresence[]
  /** Current state per patient (only the no_data rules' entries are read). */
  states: ReadonlyMap<string, PatientRuleState>
  nowMs: number
}

export interface NoDataOutput {
  changes: ConditionChange[]
  /** Patients whose no_data state changed: the new state of each no_data rule. */
  states: Map<string, Record<string, NoDataState>>
}

/**
 * Finds patients (or their devices) silent for longer than each no_data rule's window, and
 * says why when Vigil knows: the device disconnected from the broker (since when), is connected
 * but sending nothing, or reports a low battery. Ends conditions whose data came back. Pure:
 * the alert engine calls it every 30 s with the devices' presence (alert-engine.ts, checkNoData).
 */
export function evaluateNoData (input: NoDataInput): NoDataOutput {
  const rules = input.rules.filter((r): r is NoDataRule => r.kind === 'no_data')
  const out: NoDataOutput = { changes: [], states: new Map() }
  if (rules.length === 0) return out
  const devicesByPatient = new Map<string, DevicePresence[]>()
  for (const device of input.presence) {
    if (device.patientId === null) continue
    const list = devicesByPatient.get(device.patientId) ?? []
    list.push(device)
    devicesByPatient.set(device.patientId, list)
  }
  const patients = new Set([...devicesByPatient.keys(), ...input.states.keys()])
  for (const patientId of patients) {
    const devices = devicesByPatient.get(patientId) ?? []
    for (const rule of rules) {
      const held = input.states.get(patientId)?.[rule.id]
      const st = copyJson(held?.kind === 'no_data' ? held : initialState(rule) as NoDataState)
      const silence = rule.metric === null
        ? silentDevices(rule, devices, input.nowMs)
        : silentMetric(rule, st, devices, input.nowMs)
      if (silence !== null && !st.firing) {
        st.firing = true
        st.firingSince = input.nowMs
        st.notedAt = input.nowMs
        out.changes.push(change(patientId, rule, 'firing', input.nowMs, silence.summary, silence.details))
      } else if (silence !== null && reminderDue(st, input.nowMs, rule.reAlertMs)) {
        // Still silent: restated so that an alert resolved by hand re-opens (alerts/lifecycle/alert-store.ts).
        st.notedAt = input.nowMs
        out.changes.push({ ...change(patientId, rule, 'firing', input.nowMs, silence.summary, silence.details), ongoing: 'reminder', reAlertMs: rule.reAlertMs })
      } else if (silence === null && st.firing) {
        st.firing = false
        st.firingSince = null
        st.notedAt = null
        out.changes.push(change(patientId, rule, 'cleared', input.nowMs, `${rule.metric ?? 'readings'} arriving again`, { metric: rule.metric }))
      } else {
        continue
      }
      const states = out.states.get(patientId) ?? {}
      states[rule.id] = st
      out.states.set(patientId, states)
    }
  }
  return out
}

interface Silence { summary: string, details: Record<string, unknown> }

function silentDevices (rule: NoDataRule, devices: DevicePresence[], nowMs: number): Silence | null {
  const silent = devices.filter((d) => {
    const reference = d.lastReadingAt ?? d.changedAt
    return reference !== null && nowMs - reference > rule.afterMs
  })
  if (silent.length === 0) return null
  const first = silent[0]!
  const cause = causeOf(rule, [first])
  const more = silent.length > 1 ? ` (+${silent.length - 1} more device${silent.length > 2 ? 's' : ''})` : ''
  return {
    summary: `device ${first.deviceId} silent for more than ${formatDuration(rule.afterMs)}: ${cause.text}${more}`,
    details: { metric: null, afterMs: rule.afterMs, cause: cause.cause, ...cause.facts, devices: silent.map((d) => deviceFacts(rule, d)) }
  }
}

function silentMetric (rule: NoDataRule, st: NoDataState, devices: DevicePresence[], nowMs: number): Silence | null {
  // A metric never seen for this patient has no silence to measure (it may not be monitored).
  if (st.lastReadingAt === null || nowMs - st.lastReadingAt <= rule.afterMs) return null
  const cause = causeOf(rule, devices)
  return {
    summary: `no ${rule.metric} for more than ${formatDuration(rule.afterMs)}: ${cause.text}`,
    details: { metric: rule.metric, afterMs: rule.afterMs, lastReadingAt: st.lastReadingAt, cause: cause.cause, ...cause.facts, devices: devices.map((d) => deviceFacts(rule, d)) }
  }
}

function lowBattery (rule: NoDataRule, d: DevicePresence): boolean {
  return d.batteryPercent !== null && d.batteryPercent <= rule.lowBatteryPercent
}

function causeOf (rule: NoDataRule, devices: DevicePresence[]): { cause: NoDataCause, text: string, facts: Record<string, unknown> } {
  if (devices.length === 0) return { cause: 'no_device', text: 'no device is assigned', facts: {} }
  const connected = devices.filter((d) => d.connected)
  if (connected.length === 0) {
    const since = Math.max(...devices.map((d) => d.changedAt ?? 0))
    const battery = devices.find((d) => lowBattery(rule, d))
    return {
      cause: 'disconnected',
      text: since > 0 ? `device disconnected since ${new Date(since).toISOString()}` : 'device not connected',
      facts: { disconnectedSince: since > 0 ? since : null, ...(battery === undefined ? {} : { batteryPercent: battery.batteryPercent }) }
    }
  }
  const low = connected.find((d) => lowBattery(rule, d))
  if (low !== undefined) return { cause: 'low_battery', text: `device connected, battery low (${low.batteryPercent}%)`, facts: { batteryPercent: low.batteryPercent } }
  if (connected.every((d) => d.lastReadingAt === null)) return { cause: 'never_reported', text: 'device connected but has never sent a reading', facts: {} }
  return { cause: 'connected_silent', text: 'device connected but sending nothing', facts: {} }
}

function deviceFacts (rule: NoDataRule, d: DevicePresence): Record<string, unknown> {
  return {
    deviceId: d.deviceId, connected: d.connected, changedAt: d.changedAt, lastReadingAt: d.lastReadingAt,
    batteryPercent: d.batteryPercent, lowBattery: lowBattery(rule, d)
  }
}

function change (patientId: string, rule: NoDataRule, status: 'firing' | 'cleared', at: number, summary: string, details: Record<string, unknown>): ConditionChange {
  return { patientId, ruleId: rule.id, kind: 'no_data', status, severity: rule.severity, escalationPolicy: rule.escalationPolicy, at, summary, details }
}
