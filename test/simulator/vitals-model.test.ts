import t from 'tap'
import { createVitalsModel } from '../../simulator/vitals-model.ts'

// A seeded generator: the model's walks are repeatable.
function seeded (seed: number): () => number {
  let x = seed
  return () => {
    x = (x * 1103515245 + 12345) % 2 ** 31
    return x / 2 ** 31
  }
}

t.test('a stable patient stays in plausible, normal ranges', async (t) => {
  const model = createVitalsModel(seeded(1))
  for (let i = 0; i < 600; i++) {
    const v = Object.fromEntries(model.next().map((r) => [r.metric, r.value]))
    if (v.heart_rate! > 120 || v.spo2! < 90) t.fail(`reading ${i} is abnormal: ${JSON.stringify(v)}`)
  }
  t.pass('600 readings, none alarming')
})

t.test('a deteriorating patient reaches alarming values within two minutes of readings', async (t) => {
  const model = createVitalsModel(seeded(2), { deteriorating: true })
  let last: Record<string, number> = {}
  for (let i = 0; i < 120; i++) last = Object.fromEntries(model.next().map((r) => [r.metric, r.value]))
  t.ok(last.heart_rate! > 125, `heart rate ${last.heart_rate}`)
  t.ok(last.spo2! < 91, `SpO2 ${last.spo2}`)
  t.ok(last.body_temp! > 38.5, `temperature ${last.body_temp}`)
})
