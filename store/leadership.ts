import pg from 'pg'
import type { Logger } from 'pino'

/**
 * The cluster-wide singletons: work that must run in exactly one of several Vigil processes
 * sharing one Postgres database (docs/operations.md#running-several-processes).
 */
export const LEADER_TASKS = ['escalation', 'no-data', 'housekeeping', 'reencryption'] as const
export type LeaderTask = typeof LEADER_TASKS[number]

/** The leadership connection's application_name: one session per live Vigil process on the database. */
const APPLICATION_NAME = 'vigil-leadership'

/** First key of every Vigil advisory lock (`pg_try_advisory_lock(int, int)`): "VgLd". */
export const LEADER_LOCK_SPACE = 0x56674c64

export interface Leadership {
  /** Whether this process runs `task` now. */
  isLeader (task: LeaderTask): boolean
  /** Called with every change (and once per task at start with its first state). */
  onChange (listener: (task: LeaderTask, leading: boolean) => void): void
  close (): Promise<void>
}

export interface LeadershipOptions {
  /** The shared database's URL; null for the embedded PGlite, whose single process always leads. */
  databaseUrl: string | null
  /**
   * The longest a dead leader's tasks stay unrun: locks are tried every third of it, and a
   * leader that could not confirm its connection for half of it steps down, so two processes
   * never both run a task after a network split (the server drops the old session's locks
   * within the takeover, through the TCP keepalives set below).
   */
  takeoverMs: number
  log: Logger
  tasks?: readonly LeaderTask[]
  /**
   * This process takes itself for the only Vigil on its database (no REDIS_URL: it keeps alert
   * rule state and settings in memory, caches assignments without invalidation). Each check then
   * also counts the other processes' leadership sessions and logs an error when one appears (and
   * a line when none is left): not a refusal, since a single instance's rolling update runs the
   * old and the new process for a moment. A session of a machine that vanished counts until the
   * server drops it (the keepalives below).
   */
  expectAlone?: boolean
}

/**
 * Leadership through Postgres session-level advisory locks, one per task, held on a dedicated
 * connection (not the pool: a pooled connection is shared, and a session lock belongs to the
 * session). When the process dies its connection closes and Postgres releases the locks at
 * once; another process's next check (every takeoverMs / 3) takes them. When the connection
 * breaks while the process lives, it stops leading before trying again on a new connection.
 */
export async function startLeadership (options: LeadershipOptions): Promise<Leadership> {
  const tasks = options.tasks ?? LEADER_TASKS
  const log = options.log.child({ component: 'leadership' })
  const leading = new Map<LeaderTask, boolean>(tasks.map((t) => [t, false]))
  const listeners: Array<(task: LeaderTask, leading: boolean) => void> = []
  const set = (task: LeaderTask, value: boolean): void => {
    if (leading.get(task) === value) return
    leading.set(task, value)
    log.info({ task, leading: value }, value ? 'leading a cluster task' : 'no longer leading a cluster task')
    for (const l of listeners) l(task, value)
  }

  if (options.databaseUrl === null) {
    // Embedded mode is one process by construction (the data directory lock): it always leads.
    for (const t of tasks) leading.set(t, true)
    return {
      isLeader: (task) => leading.get(task) === true,
      onChange (listener) {
        listeners.push(listener)
        for (const t of tasks) listener(t, true)
      },
      close: async () => {}
    }
  }

  const databaseUrl = options.databaseUrl
  const checkEveryMs = Math.max(250, Math.floor(options.takeoverMs / 3))
  // A check that gets no answer within this is a lost connection: leadership ends with it.
  const answerWithinMs = Math.max(500, Math.floor(options.takeoverMs / 2))
  const keepaliveSeconds = Math.max(1, Math.floor(options.takeoverMs / 6000))
  let client: pg.Client | null = null
  let lastConfirmed = 0
  let closed = false
  let timer: NodeJS.Timeout | null = null
  let running: Promise<void> | null = null
  let othersSeen = false
  const noteOthers = (others: number): void => {
    if (others > 0 && !othersSeen) {
      log.error({ processCount: others + 1 }, 'another Vigil process uses this database and REDIS_URL is unset: several processes must all run with REDIS_URL (docs/operations.md#running-several-processes); without it each evaluates alerts from its own copy of the rule state and settings')
    } else if (others === 0 && othersSeen) {
      log.info('no other Vigil process uses this database now')
    }
    othersSeen = others > 0
  }

  const dropConnection = (reason: string, err?: unknown): void => {
    const held = tasks.filter((t) => leading.get(t) === true)
    if (held.length > 0) log.warn({ reason, tasks: held, err: err instanceof Error ? err.message : undefined }, 'leadership connection lost: stepping down')
    for (const t of tasks) set(t, false)
    const old = client
    client = null
    old?.end().catch(() => {})
  }

  async function connect (): Promise<pg.Client> {
    const c = new pg.Client({
      connectionString: databaseUrl,
      application_name: APPLICATION_NAME,
      keepAlive: true,
      keepAliveInitialDelayMillis: keepaliveSeconds * 1000,
      connectionTimeoutMillis: answerWithinMs,
      query_timeout: answerWithinMs,
      // The server side ends a session whose process vanished without closing its socket
      // (machine lost, network split) within about the takeover time, releasing its locks.
      options: `-c tcp_keepalives_idle=${keepaliveSeconds} -c tcp_keepalives_interval=${keepaliveSeconds} -c tcp_keepalives_count=2 -c idle_in_transaction_session_timeout=0`
    })
    c.on('error', (err) => { if (client === c) dropConnection('connection error', err) })
    c.on('end', () => { if (client === c && !closed) dropConnection('connection ended') })
    await c.connect()
    return c
  }

  async function check (): Promise<void> {
    try {
      if (client === null) {
        client = await connect()
        lastConfirmed = Date.now()
      }
      const c = client
      const wanted = tasks.filter((t) => leading.get(t) !== true)
      // One round trip: try the locks not held, and confirm the ones held are still this session's
      // (and, expectAlone, count the other processes' sessions).
      const { rows } = await c.query<{ task: string, held: boolean, others: number | null }>(
        `SELECT t.task, CASE WHEN t.task = ANY($4::text[]) THEN pg_try_advisory_lock($1, t.n)
           ELSE EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.pid = pg_backend_pid()
                        AND l.classid = $1::int::oid AND l.objid = t.n::oid AND l.objsubid = 2 AND l.granted) END AS held,
           CASE WHEN $5::bool THEN (SELECT count(*)::int FROM pg_stat_activity WHERE datname = current_database()
                                      AND application_name = $6 AND pid <> pg_backend_pid()) END AS others
         FROM unnest($2::text[], $3::int[]) AS t(task, n)`,
        [LEADER_LOCK_SPACE, tasks, tasks.map((t) => LEADER_TASKS.indexOf(t) + 1), wanted, options.expectAlone === true, APPLICATION_NAME])
      if (client !== c || closed) return
      lastConfirmed = Date.now()
      for (const r of rows) set(r.task as LeaderTask, r.held)
      if (options.expectAlone === true && rows[0] !== undefined) noteOthers(rows[0].others ?? 0)
    } catch (err) {
      if (closed) return
      dropConnection('check failed', err)
    }
  }

  function tick (): void {
    if (closed) return
    // A check stuck longer than the answer deadline means the connection is gone.
    if (client !== null && lastConfirmed > 0 && Date.now() - lastConfirmed > answerWithinMs + checkEveryMs) dropConnection('no answer')
    running ??= check().finally(() => { running = null })
  }

  await check()
  timer = setInterval(tick, checkEveryMs)
  timer.unref()
  return {
    isLeader: (task) => leading.get(task) === true,
    onChange (listener) {
      listeners.push(listener)
      for (const t of tasks) listener(t, leading.get(t) === true)
    },
    async close () {
      closed = true
      if (timer !== null) clearInterval(timer)
      await running
      // Ending the session releases its locks: another process takes over at its next check.
      for (const t of tasks) set(t, false)
      const c = client
      client = null
      await c?.end().catch(() => {})
    }
  }
}
