import t from 'tap'
import { coalesce } from '../../store/database.ts'

t.test('coalesce: callers during a flush share the next one', async (t) => {
  let flushes = 0
  const gates: Array<() => void> = []
  const flush = coalesce(() => new Promise<void>((resolve) => { flushes++; gates.push(resolve) }))
  const first = flush()
  const waiting = Array.from({ length: 10 }, () => flush())
  t.equal(flushes, 1, 'one flush running')
  gates.shift()!()
  await first
  await new Promise((resolve) => setImmediate(resolve))
  t.equal(flushes, 2, 'the ten waiting callers got one more flush, started after the first ended')
  gates.shift()!()
  await Promise.all(waiting)
  t.equal(flushes, 2)
})

t.test('coalesce: a failed flush rejects its callers and the next call flushes again', async (t) => {
  let n = 0
  const flush = coalesce(async () => { if (n++ === 0) throw new Error('disk gone') })
  await t.rejects(flush(), /disk gone/)
  await flush()
  t.equal(n, 2)
})

// flushToDisk itself (does it reach the disk?) is tested across a power cut: power-cut-flush.test.ts.
