import type { MetricName } from '../readings/vitals-catalogue.ts'
import { vitalsCatalogue } from '../readings/vitals-catalogue.ts'

// FHIR R4 §8.3 (Observation) and the vital-signs profiles of R4's observation-vitalsigns page:
// each catalogue metric as a FHIR Observation code, category and profile. Data, read by the mappers.

export const LOINC = 'http://loinc.org'
export const SNOMED_CT = 'http://snomed.info/sct'
export const UCUM = 'http://unitsofmeasure.org'
export const OBSERVATION_CATEGORY = 'http://terminology.hl7.org/CodeSystem/observation-category'
/** Vigil's own codes (catalogue metric names, alert rule ids): a URN, as nothing resolves there. */
export const VIGIL_METRIC_SYSTEM = 'urn:vigil:metric'
export const VIGIL_ALERT_RULE_SYSTEM = 'urn:vigil:alert-rule'
/** RFC 3986 identifiers (urn:uuid:…): how Vigil's own ids appear as FHIR identifiers. */
export const URI_IDENTIFIER_SYSTEM = 'urn:ietf:rfc:3986'

const profile = (name: string) => `http://hl7.org/fhir/StructureDefinition/${name}`

export type ObservationCategory = 'vital-signs' | 'laboratory' | 'survey'

export interface FhirMetric {
  /** Short code used in Observation ids (`hr`, `bp` …): stable, never reused. */
  readonly idCode: string
  readonly category: ObservationCategory
  /** The primary coding: LOINC where one exists; SNOMED CT for the NEWS2 total. */
  readonly system: string
  readonly code: string
  readonly display: string
  /** R4 vital-signs profile the Observation claims (meta.profile); absent when none applies. */
  readonly profile?: string
}

/**
 * Per catalogue metric. bp_systolic and bp_diastolic taken together (same device, same
 * instant) become one blood-pressure panel (BP_PANEL); alone, each is a plain vital sign
 * (the bp profile requires both components).
 */
export const fhirMetrics = {
  heart_rate: { idCode: 'hr', category: 'vital-signs', system: LOINC, code: '8867-4', display: 'Heart rate', profile: profile('heartrate') },
  resp_rate: { idCode: 'rr', category: 'vital-signs', system: LOINC, code: '9279-1', display: 'Respiratory rate', profile: profile('resprate') },
  // R4's oxygensat profile fixes 2708-6; 59408-5 ("by pulse oximetry", US Core) would claim a
  // method the reading does not record, so it is not added.
  spo2: { idCode: 'spo2', category: 'vital-signs', system: LOINC, code: '2708-6', display: 'Oxygen saturation in Arterial blood', profile: profile('oxygensat') },
  body_temp: { idCode: 'temp', category: 'vital-signs', system: LOINC, code: '8310-5', display: 'Body temperature', profile: profile('bodytemp') },
  bp_systolic: { idCode: 'sys', category: 'vital-signs', system: LOINC, code: '8480-6', display: 'Systolic blood pressure', profile: profile('vitalsigns') },
  bp_diastolic: { idCode: 'dia', category: 'vital-signs', system: LOINC, code: '8462-4', display: 'Diastolic blood pressure', profile: profile('vitalsigns') },
  body_weight: { idCode: 'wt', category: 'vital-signs', system: LOINC, code: '29463-7', display: 'Body weight', profile: profile('bodyweight') },
  body_height: { idCode: 'ht', category: 'vital-signs', system: LOINC, code: '8302-2', display: 'Body height', profile: profile('bodyheight') },
  bmi: { idCode: 'bmi', category: 'vital-signs', system: LOINC, code: '39156-5', display: 'Body mass index (BMI) [Ratio]', profile: profile('bmi') },
  glucose: { idCode: 'glu', category: 'laboratory', system: LOINC, code: '2339-0', display: 'Glucose [Mass/volume] in Blood' },
  // No standard code fits Vigil's coding of these NEWS2 inputs: Vigil's own code only.
  o2_supplemental: { idCode: 'o2', category: 'vital-signs', system: VIGIL_METRIC_SYSTEM, code: 'o2_supplemental', display: vitalsCatalogue.o2_supplemental.displayName },
  consciousness: { idCode: 'acvpu', category: 'survey', system: VIGIL_METRIC_SYSTEM, code: 'consciousness', display: vitalsCatalogue.consciousness.displayName },
  // SNOMED CT UK edition 1104051000000101 (NHS England's NEWS2 FHIR profile uses it).
  news2_score: { idCode: 'news2', category: 'survey', system: SNOMED_CT, code: '1104051000000101', display: 'Royal College of Physicians NEWS2 (National Early Warning Score 2) total score' }
} as const satisfies Record<MetricName, FhirMetric>

/** LOINC 85354-9: the R4 bp profile's panel, with 8480-6 and 8462-4 as components. */
export const BP_PANEL = {
  idCode: 'bp', category: 'vital-signs', system: LOINC, code: '85354-9', display: 'Blood pressure panel with all children optional', profile: profile('bp')
} as const satisfies FhirMetric

/**
 * NEWS2 (RCP 2017) sub-scores as SNOMED CT UK edition codes (NHS England's NEWS2 profile),
 * by the parameter each scores; SpO2 by the scale used.
 */
export const news2SubScoreCodes = {
  resp_rate: { code: '1104301000000104', display: 'Royal College of Physicians NEWS2 (National Early Warning Score 2) - respiration rate score' },
  spo2_scale1: { code: '1104311000000102', display: 'Royal College of Physicians NEWS2 (National Early Warning Score 2) - oxygen saturation scale 1 score' },
  spo2_scale2: { code: '1104321000000108', display: 'Royal College of Physicians NEWS2 (National Early Warning Score 2) - oxygen saturation scale 2 score' },
  o2_supplemental: { code: '1104331000000105', display: 'Royal College of Physicians NEWS2 (National Early Warning Score 2) - air or oxygen score' },
  bp_systolic: { code: '1104341000000101', display: 'Royal College of Physicians NEWS2 (National Early Warning Score 2) - systolic blood pressure score' },
  heart_rate: { code: '1104351000000103', display: 'Royal College of Physicians NEWS2 (National Early Warning Score 2) - pulse score' },
  consciousness: { code: '1104361000000100', display: 'Royal College of Physicians NEWS2 (National Early Warning Score 2) - consciousness score' },
  body_temp: { code: '1104371000000107', display: 'Royal College of Physicians NEWS2 (National Early Warning Score 2) - temperature score' }
} as const

const byIdCode = new Map<string, MetricName | 'bp'>([
  ...Object.entries(fhirMetrics).map(([metric, m]) => [m.idCode, metric as MetricName] as const),
  [BP_PANEL.idCode, 'bp']
])

/** The metric (or 'bp', the panel) an Observation id's code names; undefined when none. */
export function metricOfIdCode (idCode: string): MetricName | 'bp' | undefined {
  return byIdCode.get(idCode)
}

/**
 * The catalogue metrics whose readings can produce an Observation with this code (a token
 * search `system|code`, `code` or `|code`), and whether it names the BP panel. Undefined when
 * no Observation Vigil makes carries the code.
 */
export function metricsForCode (system: string | undefined, code: string): { metrics: MetricName[], codes: Array<{ system: string, code: string }> } | undefined {
  const matches = (s: string, c: string) => c === code && (system === undefined || system === s)
  if (matches(BP_PANEL.system, BP_PANEL.code)) return { metrics: ['bp_diastolic', 'bp_systolic'], codes: [{ system: BP_PANEL.system, code: BP_PANEL.code }] }
  for (const [metric, m] of Object.entries(fhirMetrics) as Array<[MetricName, FhirMetric]>) {
    if (matches(m.system, m.code) || matches(VIGIL_METRIC_SYSTEM, metric)) {
      // A lone systolic or diastolic is only known to be lone once the other is looked for.
      const metrics: MetricName[] = metric === 'bp_systolic' || metric === 'bp_diastolic' ? ['bp_diastolic', 'bp_systolic'] : [metric]
      return { metrics, codes: [{ system: m.system, code: m.code }] }
    }
  }
  return undefined
}
