/**
 * Plausible vital signs for a simulated patient: each metric drifts as a bounded random walk
 * around the patient's own baseline, so charts look like a person rather than noise.
 */
export interface VitalsModel { next (): Array<{ metric: string, value: number, unit: string }> }

const walks = [
  { metric: 'heart_rate', unit: '/min', base: [62, 88], step: 2, min: 45, max: 130, digits: 0 },
  { metric: 'resp_rate', unit: '/min', base: [12, 18], step: 0.7, min: 8, max: 30, digits: 0 },
  { metric: 'spo2', unit: '%', base: [95, 99], step: 0.5, min: 88, max: 100, digits: 0 },
  { metric: 'body_temp', unit: 'Cel', base: [36.4, 37.1], step: 0.05, min: 35.5, max: 39.5, digits: 1 },
  { metric: 'bp_systolic', unit: 'mm[Hg]', base: [110, 140], step: 2, min: 90, max: 180, digits: 0 },
  { metric: 'bp_diastolic', unit: 'mm[Hg]', base: [68, 88], step: 1.5, min: 50, max: 110, digits: 0 }
] as const

export function createVitalsModel (random: () => number = Math.random): VitalsModel {
  const state = walks.map((w) => w.base[0] + random() * (w.base[1] - w.base[0]))
  return {
    next () {
      return walks.map((w, i) => {
        const pull = ((w.base[0] + w.base[1]) / 2 - state[i]!) * 0.05
        state[i] = Math.min(w.max, Math.max(w.min, state[i]! + pull + (random() * 2 - 1) * w.step))
        const f = 10 ** w.digits
        return { metric: w.metric, value: Math.round(state[i]! * f) / f, unit: w.unit }
      })
    }
  }
}
