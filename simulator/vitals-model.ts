/**
 * Plausible vital signs for a simulated patient: each metric drifts as a bounded random walk
 * around the patient's own baseline, so charts look like a person rather than noise. A
 * deteriorating patient's baseline slides towards septic-shock-like values (tachycardia,
 * tachypnoea, falling SpO2, fever, falling systolic pressure) over about two minutes of
 * readings at one message per second, so the alert rules (and NEWS2) fire as they would on a ward.
 */
export interface VitalsModel { next (): Array<{ metric: string, value: number, unit: string }> }

const walks = [
  { metric: 'heart_rate', unit: '/min', base: [62, 88], sick: 142, step: 2, min: 40, max: 170, digits: 0 },
  { metric: 'resp_rate', unit: '/min', base: [12, 18], sick: 28, step: 0.7, min: 8, max: 40, digits: 0 },
  { metric: 'spo2', unit: '%', base: [95, 99], sick: 87, step: 0.5, min: 80, max: 100, digits: 0 },
  { metric: 'body_temp', unit: 'Cel', base: [36.4, 37.1], sick: 39.3, step: 0.05, min: 35.5, max: 40.5, digits: 1 },
  { metric: 'bp_systolic', unit: 'mm[Hg]', base: [110, 140], sick: 92, step: 2, min: 70, max: 200, digits: 0 },
  { metric: 'bp_diastolic', unit: 'mm[Hg]', base: [68, 88], sick: 55, step: 1.5, min: 40, max: 120, digits: 0 }
] as const

export interface VitalsModelOptions {
  /** Slide towards the sick values: a patient who should raise alerts. */
  deteriorating?: boolean
}

export function createVitalsModel (random: () => number = Math.random, options: VitalsModelOptions = {}): VitalsModel {
  const state = walks.map((w) => w.base[0] + random() * (w.base[1] - w.base[0]))
  const centre = walks.map((w) => (w.base[0] + w.base[1]) / 2)
  return {
    next () {
      return walks.map((w, i) => {
        // 2.5 % of the way to the sick value per reading: about 90 % there after 90 readings.
        if (options.deteriorating === true) centre[i] = centre[i]! + (w.sick - centre[i]!) * 0.025
        const pull = (centre[i]! - state[i]!) * 0.05
        state[i] = Math.min(w.max, Math.max(w.min, state[i]! + pull + (random() * 2 - 1) * w.step))
        const f = 10 ** w.digits
        return { metric: w.metric, value: Math.round(state[i]! * f) / f, unit: w.unit }
      })
    }
  }
}
