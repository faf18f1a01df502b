/**
 * National Early Warning Score 2 (Royal College of Physicians, 2017: "National Early Warning
 * Score (NEWS) 2. Standardising the assessment of acute-illness severity in the NHS").
 * Pure: the alert rules call scoreNews2 with each parameter's latest fresh value.
 */

/** A parameter band: values up to and including `upTo` score `score`; the last band has upTo Infinity. */
export interface Band { readonly upTo: number, readonly score: 0 | 1 | 2 | 3 }

// Chart 1 prints integer ranges (resp rate 9–11, 12–20 …); bands here are their upper bounds,
// so a non-integer value (a device's 20.5 /min average) falls in the band above the last
// integer it exceeds. Temperature is printed to one decimal (35.1–36.0) and handled the same way.
/** NEWS2 (RCP 2017) chart 1, one table per physiological parameter. */
export const news2Bands = {
  // Respiration rate (per minute): ≤8 3 · 9–11 1 · 12–20 0 · 21–24 2 · ≥25 3
  resp_rate: [{ upTo: 8, score: 3 }, { upTo: 11, score: 1 }, { upTo: 20, score: 0 }, { upTo: 24, score: 2 }, { upTo: Infinity, score: 3 }],
  // SpO2 scale 1 (%): ≤91 3 · 92–93 2 · 94–95 1 · ≥96 0
  spo2_scale1: [{ upTo: 91, score: 3 }, { upTo: 93, score: 2 }, { upTo: 95, score: 1 }, { upTo: Infinity, score: 0 }],
  // SpO2 scale 2 (%), for patients with hypercapnic respiratory failure, below 93 and
  // on air at any value: ≤83 3 · 84–85 2 · 86–87 1 · 88–92 0 · ≥93 on air 0
  spo2_scale2_air: [{ upTo: 83, score: 3 }, { upTo: 85, score: 2 }, { upTo: 87, score: 1 }, { upTo: Infinity, score: 0 }],
  // SpO2 scale 2 on oxygen: … 88–92 0 · 93–94 1 · 95–96 2 · ≥97 3
  spo2_scale2_oxygen: [
    { upTo: 83, score: 3 }, { upTo: 85, score: 2 }, { upTo: 87, score: 1 }, { upTo: 92, score: 0 },
    { upTo: 94, score: 1 }, { upTo: 96, score: 2 }, { upTo: Infinity, score: 3 }
  ],
  // Air or oxygen: air 0 · oxygen 2 (o2_supplemental 0 or 1)
  o2_supplemental: [{ upTo: 0, score: 0 }, { upTo: Infinity, score: 2 }],
  // Systolic blood pressure (mmHg): ≤90 3 · 91–100 2 · 101–110 1 · 111–219 0 · ≥220 3
  bp_systolic: [{ upTo: 90, score: 3 }, { upTo: 100, score: 2 }, { upTo: 110, score: 1 }, { upTo: 219, score: 0 }, { upTo: Infinity, score: 3 }],
  // Pulse (per minute): ≤40 3 · 41–50 1 · 51–90 0 · 91–110 1 · 111–130 2 · ≥131 3
  heart_rate: [
    { upTo: 40, score: 3 }, { upTo: 50, score: 1 }, { upTo: 90, score: 0 }, { upTo: 110, score: 1 },
    { upTo: 130, score: 2 }, { upTo: Infinity, score: 3 }
  ],
  // Consciousness (ACVPU coded A=0, C=1, V=2, P=3, U=4): Alert 0 · new Confusion, Voice, Pain, Unresponsive 3
  consciousness: [{ upTo: 0, score: 0 }, { upTo: Infinity, score: 3 }],
  // Temperature (°C): ≤35.0 3 · 35.1–36.0 1 · 36.1–38.0 0 · 38.1–39.0 1 · ≥39.1 2
  body_temp: [{ upTo: 35, score: 3 }, { upTo: 36, score: 1 }, { upTo: 38, score: 0 }, { upTo: 39, score: 1 }, { upTo: Infinity, score: 2 }]
} as const satisfies Record<string, readonly Band[]>

/** The seven NEWS2 parameters, by the vitals-catalogue metric that carries each. */
export const news2Parameters = ['resp_rate', 'spo2', 'o2_supplemental', 'bp_systolic', 'heart_rate', 'consciousness', 'body_temp'] as const
export type News2Parameter = typeof news2Parameters[number]

/**
 * NEWS2 (RCP 2017) chart 2 "NEWS thresholds and triggers": aggregate 0–4 low; a score of 3 in
 * any single parameter ("red score") low–medium; aggregate 5–6 medium; 7 or more high.
 * The higher of the aggregate band and the red-score band applies.
 */
export type News2Band = 'low' | 'low_medium' | 'medium' | 'high'
export const news2BandOrder: readonly News2Band[] = ['low', 'low_medium', 'medium', 'high']

export type Spo2Scale = 1 | 2

export interface News2Result {
  total: number
  /** Sub-score per parameter that had a value. */
  subScores: Partial<Record<News2Parameter, number>>
  /** Parameters with no fresh value: the total is then a lower bound, not a NEWS2 score. */
  missing: News2Parameter[]
  complete: boolean
  /** Parameters scoring 3 (a "red score"). */
  redScores: News2Parameter[]
  band: News2Band
  spo2Scale: Spo2Scale
}

export function bandScore (bands: readonly Band[], value: number): number {
  for (const band of bands) if (value <= band.upTo) return band.score
  return bands[bands.length - 1]!.score
}

/**
 * Scores the values given (each parameter's latest fresh value; absent ones are listed in
 * `missing`). An incomplete result's total and band are lower bounds: a missing parameter can
 * only add points, so alerting on them is safe, but they must not be shown as the patient's NEWS2.
 * On scale 2 with oxygen status unknown, SpO2 is scored as on air (the lower score) and
 * o2_supplemental is listed as missing.
 */
export function scoreNews2 (values: Partial<Record<News2Parameter, number>>, spo2Scale: Spo2Scale = 1): News2Result {
  const subScores: Partial<Record<News2Parameter, number>> = {}
  const missing: News2Parameter[] = []
  for (const parameter of news2Parameters) {
    const value = values[parameter]
    if (value === undefined || !Number.isFinite(value)) {
      missing.push(parameter)
      continue
    }
    subScores[parameter] = bandScore(bandsFor(parameter, spo2Scale, values.o2_supplemental), value)
  }
  let total = 0
  const redScores: News2Parameter[] = []
  for (const parameter of news2Parameters) {
    const score = subScores[parameter]
    if (score === undefined) continue
    total += score
    if (score === 3) redScores.push(parameter)
  }
  return { total, subScores, missing, complete: missing.length === 0, redScores, band: news2Band(total, redScores.length > 0), spo2Scale }
}

/** NEWS2 (RCP 2017) chart 2. */
export function news2Band (total: number, anyRedScore: boolean): News2Band {
  if (total >= 7) return 'high'
  if (total >= 5) return 'medium'
  if (anyRedScore) return 'low_medium'
  return 'low'
}

function bandsFor (parameter: News2Parameter, scale: Spo2Scale, oxygen: number | undefined): readonly Band[] {
  if (parameter !== 'spo2') return news2Bands[parameter]
  if (scale === 1) return news2Bands.spo2_scale1
  return oxygen !== undefined && oxygen > 0 ? news2Bands.spo2_scale2_oxygen : news2Bands.spo2_scale2_air
}
