import { PayloadRejection } from './reading.ts'

/** `canonical = (value + offset) * scale`; offset defaults to 0. */
export interface UnitConversion {
  readonly scale: number
  readonly offset?: number
}

export interface VitalDefinition {
  /** LOINC code the metric is stored and exported under. */
  readonly loinc: string
  /** Other LOINC codes devices use for the same observation; accepted on input only. */
  readonly loincAliases?: readonly string[]
  /** Canonical UCUM unit: every stored value is in this unit. */
  readonly unit: string
  readonly displayName: string
  /** What a screen calls it (chart titles, the worklist's long label). */
  readonly label: string
  /** The worklist's column heading: HR, SpO₂ … */
  readonly abbreviation: string
  /** Physiologically possible range in the canonical unit (not alert thresholds). */
  readonly min: number
  readonly max: number
  /** Decimals kept when a value is converted from another unit. */
  readonly decimals: number
  /** Computed by Vigil (the alert engine's NEWS2), never accepted from a device. */
  readonly derived?: boolean
  /** Every unit spelling accepted on input, the canonical one included. */
  readonly units: Readonly<Record<string, UnitConversion>>
}

const same = { scale: 1 } as const
const fahrenheitToCelsius = { offset: -32, scale: 5 / 9 } as const
// UCUM [lb_av]: avoirdupois pound, defined as exactly 0.45359237 kg.
const poundToKilogram = { scale: 0.45359237 } as const
const kilopascalToMillimetreMercury = { scale: 7.50062 } as const
const inchToCentimetre = { scale: 2.54 } as const

/**
 * The metrics Vigil accepts. Units follow UCUM; SenML registry spellings (RFC 8428 §12.1:
 * `1/min`, `beat/min`) and spellings devices commonly send are accepted and converted.
 */
export const vitalsCatalogue = {
  heart_rate: {
    loinc: '8867-4',
    unit: '/min',
    displayName: 'Heart rate',
    label: 'Heart rate',
    abbreviation: 'HR',
    min: 20,
    max: 300,
    decimals: 0,
    units: {
      '/min': same,
      '{beats}/min': same,
      'beats/min': same,
      'beat/min': same,
      bpm: same,
      '1/min': same
    }
  },
  resp_rate: {
    loinc: '9279-1',
    unit: '/min',
    displayName: 'Respiratory rate',
    label: 'Respiratory rate',
    abbreviation: 'RR',
    min: 2,
    max: 80,
    decimals: 0,
    units: {
      '/min': same,
      '{breaths}/min': same,
      'breaths/min': same,
      'br/min': same,
      '1/min': same
    }
  },
  spo2: {
    loinc: '2708-6',
    // 59408-5 is SpO2 "by pulse oximetry", which is what home oximeters report.
    loincAliases: ['59408-5'],
    unit: '%',
    displayName: 'Oxygen saturation (SpO2)',
    label: 'Oxygen saturation',
    abbreviation: 'SpO₂',
    min: 50,
    max: 100,
    decimals: 0,
    units: {
      '%': same
    }
  },
  body_temp: {
    loinc: '8310-5',
    unit: 'Cel',
    displayName: 'Body temperature',
    label: 'Body temperature',
    abbreviation: 'Temp',
    min: 25,
    max: 45,
    decimals: 2,
    // `C` is coulomb in UCUM and SenML; for a body temperature it can only mean Celsius.
    units: {
      Cel: same,
      degC: same,
      '°C': same,
      C: same,
      '[degF]': fahrenheitToCelsius,
      degF: fahrenheitToCelsius,
      '°F': fahrenheitToCelsius,
      F: fahrenheitToCelsius
    }
  },
  bp_systolic: {
    loinc: '8480-6',
    unit: 'mm[Hg]',
    displayName: 'Systolic blood pressure',
    label: 'Systolic blood pressure',
    abbreviation: 'Sys',
    min: 40,
    max: 300,
    decimals: 1,
    units: {
      'mm[Hg]': same,
      mmHg: same,
      kPa: kilopascalToMillimetreMercury
    }
  },
  bp_diastolic: {
    loinc: '8462-4',
    unit: 'mm[Hg]',
    displayName: 'Diastolic blood pressure',
    label: 'Diastolic blood pressure',
    abbreviation: 'Dia',
    min: 20,
    max: 200,
    decimals: 1,
    units: {
      'mm[Hg]': same,
      mmHg: same,
      kPa: kilopascalToMillimetreMercury
    }
  },
  body_weight: {
    loinc: '29463-7',
    unit: 'kg',
    displayName: 'Body weight',
    label: 'Body weight',
    abbreviation: 'Wt',
    min: 0.5,
    max: 500,
    decimals: 3,
    units: {
      kg: same,
      g: { scale: 0.001 },
      '[lb_av]': poundToKilogram,
      lb: poundToKilogram,
      lbs: poundToKilogram
    }
  },
  body_height: {
    loinc: '8302-2',
    unit: 'cm',
    displayName: 'Body height',
    label: 'Body height',
    abbreviation: 'Ht',
    min: 20,
    max: 275,
    decimals: 1,
    units: {
      cm: same,
      m: { scale: 100 },
      mm: { scale: 0.1 },
      '[in_i]': inchToCentimetre,
      in: inchToCentimetre
    }
  },
  bmi: {
    loinc: '39156-5',
    unit: 'kg/m2',
    displayName: 'Body mass index',
    label: 'Body mass index',
    abbreviation: 'BMI',
    min: 5,
    max: 150,
    decimals: 1,
    units: {
      'kg/m2': same,
      'kg/m^2': same
    }
  },
  glucose: {
    loinc: '2339-0',
    unit: 'mg/dL',
    displayName: 'Blood glucose',
    label: 'Glucose',
    abbreviation: 'Glu',
    min: 10,
    max: 1500,
    decimals: 1,
    units: {
      'mg/dL': same,
      'mg/dl': same,
      // 18.0182 mg/dL per mmol/L is the commonly published factor (glucose ≈ 180.2 g/mol);
      // changing it changes stored values, so treat it as fixed.
      'mmol/L': { scale: 18.0182 },
      'mmol/l': { scale: 18.0182 }
    }
  },
  // NEWS2 (RCP 2017) inputs and result. No LOINC code found that fits each exactly (NHS
  // England's FHIR NEWS2 profile codes them in SNOMED CT), so these are local codes under
  // `vigil-`: SenML devices can still name them, and an export must map them.
  o2_supplemental: {
    loinc: 'vigil-o2-supplemental',
    unit: '1',
    displayName: 'Supplemental oxygen (0 air, 1 oxygen)',
    label: 'Supplemental oxygen',
    abbreviation: 'O₂',
    min: 0,
    max: 1,
    decimals: 0,
    units: { '1': same, '{boolean}': same }
  },
  consciousness: {
    loinc: 'vigil-acvpu',
    // ACVPU coded in order of severity: A(lert)=0, new C(onfusion)=1, V(oice)=2, P(ain)=3, U(nresponsive)=4.
    unit: '1',
    displayName: 'Level of consciousness (ACVPU: A=0 C=1 V=2 P=3 U=4)',
    label: 'Consciousness (ACVPU)',
    abbreviation: 'ACVPU',
    min: 0,
    max: 4,
    decimals: 0,
    units: { '1': same, '{ACVPU}': same }
  },
  news2_score: {
    loinc: 'vigil-news2',
    // Written by the alert engine (device id 00000000-0000-0000-0000-000000000000), only for complete scores.
    unit: '{score}',
    displayName: 'NEWS2 aggregate score',
    label: 'NEWS2 score',
    abbreviation: 'NEWS2',
    derived: true,
    min: 0,
    max: 20,
    decimals: 0,
    units: { '{score}': same, '1': same }
  }
} as const satisfies Record<string, VitalDefinition>

export type MetricName = keyof typeof vitalsCatalogue

export interface MetricEntry extends VitalDefinition {
  readonly name: MetricName
}

/** A catalogue row flattened for an API response or a README table. */
export interface MetricRow {
  metric: MetricName
  loinc: string
  unit: string
  displayName: string
  min: number
  max: number
  acceptedUnits: string[]
}

// Maps, not object lookups: a wire string such as `__proto__` or `constructor` must never
// resolve to something inherited.
const metricsByName = new Map<string, MetricEntry>()
const metricsByLoinc = new Map<string, MetricEntry>()
for (const name of Object.keys(vitalsCatalogue) as MetricName[]) {
  const definition: VitalDefinition = vitalsCatalogue[name]
  const entry: MetricEntry = Object.freeze({ name, ...definition })
  metricsByName.set(name, entry)
  metricsByLoinc.set(definition.loinc, entry)
  for (const alias of definition.loincAliases ?? []) metricsByLoinc.set(alias, entry)
}

export function lookupMetric (name: string): MetricEntry | undefined {
  return metricsByName.get(name)
}

export function lookupMetricByLoinc (code: string): MetricEntry | undefined {
  return metricsByLoinc.get(code)
}

// How a screen writes a UCUM unit: `Cel` is °C, and counts and scores need no unit at all.
const UNIT_SYMBOLS: Readonly<Record<string, string>> = { Cel: '°C', 'mm[Hg]': 'mmHg', '1': '', '{score}': '', '[in_i]': 'in', '[lb_av]': 'lb' }

/** The catalogue as screens label it (the web app's one source of metric names). */
export function metricLabels (): Array<{ metric: MetricName, label: string, abbreviation: string, unit: string, unitSymbol: string }> {
  return [...metricsByName.values()].map((entry) => ({
    metric: entry.name, label: entry.label, abbreviation: entry.abbreviation, unit: entry.unit, unitSymbol: UNIT_SYMBOLS[entry.unit] ?? entry.unit
  }))
}

export function listMetrics (): MetricRow[] {
  return [...metricsByName.values()].map((entry) => ({
    metric: entry.name,
    loinc: entry.loinc,
    unit: entry.unit,
    displayName: entry.displayName,
    min: entry.min,
    max: entry.max,
    acceptedUnits: Object.keys(entry.units)
  }))
}

export interface NormalizedValue {
  value: number
  unit: string
}

/**
 * Converts `value` from `unit` to the metric's canonical unit and checks the plausible range.
 * Converted values are rounded to the metric's `decimals`, so one device value always
 * yields one stored value; values already in an identity unit are kept as sent.
 */
export function normalizeValue (metric: string, value: number, unit: string): NormalizedValue {
  const entry = lookupMetric(metric)
  if (entry === undefined) {
    throw new PayloadRejection('unknown_metric', `unknown metric ${quote(metric)}`)
  }
  // A device sending a score Vigil computes could fake a patient's early-warning score.
  if (entry.derived === true) {
    throw new PayloadRejection('unknown_metric', `${entry.name} is computed by Vigil, not sent by devices`)
  }
  if (!Object.hasOwn(entry.units, unit)) {
    throw new PayloadRejection('unit_unsupported',
      `unit ${quote(unit)} is not accepted for ${entry.name}; accepted: ${Object.keys(entry.units).join(', ')}`)
  }
  const conversion = entry.units[unit] as UnitConversion
  const offset = conversion.offset ?? 0
  const converted = conversion.scale === 1 && offset === 0
    ? value
    : roundTo((value + offset) * conversion.scale, entry.decimals)
  // Range messages leave out the value: rejections are logged next to the device id.
  if (!Number.isFinite(converted)) {
    throw new PayloadRejection('value_out_of_range', `${entry.name} value is not a finite number`)
  }
  if (converted < entry.min || converted > entry.max) {
    throw new PayloadRejection('value_out_of_range',
      `${entry.name} outside the plausible range ${entry.min}–${entry.max} ${entry.unit}`)
  }
  return { value: converted, unit: entry.unit }
}

function roundTo (value: number, decimals: number): number {
  const factor = 10 ** decimals
  // toPrecision first drops binary noise (98.6 °F → 36.99999999999999) so halves round up.
  return Math.round(Number((value * factor).toPrecision(12))) / factor
}

function quote (text: string): string {
  return JSON.stringify(text.length > 64 ? `${text.slice(0, 64)}…` : text)
}
