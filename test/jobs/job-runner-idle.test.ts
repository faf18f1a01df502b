import { setTimeout as sleep } from 'node:timers/promises'
import pino from 'pino'
import t from 'tap'
import { createJobQueue, type JobQueue } from '../../jobs/job-queue.ts'
import { startJobRunner } from '../../jobs/job-runner.ts'
import { openTestDatabase } from '../helpers/postgres.ts'
import { waitFor } from '../helpers/wait.ts'

// Issue 18 (idle polling): on the embedded default every job is enqueued in the process that
// runs it, so an idle runner need not query the database every second. It sleeps until the
// next job falls due (a retry's delay, a lease running out), and an enqueue wakes it at once.

const log = pino({ level: 'silent' })
const db = await openTestDatabase(t, { poolSize: 4 })

/** The queue, counting the runner's looks for due work. */
function countingQueue (queue: JobQueue): { queue: JobQueue, looks: () => number } {
  let looks = 0
  const counted: JobQueue = {
    ...queue,
    dueWork: async (types) => { looks++; return await queue.dueWork(types) }
  }
  return { queue: counted, looks: () => looks }
}

t.test('dueWork: what is due now, and when the next job falls due', async (t) => {
  const queue = createJobQueue({ pool: db.pool, retryDelay: () => 60_000, leaseMs: 30_000 })
  const [waiting, running, none] = ['idle-a', 'idle-b', 'idle-c']
  t.same(await queue.dueWork([none]), { due: new Set(), nextAt: null }, 'nothing queued or running: no time')
  await queue.enqueue({ type: waiting })
  const [failing] = await queue.claim({ type: waiting, max: 1, typeLimit: 1, runnerId: 'r' })
  const before = Date.now()
  await queue.fail(failing!, 'try again')
  const retry = await queue.dueWork([waiting])
  t.same([...retry.due], [], 'a retry waiting out its delay is not due')
  t.ok(retry.nextAt !== null && Math.abs(retry.nextAt.getTime() - (before + 60_000)) < 5_000, 'it falls due when the delay ends')
  await queue.enqueue({ type: running })
  await queue.claim({ type: running, max: 1, typeLimit: 1, runnerId: 'r' })
  const lease = await queue.dueWork([running])
  t.ok(lease.nextAt !== null && lease.nextAt.getTime() > Date.now() + 20_000, 'a live lease: when it runs out')
  const both = await queue.dueWork([waiting, running, none])
  t.same(both.nextAt, lease.nextAt, 'the earliest of the types')
  await queue.enqueue({ type: none })
  t.same([...(await queue.dueWork([waiting, running, none])).due], [none], 'a queued job is due now')
})

t.test('an idle runner sleeps; an enqueue wakes it at once, a retry when its delay ends', async (t) => {
  const type = 'idle-runner'
  const { queue, looks } = countingQueue(createJobQueue({ pool: db.pool, retryDelay: () => 700 }))
  const attempts: number[] = []
  const runner = startJobRunner({
    queue,
    workers: 1,
    pollIntervalMs: 100,
    idlePollIntervalMs: 60_000,
    log,
    handlers: {
      [type]: {
        async run (job) {
          attempts.push(job.attempts)
          if (job.attempts === 1) throw new Error('try again')
          return { result: { ok: true } }
        }
      }
    }
  })
  t.teardown(async () => await runner.close())

  await sleep(1500)
  t.ok(looks() <= 2, `idle for 1.5 s: ${looks()} looks (every 100 ms would be 15)`)

  const job = await queue.enqueue({ type })
  t.ok(await waitFor('the enqueued job to run', async () => attempts.length >= 1, 2000), 'an enqueue wakes the runner')
  t.ok(await waitFor('the retry to succeed', async () => (await queue.get(job.id))?.state === 'succeeded', 5000),
    'the retry runs when its 700 ms delay ends, not after the idle minute')
  t.same(attempts, [1, 2])

  const settled = looks()
  await sleep(1500)
  t.ok(looks() - settled <= 2, `idle again: ${looks() - settled} looks in 1.5 s`)
})
