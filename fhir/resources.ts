// Pure mappers from Vigil's records to FHIR R4 resources (https://hl7.org/fhir/R4/). No I/O:
// the API, and later the bulk export and the de-identified dataset, feed them what they read.
// Readings are mapped one group at a time (createReadingGrouper), so a stream of any length
// maps in constant memory.
import type { Device } from '../devices/device-registry.ts'
import type { RecordBody } from '../patients/record-schemas.ts'
import type { StoredReading } from '../readings/reading.ts'
import type { MetricName } from '../readings/vitals-catalogue.ts'
import { news2Parameters, scoreNews2 } from '../alerts/engine/news2.ts'
import type { News2Parameter, Spo2Scale } from '../alerts/engine/news2.ts'
// The device id the alert engine stores derived readings (NEWS2) under: not a real device.
import { DERIVED_DEVICE_ID } from '../alerts/engine/evaluate.ts'
import type { Severity } from '../alerts/contract.ts'
import { observationId } from './observation-ids.ts'
import {
  BP_PANEL, OBSERVATION_CATEGORY, SNOMED_CT, UCUM, URI_IDENTIFIER_SYSTEM, VIGIL_ALERT_RULE_SYSTEM, VIGIL_METRIC_SYSTEM,
  fhirMetrics, news2SubScoreCodes
} from './vital-signs.ts'
import type { FhirMetric } from './vital-signs.ts'

// ---------------------------------------------------------------------------------------
// The few R4 data types the mappers produce (R4 §2.24 Data Types), loosely typed.
// ---------------------------------------------------------------------------------------

export interface Coding { system?: string, code?: string, display?: string }
export interface CodeableConcept { coding?: Coding[], text?: string }
export interface Reference { reference?: string, display?: string }
export interface Quantity { value: number, unit?: string, system?: string, code?: string }
export interface Identifier {
  use?: 'usual' | 'official' | 'temp' | 'secondary' | 'old'
  type?: CodeableConcept
  system?: string
  value?: string
  period?: { start?: string, end?: string }
  assigner?: Reference
}
export interface Extension { url: string, valueCode?: string, valueString?: string }

/** Any resource; the mappers' return types narrow it. */
export interface Resource { resourceType: string, id?: string, [key: string]: unknown }

export interface ObservationComponent { code: CodeableConcept, valueQuantity?: Quantity, valueInteger?: number }

export interface Observation extends Resource {
  resourceType: 'Observation'
  id: string
  meta?: { profile: string[] }
  status: 'final'
  category: CodeableConcept[]
  code: CodeableConcept
  subject: Reference
  effectiveDateTime: string
  valueQuantity?: Quantity
  device?: Reference
  component?: ObservationComponent[]
}


export const patientReference = (id: string): Reference => ({ reference: `Patient/${id}` })
export const deviceReference = (id: string): Reference => ({ reference: `Device/${id}` })

// ---------------------------------------------------------------------------------------
// Observation (R4 §8.3; vital signs: R4 observation-vitalsigns)
// ---------------------------------------------------------------------------------------

/** One Observation's readings: one reading, or a systolic and a diastolic taken together. */
export type ReadingGroup = readonly [StoredReading] | readonly [StoredReading, StoredReading]

const sameInstant = (a: StoredReading, b: StoredReading) => a.ts === b.ts && a.deviceId === b.deviceId && a.patientId === b.patientId

/**
 * Groups a stream of readings into Observations' readings: a bp_systolic and a bp_diastolic of
 * the same patient, device and instant become one group (the BP panel). Readings of one instant
 * and device must arrive together, as every ReadingStore returns them (ReadingPosition order).
 * Holds at most one instant's readings.
 */
export function createReadingGrouper () {
  let pending: StoredReading[] = []
  function flush (): ReadingGroup[] {
    const out: ReadingGroup[] = []
    const systolic = pending.find((r) => r.metric === 'bp_systolic')
    const diastolic = pending.find((r) => r.metric === 'bp_diastolic')
    for (const r of pending) {
      if (systolic !== undefined && diastolic !== undefined) {
        if (r === systolic) continue
        if (r === diastolic) {
          out.push([systolic, diastolic])
          continue
        }
      }
      out.push([r])
    }
    pending = []
    return out
  }
  return {
    /** The groups completed by this reading (those of the previous instant). */
    push (reading: StoredReading): ReadingGroup[] {
      const out = pending.length > 0 && !sameInstant(pending[0]!, reading) ? flush() : []
      pending.push(reading)
      return out
    },
    /** The last instant's groups, at the end of the stream. */
    flush
  }
}

export function * groupReadings (readings: Iterable<StoredReading>): Generator<ReadingGroup> {
  const grouper = createReadingGrouper()
  for (const r of readings) yield * grouper.push(r)
  yield * grouper.flush()
}

export async function * groupReadingsAsync (readings: AsyncIterable<StoredReading>): AsyncGenerator<ReadingGroup> {
  const grouper = createReadingGrouper()
  for await (const r of readings) yield * grouper.push(r)
  yield * grouper.flush()
}

/** NEWS2 sub-scores for the components of a NEWS2 Observation (see news2Breakdown). */
export interface News2Breakdown { subScores: Partial<Record<News2Parameter, number>>, spo2Scale: Spo2Scale }

const categoryOf = (m: FhirMetric): CodeableConcept[] => [{
  coding: [{ system: OBSERVATION_CATEGORY, code: m.category, display: { 'vital-signs': 'Vital Signs', laboratory: 'Laboratory', survey: 'Survey' }[m.category] }]
}]

function quantity (value: number, unit: string): Quantity {
  return { value, unit, system: UCUM, code: unit }
}

function codeOf (m: FhirMetric, metric?: MetricName): CodeableConcept {
  const coding: Coding[] = [{ system: m.system, code: m.code, display: m.display }]
  if (metric !== undefined && m.system !== VIGIL_METRIC_SYSTEM) coding.push({ system: VIGIL_METRIC_SYSTEM, code: metric })
  return { coding, text: m.display }
}

/**
 * The Observation for one group. `news2`: the NEWS2 sub-scores behind a news2_score reading,
 * when known, become its components.
 */
export function observationOf (group: ReadingGroup, news2?: News2Breakdown | null): Observation {
  const first = group[0]
  const key = { patientId: first.patientId, deviceId: first.deviceId, ts: first.ts }
  const base = {
    resourceType: 'Observation' as const,
    status: 'final' as const,
    subject: patientReference(first.patientId),
    effectiveDateTime: new Date(first.ts).toISOString()
  }
  const device = first.deviceId === DERIVED_DEVICE_ID ? {} : { device: deviceReference(first.deviceId) }
  if (group.length === 2) {
    const systolic = group.find((r) => r.metric === 'bp_systolic')!
    const diastolic = group.find((r) => r.metric === 'bp_diastolic')!
    return {
      ...base,
      id: observationId({ ...key, metric: 'bp' }, BP_PANEL.idCode),
      meta: { profile: [BP_PANEL.profile] },
      category: categoryOf(BP_PANEL),
      code: codeOf(BP_PANEL),
      ...device,
      component: [
        { code: codeOf(fhirMetrics.bp_systolic, 'bp_systolic'), valueQuantity: quantity(systolic.value, systolic.unit) },
        { code: codeOf(fhirMetrics.bp_diastolic, 'bp_diastolic'), valueQuantity: quantity(diastolic.value, diastolic.unit) }
      ]
    }
  }
  const metric = first.metric as MetricName
  const m: FhirMetric | undefined = fhirMetrics[metric]
  if (m === undefined) throw new RangeError(`metric ${first.metric} is not in the vitals catalogue`)
  const observation: Observation = {
    ...base,
    id: observationId({ ...key, metric }, m.idCode),
    ...(m.profile === undefined ? {} : { meta: { profile: [m.profile] } }),
    category: categoryOf(m),
    code: codeOf(m, metric),
    ...device,
    valueQuantity: quantity(first.value, first.unit)
  }
  if (metric === 'news2_score' && news2 != null) {
    observation.component = news2Parameters.flatMap((parameter) => {
      const score = news2.subScores[parameter]
      if (score === undefined) return []
      const c = parameter === 'spo2' ? news2SubScoreCodes[news2.spo2Scale === 2 ? 'spo2_scale2' : 'spo2_scale1'] : news2SubScoreCodes[parameter]
      return [{ code: { coding: [{ system: SNOMED_CT, code: c.code, display: c.display }], text: c.display }, valueInteger: score }]
    })
  }
  return observation
}

export function * observationsOf (readings: Iterable<StoredReading>): Generator<Observation> {
  for (const group of groupReadings(readings)) yield observationOf(group)
}

/**
 * The sub-scores behind a stored NEWS2 total: each parameter's latest reading within
 * `freshnessMs` before the score's instant, scored with NEWS2 chart 1 (as the alert engine did).
 * Null when they do not add up to the stored total (a reading arrived late, the SpO2 scale or
 * the rule's freshness changed since): then no components are claimed.
 */
export function news2Breakdown (score: StoredReading, inputs: Iterable<StoredReading>, freshnessMs: number, spo2Scale: Spo2Scale): News2Breakdown | null {
  const latest: Partial<Record<News2Parameter, StoredReading>> = {}
  for (const r of inputs) {
    if (!(news2Parameters as readonly string[]).includes(r.metric) || r.patientId !== score.patientId) continue
    if (r.ts > score.ts || score.ts - r.ts > freshnessMs) continue
    const parameter = r.metric as News2Parameter
    const held = latest[parameter]
    if (held === undefined || r.ts > held.ts) latest[parameter] = r
  }
  const values: Partial<Record<News2Parameter, number>> = {}
  for (const parameter of news2Parameters) {
    const r = latest[parameter]
    if (r !== undefined) values[parameter] = r.value
  }
  const result = scoreNews2(values, spo2Scale)
  if (!result.complete || result.total !== score.value) return null
  return { subScores: result.subScores, spo2Scale }
}

/**
 * NEWS2 breakdowns over one patient's readings streamed newest first (the bulk export): each
 * stored total waits until every reading that could be among its inputs (its parameters within
 * `freshnessMs` before it) has gone by, keeping only each parameter's latest, so memory is the
 * totals within one freshness window. Readings of the total's own instant that came before it
 * in the stream (sorted by metric) count too. `push` and `flush` return the settled totals.
 */
export function createNews2Breakdowns (freshnessMs: number, spo2Scale: Spo2Scale) {
  const isParameter = (metric: string): boolean => (news2Parameters as readonly string[]).includes(metric)
  const waiting: Array<{ score: StoredReading, latest: Map<string, StoredReading> }> = []
  let instant: StoredReading[] = []
  // Totals wait in stream order (newest first), and the newest one's window closes first.
  function settle (olderThan: number | null): Array<[StoredReading, News2Breakdown | null]> {
    const out: Array<[StoredReading, News2Breakdown | null]> = []
    while (waiting.length > 0 && (olderThan === null || waiting[0]!.score.ts - freshnessMs > olderThan)) {
      const { score, latest } = waiting.shift()!
      out.push([score, news2Breakdown(score, latest.values(), freshnessMs, spo2Scale)])
    }
    return out
  }
  return {
    push (reading: StoredReading): Array<[StoredReading, News2Breakdown | null]> {
      const settled = settle(reading.ts)
      if (instant.length > 0 && instant[0]!.ts !== reading.ts) instant = []
      if (reading.metric === 'news2_score') {
        const latest = new Map<string, StoredReading>()
        for (const r of instant) if (!latest.has(r.metric)) latest.set(r.metric, r)
        waiting.push({ score: reading, latest })
      } else if (isParameter(reading.metric)) {
        for (const w of waiting) {
          if (!w.latest.has(reading.metric) && reading.ts <= w.score.ts && w.score.ts - reading.ts <= freshnessMs) w.latest.set(reading.metric, reading)
        }
        instant.push(reading)
      }
      return settled
    },
    flush: (): Array<[StoredReading, News2Breakdown | null]> => settle(null)
  }
}

// ---------------------------------------------------------------------------------------
// Patient (R4 §8.1)
// ---------------------------------------------------------------------------------------

const vigilIdentifier = (id: string): Identifier => ({ use: 'official', system: URI_IDENTIFIER_SYSTEM, value: `urn:uuid:${id}` })

const addressUse = { home: { use: 'home' }, work: { use: 'work' }, billing: { use: 'billing' }, mailing: { type: 'postal' }, other: {} } as const

/**
 * A patient: id, Vigil's identifier and the display name. `record` (the caller has phi:read)
 * adds the record's Patient fields: birth date, gender, addresses, medical card, emergency
 * contacts, primary care provider. Insurance, billing, medications and allergies are other
 * resources (Coverage, Account, MedicationStatement, AllergyIntolerance) Vigil does not serve.
 */
export function patientOf (patient: { id: string, displayName: string }, record?: RecordBody | null): Resource {
  const identifier: Identifier[] = [vigilIdentifier(patient.id)]
  const out: Resource = { resourceType: 'Patient', id: patient.id, identifier, active: true, name: [{ use: 'usual', text: patient.displayName }] }
  if (record == null) return out
  const card = record.medicalCard
  if (card !== undefined) {
    identifier.push({
      use: 'secondary',
      type: { text: 'Medical card number' },
      value: card.number,
      assigner: { display: card.issuer },
      ...(card.validUntil === undefined ? {} : { period: { end: card.validUntil } })
    })
  }
  const gender = record.medicalHistory?.gender
  if (gender !== undefined) out.gender = gender
  if (record.dateOfBirth !== undefined) out.birthDate = record.dateOfBirth
  if (record.addresses !== undefined && record.addresses.length > 0) {
    out.address = record.addresses.map((a) => ({
      ...addressUse[a.kind],
      line: a.line2 === undefined ? [a.line1] : [a.line1, a.line2],
      city: a.city,
      ...(a.region === undefined ? {} : { state: a.region }),
      postalCode: a.postalCode,
      country: a.country
    }))
  }
  if (record.emergencyContacts !== undefined && record.emergencyContacts.length > 0) {
    out.contact = record.emergencyContacts.map((c) => ({
      relationship: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v2-0131', code: 'C', display: 'Emergency Contact' }] }, { text: c.relationship }],
      name: { text: c.name },
      telecom: [{ system: 'phone', value: c.phone }, ...(c.email === undefined ? [] : [{ system: 'email', value: c.email }])]
    }))
  }
  const pcp = record.primaryCareProvider
  if (pcp !== undefined) out.generalPractitioner = [{ display: pcp.organization === undefined ? pcp.name : `${pcp.name} (${pcp.organization})` }]
  return out
}

// ---------------------------------------------------------------------------------------
// Device (R4 §8.17)
// ---------------------------------------------------------------------------------------

/** IEEE canonical form (upper case, dashes), as the Personal Health Device IG writes EUI-48/64. */
function eui (mac: string): string {
  return mac.toUpperCase().replace(/:/g, '-')
}

/**
 * A device: the MAC as an EUI-48 (or EUI-64) identifier, its name, firmware and software
 * versions, and the patient it is assigned to now (null when unassigned or the caller may not
 * see that patient: patientIdentityFilter decides before this runs).
 */
export function deviceOf (device: Pick<Device, 'id' | 'name' | 'mac' | 'firmwareVersion' | 'softwareVersion' | 'patientId'>): Resource {
  const octets = device.mac.split(':').length
  return {
    resourceType: 'Device',
    id: device.id,
    identifier: [
      { use: 'official', system: URI_IDENTIFIER_SYSTEM, value: `urn:uuid:${device.id}` },
      { type: { text: 'MAC address' }, system: `http://hl7.org/fhir/sid/eui-${octets === 8 ? 64 : 48}`, value: eui(device.mac) }
    ],
    status: 'active',
    deviceName: [{ name: device.name, type: 'user-friendly-name' }],
    version: [
      { type: { text: 'firmware' }, value: device.firmwareVersion },
      { type: { text: 'software' }, value: device.softwareVersion }
    ],
    ...(device.patientId === null ? {} : { patient: patientReference(device.patientId) })
  }
}

// ---------------------------------------------------------------------------------------
// Flag (R4 §8.x): an open alert
// ---------------------------------------------------------------------------------------

/** What a Flag needs of an alert (alerts/lifecycle's Alert has these). */
export interface AlertForFlag {
  id: string
  patientId: string
  ruleId: string
  severity: Severity
  status: 'open' | 'acknowledged' | 'resolved'
  summary: string
  openedAt: string
  resolvedAt: string | null
}

export const ALERT_SEVERITY_EXTENSION = 'urn:vigil:fhir:extension:alert-severity'
export const ALERT_STATUS_EXTENSION = 'urn:vigil:fhir:extension:alert-status'

/**
 * An alert as a Flag: a warning about the patient for whoever cares for them, active until the
 * alert is resolved. (DetectedIssue is for problems with a proposed or ongoing clinical action,
 * such as a drug interaction, and has no open/closed life of its own; a threshold crossing or a
 * NEWS2 band is a state of the patient, which is what Flag is for.)
 */
export function flagOf (alert: AlertForFlag): Resource {
  return {
    resourceType: 'Flag',
    id: alert.id,
    extension: [
      { url: ALERT_SEVERITY_EXTENSION, valueCode: alert.severity },
      { url: ALERT_STATUS_EXTENSION, valueCode: alert.status }
    ],
    status: alert.status === 'resolved' ? 'inactive' : 'active',
    category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/flag-category', code: 'clinical', display: 'Clinical' }] }],
    code: { coding: [{ system: VIGIL_ALERT_RULE_SYSTEM, code: alert.ruleId }], text: alert.summary },
    subject: patientReference(alert.patientId),
    period: alert.resolvedAt === null ? { start: alert.openedAt } : { start: alert.openedAt, end: alert.resolvedAt }
  }
}

// ---------------------------------------------------------------------------------------
// Bundle (R4 §2.36) and OperationOutcome (R4 §2.38)
// ---------------------------------------------------------------------------------------

export interface SearchPage {
  /** This page's URL (the search as understood, without the cursor of the next page). */
  self: string
  /** The next page's URL; absent on the last page. */
  next?: string
  /** The service base (…/fhir/R4), for each entry's fullUrl. */
  base: string
  resources: readonly Resource[]
}

export function searchsetOf (page: SearchPage): Resource {
  return {
    resourceType: 'Bundle',
    type: 'searchset',
    link: [{ relation: 'self', url: page.self }, ...(page.next === undefined ? [] : [{ relation: 'next', url: page.next }])],
    entry: page.resources.map((resource) => ({
      fullUrl: `${page.base}/${resource.resourceType}/${resource.id!}`,
      resource,
      search: { mode: 'match' }
    }))
  }
}

/** R4 issue-type codes by HTTP status. */
const issueTypes: Record<number, string> = {
  400: 'invalid', 401: 'login', 403: 'forbidden', 404: 'not-found', 405: 'not-supported', 406: 'not-supported', 409: 'conflict',
  410: 'deleted', 413: 'too-long', 414: 'too-long', 415: 'not-supported', 422: 'processing', 429: 'throttled', 500: 'exception', 503: 'transient'
}

export const VIGIL_ERROR_SYSTEM = 'urn:vigil:error'

/** An error as an OperationOutcome: Vigil's stable code in details, its message as the text. */
export function operationOutcomeOf (status: number, error: { code: string, message: string, details?: Array<{ path: string, message: string }>, requestId?: string }): Resource {
  const issue = (text: string) => ({
    severity: status >= 500 ? 'fatal' : 'error',
    code: issueTypes[status] ?? (status >= 500 ? 'exception' : 'processing'),
    details: { coding: [{ system: VIGIL_ERROR_SYSTEM, code: error.code }], text },
    ...(error.requestId === undefined ? {} : { diagnostics: `request id ${error.requestId}` })
  })
  const issues = error.details !== undefined && error.details.length > 0
    ? error.details.map((d) => issue(`${d.path} ${d.message}`))
    : [issue(error.message)]
  return { resourceType: 'OperationOutcome', issue: issues }
}
