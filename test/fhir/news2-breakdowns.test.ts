import t from 'tap'
import { news2Parameters, scoreNews2, type News2Parameter } from '../../alerts/engine/news2.ts'
import { createNews2Breakdowns, news2Breakdown } from '../../fhir/resources.ts'
import type { StoredReading } from '../../readings/reading.ts'

// The bulk export's streaming NEWS2 breakdown (newest-first stream, bounded memory) must give
// every total exactly the components the search API computes from all of the patient's readings.

const patientId = '11111111-1111-4111-8111-111111111111'
const devices = ['aaaaaaaa-0000-4000-8000-000000000001', 'bbbbbbbb-0000-4000-8000-000000000002']
const derived = '00000000-0000-0000-0000-000000000000'
const values: Record<News2Parameter, () => number> = {
  resp_rate: () => 8 + Math.floor(rand() * 20),
  spo2: () => 88 + Math.floor(rand() * 12),
  o2_supplemental: () => (rand() < 0.2 ? 1 : 0),
  bp_systolic: () => 85 + Math.floor(rand() * 150),
  heart_rate: () => 40 + Math.floor(rand() * 100),
  consciousness: () => (rand() < 0.1 ? 1 : 0),
  body_temp: () => 35 + rand() * 4
}
let seed = 42
function rand (): number {
  seed = (seed * 1103515245 + 12345) % 2 ** 31
  return seed / 2 ** 31
}
const reading = (metric: string, ts: number, value: number, deviceId: string): StoredReading => ({ patientId, deviceId, metric, ts, value, unit: '1', seq: null })

for (const freshnessMs of [60_000, 900_000]) {
  t.test(`freshness ${freshnessMs} ms: equal to the search API's breakdown on 20 random histories`, async (t) => {
    for (let round = 0; round < 20; round++) {
      const all: StoredReading[] = []
      let ts = Date.UTC(2026, 2, 10)
      for (let i = 0; i < 400; i++) {
        ts += Math.floor(rand() * 90_000)
        const parameter = news2Parameters[Math.floor(rand() * news2Parameters.length)]!
        all.push(reading(parameter, ts, values[parameter](), devices[Math.floor(rand() * 2)]!))
        if (rand() < 0.15) {
          // A total at this instant from the latest inputs (what the engine stores), sometimes off by one (late readings).
          const latest: Partial<Record<News2Parameter, number>> = {}
          for (const r of [...all].sort((a, b) => a.ts - b.ts)) {
            if (r.ts <= ts && ts - r.ts <= freshnessMs && (news2Parameters as readonly string[]).includes(r.metric)) latest[r.metric as News2Parameter] = r.value
          }
          const result = scoreNews2(latest, 1)
          if (result.complete) all.push(reading('news2_score', ts, result.total + (rand() < 0.1 ? 1 : 0), derived))
        }
      }
      // The store's order: newest first, then device, then metric.
      const stream = [...all].sort((a, b) => b.ts - a.ts || a.deviceId.localeCompare(b.deviceId) || a.metric.localeCompare(b.metric))
      const streamed = new Map<StoredReading, unknown>()
      const breakdowns = createNews2Breakdowns(freshnessMs, 1)
      for (const r of stream) for (const [score, b] of breakdowns.push(r)) streamed.set(score, b)
      for (const [score, b] of breakdowns.flush()) streamed.set(score, b)
      const scores = all.filter((r) => r.metric === 'news2_score')
      t.equal(streamed.size, scores.length, `round ${round}: every total settled once`)
      for (const score of scores) {
        t.same(streamed.get(score), news2Breakdown(score, all, freshnessMs, 1), `round ${round}: total at ${score.ts}`)
      }
    }
  })
}

t.test('a total whose inputs share its instant, listed before it in the stream', async (t) => {
  const at = Date.UTC(2026, 2, 10, 8)
  const inputs = [
    reading('body_temp', at, 37, devices[0]!), reading('bp_systolic', at, 120, devices[0]!), reading('consciousness', at, 0, devices[0]!),
    reading('heart_rate', at, 70, devices[0]!), reading('o2_supplemental', at, 0, devices[0]!), reading('resp_rate', at, 16, devices[0]!), reading('spo2', at, 97, devices[0]!)
  ]
  const score = reading('news2_score', at, 0, derived)
  const breakdowns = createNews2Breakdowns(60_000, 1)
  // The derived device id sorts first: the total comes before its inputs here; put it last to test the other order too.
  const settled = [...[...inputs, score].flatMap((r) => breakdowns.push(r)), ...breakdowns.flush()]
  t.equal(settled.length, 1)
  t.ok(settled[0]![1] !== null, 'components found')
  t.same(settled[0]![1], news2Breakdown(score, inputs, 60_000, 1))
})
