import t from 'tap'
import { news2Band, scoreNews2 } from '../../../alerts/engine/news2.ts'
import type { News2Parameter } from '../../../alerts/engine/news2.ts'

// NEWS2 (RCP 2017) chart 1: every band edge of every parameter, value → sub-score.
const edges: Record<Exclude<News2Parameter, 'spo2'>, Array<[number, number]>> = {
  resp_rate: [[2, 3], [8, 3], [9, 1], [11, 1], [12, 0], [20, 0], [21, 2], [24, 2], [25, 3], [60, 3]],
  o2_supplemental: [[0, 0], [1, 2]],
  bp_systolic: [[60, 3], [90, 3], [91, 2], [100, 2], [101, 1], [110, 1], [111, 0], [219, 0], [220, 3], [260, 3]],
  heart_rate: [[30, 3], [40, 3], [41, 1], [50, 1], [51, 0], [90, 0], [91, 1], [110, 1], [111, 2], [130, 2], [131, 3], [180, 3]],
  consciousness: [[0, 0], [1, 3], [2, 3], [3, 3], [4, 3]],
  body_temp: [[34, 3], [35, 3], [35.1, 1], [36, 1], [36.1, 0], [38, 0], [38.1, 1], [39, 1], [39.1, 2], [41, 2]]
}
const spo2Scale1: Array<[number, number]> = [[80, 3], [91, 3], [92, 2], [93, 2], [94, 1], [95, 1], [96, 0], [100, 0]]
// Scale 2: [value, on air, on oxygen]
const spo2Scale2: Array<[number, number, number]> = [
  [80, 3, 3], [83, 3, 3], [84, 2, 2], [85, 2, 2], [86, 1, 1], [87, 1, 1], [88, 0, 0], [92, 0, 0],
  [93, 0, 1], [94, 0, 1], [95, 0, 2], [96, 0, 2], [97, 0, 3], [100, 0, 3]
]

// A patient scoring 0 everywhere; each case changes one parameter.
const normal: Record<News2Parameter, number> = { resp_rate: 16, spo2: 97, o2_supplemental: 0, bp_systolic: 120, heart_rate: 70, consciousness: 0, body_temp: 37 }

t.test('chart 1: every band edge of every parameter', async (t) => {
  for (const [parameter, cases] of Object.entries(edges) as Array<[News2Parameter, Array<[number, number]>]>) {
    for (const [value, expected] of cases) {
      const result = scoreNews2({ ...normal, [parameter]: value })
      // Supplemental oxygen on scale 1 does not change the SpO2 score.
      t.equal(result.subScores[parameter], expected, `${parameter} ${value} → ${expected}`)
      t.equal(result.total, expected, `${parameter} ${value}: total`)
    }
  }
})

t.test('SpO2 scale 1, on air and on oxygen', async (t) => {
  for (const [value, expected] of spo2Scale1) {
    t.equal(scoreNews2({ ...normal, spo2: value }).subScores.spo2, expected, `scale 1 air ${value} → ${expected}`)
    const onOxygen = scoreNews2({ ...normal, spo2: value, o2_supplemental: 1 })
    t.equal(onOxygen.subScores.spo2, expected, `scale 1 oxygen ${value} → ${expected}`)
    t.equal(onOxygen.total, expected + 2, `scale 1 oxygen ${value}: +2 for oxygen`)
  }
})

t.test('SpO2 scale 2 (hypercapnic respiratory failure)', async (t) => {
  for (const [value, air, oxygen] of spo2Scale2) {
    t.equal(scoreNews2({ ...normal, spo2: value, o2_supplemental: 0 }, 2).subScores.spo2, air, `scale 2 air ${value} → ${air}`)
    t.equal(scoreNews2({ ...normal, spo2: value, o2_supplemental: 1 }, 2).subScores.spo2, oxygen, `scale 2 oxygen ${value} → ${oxygen}`)
  }
  t.equal(scoreNews2({ ...normal, spo2: 89 }, 2).spo2Scale, 2)
})

t.test('chart 2: response bands', async (t) => {
  const cases: Array<[total: number, red: boolean, band: string]> = [
    [0, false, 'low'], [4, false, 'low'], [3, true, 'low_medium'], [4, true, 'low_medium'],
    [5, false, 'medium'], [6, false, 'medium'], [6, true, 'medium'], [7, false, 'high'], [7, true, 'high'], [20, true, 'high']
  ]
  for (const [total, red, band] of cases) t.equal(news2Band(total, red), band, `${total}${red ? ' with a red score' : ''} → ${band}`)

  t.equal(scoreNews2(normal).band, 'low')
  const red = scoreNews2({ ...normal, consciousness: 2 })
  t.same([red.total, red.band, red.redScores], [3, 'low_medium', ['consciousness']])
  const medium = scoreNews2({ ...normal, heart_rate: 115, resp_rate: 22, body_temp: 38.5 })
  t.same([medium.total, medium.band], [5, 'medium'])
  const high = scoreNews2({ ...normal, heart_rate: 135, resp_rate: 26, spo2: 90, o2_supplemental: 1 })
  t.same([high.total, high.band, high.redScores], [11, 'high', ['resp_rate', 'spo2', 'heart_rate']])
  t.ok(high.complete)
})

t.test('missing parameters are named and the score is not complete', async (t) => {
  const partial = scoreNews2({ heart_rate: 135, spo2: 97, resp_rate: 16 })
  t.equal(partial.complete, false)
  t.same(partial.missing, ['o2_supplemental', 'bp_systolic', 'consciousness', 'body_temp'])
  t.equal(partial.total, 3, 'a lower bound from the parameters present')
  t.equal(partial.band, 'low_medium')
  t.same(Object.keys(partial.subScores).sort(), ['heart_rate', 'resp_rate', 'spo2'])

  const none = scoreNews2({})
  t.equal(none.missing.length, 7)
  t.same([none.total, none.complete], [0, false])

  // A non-finite value counts as missing, not as a score.
  t.same(scoreNews2({ ...normal, heart_rate: Number.NaN }).missing, ['heart_rate'])

  // Scale 2 with oxygen unknown: SpO2 scored as on air (the lower score), oxygen listed missing.
  const { o2_supplemental: _o2, ...noOxygen } = normal
  const scale2 = scoreNews2({ ...noOxygen, spo2: 97 }, 2)
  t.equal(scale2.subScores.spo2, 0)
  t.same(scale2.missing, ['o2_supplemental'])
})
