import t from 'tap'
import { coalesce, trackFlushes } from '../../store/database.ts'

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

t.test('whenDurable: released by a flush that started after it, or by its own after maxWaitMs (again after a failure)', async (t) => {
  let flushes = 0
  let failNext = false
  const gates: Array<() => void> = []
  const tracked = trackFlushes(coalesce(() => new Promise<void>((resolve, reject) => {
    flushes++
    if (failNext) {
      failNext = false
      reject(new Error('disk gone'))
    } else gates.push(resolve)
  })), 200)
  t.teardown(() => tracked.stop())
  let released = false
  const running = tracked.flushToDisk()
  const durable = tracked.whenDurable().then(() => { released = true })
  const next = tracked.flushToDisk()
  gates.shift()!()
  await running
  await new Promise((resolve) => setImmediate(resolve))
  t.notOk(released, 'the flush running when it was asked does not release it')
  gates.shift()!()
  await next
  await durable
  t.equal(flushes, 2, 'the next caller\'s flush released it: none of its own')

  // Nobody else flushes: its own after maxWaitMs; that one fails, so another after maxWaitMs more.
  failNext = true
  const started = Date.now()
  const alone = tracked.whenDurable()
  await new Promise((resolve) => setTimeout(resolve, 300))
  t.equal(flushes, 3, 'one flush of its own, failed')
  await new Promise((resolve) => setTimeout(resolve, 200))
  t.equal(flushes, 4, 'tried again')
  gates.shift()!()
  await alone
  t.ok(Date.now() - started >= 400)

  tracked.stop()
  let after = false
  void tracked.whenDurable().then(() => { after = true })
  await new Promise((resolve) => setTimeout(resolve, 300))
  t.equal(flushes, 4, 'stopped: nothing more is flushed')
  t.notOk(after, 'and nothing released')
})

// flushToDisk itself (does it reach the disk?) is tested across a power cut: power-cut-flush.test.ts.
