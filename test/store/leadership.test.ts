import pg from 'pg'
import t from 'tap'
import { createLogger } from '../../observability/logger.ts'
import { LEADER_TASKS, startLeadership, type Leadership } from '../../store/leadership.ts'
import { createTestDatabase } from '../helpers/postgres.ts'
import { waitFor } from '../helpers/wait.ts'

// The advisory-lock leadership on its own, in one test process against the machine's Postgres:
// several contenders, one leader per task; a closed or broken session hands over. The same with
// real Vigil processes and SIGKILL: test/cluster/leadership.test.ts (resilience set).

const log = createLogger('silent')
const db = await createTestDatabase()
const admin = new pg.Pool({ connectionString: db.url, max: 1 })
const contenders: Leadership[] = []
async function contender (): Promise<Leadership> {
  const l = await startLeadership({ databaseUrl: db.url, takeoverMs: 3000, log })
  contenders.push(l)
  return l
}
// One teardown, in this order: the contenders end their sessions before the database is dropped
// (DROP … WITH (FORCE) would otherwise terminate them under a check in flight).
t.teardown(async () => {
  for (const c of contenders) await c.close()
  await admin.end()
  await db.drop()
})

const leadersOf = (all: Leadership[], task: typeof LEADER_TASKS[number]): Leadership[] => all.filter((l) => l.isLeader(task))

t.test('embedded mode: the one process leads every task', async (t) => {
  const l = await startLeadership({ databaseUrl: null, takeoverMs: 3000, log })
  t.teardown(() => l.close())
  const seen: string[] = []
  l.onChange((task, leading) => { if (leading) seen.push(task) })
  t.same(seen, [...LEADER_TASKS])
  t.ok(LEADER_TASKS.every((task) => l.isLeader(task)))
})

t.test('three contenders: one leader per task; closing it hands over; a killed session steps down', async (t) => {
  const all = [await contender(), await contender(), await contender()]
  for (const task of LEADER_TASKS) t.equal(leadersOf(all, task).length, 1, `one leader for ${task}`)
  const first = leadersOf(all, 'escalation')[0]!
  t.equal(first, all[0], 'the first to start leads')

  // A clean stop (SIGTERM) ends the session: a survivor takes over at its next check (every takeover/3).
  await first.close()
  const survivors = all.filter((l) => l !== first)
  const second = await waitFor('a new leader', () => {
    const leading = leadersOf(survivors, 'escalation')
    return leading.length === 1 && LEADER_TASKS.every((task) => leadersOf(survivors, task).length === 1) ? leading[0] : undefined
  }, { timeoutMs: 5000 })

  // The server ends the leader's session (a network split, an admin, a failover): the leader
  // finds out at its next check and stops leading; exactly one leads again after that.
  const changes: Array<[string, boolean]> = []
  second.onChange((task, leading) => changes.push([task, leading]))
  changes.length = 0
  const { rows } = await admin.query<{ n: number }>(
    // This database's sessions only: pg_locks is server-wide, and other test processes (and other
    // files of this room's process) hold Vigil advisory locks in their own databases.
    "SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_locks WHERE locktype = 'advisory' AND classid = $1::int::oid AND granted AND pid <> pg_backend_pid() " +
    'AND database = (SELECT oid FROM pg_database WHERE datname = current_database())',
    [0x56674c64])
  t.ok(rows[0]!.n >= 1, 'the leader\'s session was terminated')
  await waitFor('the old leader stepping down', () => changes.some(([task, leading]) => task === 'escalation' && !leading), { timeoutMs: 5000 })
  await waitFor('exactly one leader again', () => LEADER_TASKS.every((task) => leadersOf(survivors, task).length === 1), { timeoutMs: 5000 })
})
