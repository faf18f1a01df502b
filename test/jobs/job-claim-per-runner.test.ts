import pino from 'pino'
import t from 'tap'
import { createJobQueue } from '../../jobs/job-queue.ts'
import { startJobRunner } from '../../jobs/job-runner.ts'
import { openTestDatabase } from '../helpers/postgres.ts'
import { waitFor } from '../helpers/wait.ts'
import { manualDateClock } from '../helpers/job-clock.ts'

// Issue 16: several processes share one database, each running up to its own WORKER_THREADS
// jobs. A claim's type limit counts the jobs THIS runner holds (unexpired leases locked by it),
// so the cluster's capacity is the sum of the processes' (two processes with WORKER_THREADS=1
// run two transcriptions at once, not one).

const log = pino({ level: 'silent' })
const db = await openTestDatabase(t, { poolSize: 12 })

const manualClock = manualDateClock

let typeCounter = 0
const freshType = (): string => `per-runner-${++typeCounter}`

t.test('two runners ("processes") each claim up to their own limit, not a shared one', async (t) => {
  const queue = createJobQueue({ pool: db.pool })
  const type = freshType()
  for (let i = 0; i < 6; i++) await queue.enqueue({ type })
  const a = await queue.claim({ type, max: 1, typeLimit: 1, runnerId: 'process-a' })
  t.equal(a.length, 1, 'A claims its one')
  t.same(await queue.claim({ type, max: 1, typeLimit: 1, runnerId: 'process-a' }), [], 'A is at its own limit')
  const b = await queue.claim({ type, max: 1, typeLimit: 1, runnerId: 'process-b' })
  t.equal(b.length, 1, 'B claims its one while A holds A\'s limit')
  t.same(await queue.claim({ type, max: 1, typeLimit: 1, runnerId: 'process-b' }), [], 'B is at its own limit')
  t.not(a[0]?.id, b[0]?.id)

  // A bigger runner next to them takes its own limit's worth.
  t.equal((await queue.claim({ type, max: 5, typeLimit: 3, runnerId: 'process-c' })).length, 3)
  const { rows: [running] } = await db.pool.query("SELECT count(*)::int AS n FROM jobs WHERE type = $1 AND state = 'running'", [type])
  t.equal(running.n, 5, '1 + 1 + 3 running')

  // A's slot frees when its job ends: A claims again, B still cannot.
  t.equal(await queue.complete(a[0]!, { ok: true }), 'done')
  t.same(await queue.claim({ type, max: 1, typeLimit: 1, runnerId: 'process-b' }), [], 'B is still at its limit')
  t.equal((await queue.claim({ type, max: 1, typeLimit: 1, runnerId: 'process-a' })).length, 1, 'A\'s freed slot is A\'s')
})

t.test('concurrent claims by one runner never exceed its limit', async (t) => {
  const queue = createJobQueue({ pool: db.pool })
  const type = freshType()
  for (let i = 0; i < 20; i++) await queue.enqueue({ type })
  // A barrier: a SHARE lock on the table holds every claim at its first write, so the six claims
  // below are all under way at once when it lifts (without the claim's lock they would each
  // count nothing held and take three).
  const barrier = await db.pool.connect()
  await barrier.query('BEGIN')
  await barrier.query('LOCK TABLE jobs IN SHARE MODE')
  const pending = Promise.all(Array.from({ length: 6 }, async () =>
    await queue.claim({ type, max: 3, typeLimit: 3, runnerId: 'one' })))
  await waitFor('six claims to wait', async () => (await db.pool.query(
    "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")).rows[0].n === 6, 15_000)
  await barrier.query('COMMIT')
  barrier.release()
  const claims = await pending
  t.equal(claims.flat().length, 3, 'three in all, whichever claim got them')
  const other = await Promise.all(Array.from({ length: 6 }, async (_, r) =>
    await queue.claim({ type, max: 2, typeLimit: 2, runnerId: `other-${r}` })))
  t.equal(other.flat().length, 12, 'six other runners take two each meanwhile')
  t.equal(new Set([...claims.flat(), ...other.flat()].map((j) => j.id)).size, 15, 'no job claimed twice')
})

t.test('a runner\'s expired leases do not count against its limit', async (t) => {
  const clock = manualClock()
  const queue = createJobQueue({ pool: db.pool, now: clock.now, leaseMs: 10_000 })
  const type = freshType()
  await queue.enqueue({ type })
  const [first] = await queue.claim({ type, max: 1, typeLimit: 1, runnerId: 'a' })
  t.same(await queue.claim({ type, max: 1, typeLimit: 1, runnerId: 'a' }), [], 'held, unexpired: counts')
  clock.advance(10_001)
  const again = await queue.claim({ type, max: 1, typeLimit: 1, runnerId: 'a' })
  t.equal(again.length, 1, 'the lease ran out (the runner lost it): it no longer counts')
  t.equal(again[0]!.id, first!.id, 'the expired job itself, due again')
  t.equal(await queue.complete(first!, {}), 'lost', 'the expired claim cannot complete')
})

t.test('two runners with workers: 1 run two gated jobs at once', async (t) => {
  const queue = createJobQueue({ pool: db.pool })
  const type = freshType()
  for (let i = 0; i < 4; i++) await queue.enqueue({ type })
  const gates = new Map<string, { runner: string, release: () => void }>()
  let open = false
  const runners = ['a', 'b'].map((name) => startJobRunner({
    queue,
    workers: 1,
    concurrency: { [type]: 1 },
    pollIntervalMs: 50,
    log,
    runnerId: `runner-${name}`,
    handlers: {
      [type]: {
        async run (job) {
          if (!open) await new Promise<void>((resolve) => gates.set(job.id, { runner: name, release: resolve }))
          return { result: { by: name } }
        }
      }
    }
  }))
  t.teardown(async () => {
    open = true
    for (const g of gates.values()) g.release()
    await Promise.all(runners.map(async (r) => await r.close()))
  })
  await waitFor('both runners to hold a job', async () => gates.size === 2, 15_000)
  t.same([...gates.values()].map((g) => g.runner).sort(), ['a', 'b'], 'one in each runner')
  t.same(runners.map((r) => r.running()), [1, 1])
  open = true
  for (const g of gates.values()) g.release()
  await waitFor('all four jobs to succeed', async () =>
    (await db.pool.query("SELECT count(*)::int AS n FROM jobs WHERE type = $1 AND state = 'succeeded'", [type])).rows[0].n === 4, 30_000)
})
