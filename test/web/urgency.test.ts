import t from 'tap'
import { compareUrgency, news2BandOf } from '../../web/src/urgency.ts'
import type { UrgencyFacts } from '../../web/src/urgency.ts'

const row = (name: string, facts: Partial<UrgencyFacts>): UrgencyFacts => ({ openSeverity: null, acknowledgedSeverity: null, news2Total: null, name, ...facts })

t.test('the worklist order', async (t) => {
  const rows = [
    row('e', {}),
    row('d', { acknowledgedSeverity: 'critical' }),
    row('c', { news2Total: 6 }),
    row('b', { openSeverity: 'high', news2Total: 2 }),
    row('a2', { openSeverity: 'critical', news2Total: 3 }),
    row('a1', { openSeverity: 'critical', news2Total: 8 }),
    row('B0', { news2Total: 6 })
  ]
  t.same([...rows].sort(compareUrgency).map((r) => r.name), ['a1', 'a2', 'b', 'B0', 'c', 'd', 'e'],
    'open severity, then NEWS2, then acknowledged severity, then name (any case)')
})

t.test('NEWS2 bands from the total (RCP 2017 chart 2)', async (t) => {
  for (const [total, band] of [[0, 'low'], [4, 'low'], [5, 'medium'], [6, 'medium'], [7, 'high'], [20, 'high']] as const) {
    t.equal(news2BandOf(total), band, String(total))
  }
})
