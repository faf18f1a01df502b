import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import fs from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import v8 from 'node:v8'
import pg from 'pg'
import type { Logger } from 'pino'
import { makePrivate } from './data-dir-permissions.ts'
import { createFilesystemSync } from './filesystem-sync.ts'

export interface Database {
  readonly pool: pg.Pool
  /** `postgres` when DATABASE_URL points at a server, `pglite` for the embedded default. */
  readonly kind: 'postgres' | 'pglite'
  /** Connection string of the database; for the embedded server, whose one connection Vigil's pool holds, nothing else can connect while Vigil runs. */
  readonly url: string
  /**
   * Resolves once everything committed so far is on stable storage. A no-op for a Postgres
   * server (its commit already is). PGlite runs Postgres with fsync off and its file layer
   * has no fsync, so a commit there sits in the OS page cache until this runs.
   */
  flushToDisk (): Promise<void>
  /**
   * Resolves once everything committed before the call is on stable storage, riding on the next
   * flushToDisk another caller runs (PGlite: the spool's delivery runs one about twice a second
   * while readings arrive), or running one itself after 2 s without. At once for a
   * Postgres server. For what may wait: the alert engine's evaluation mark.
   */
  whenDurable (): Promise<void>
  close (): Promise<void>
}

export interface OpenDatabaseOptions {
  databaseUrl: string | null
  dataDir: string
  log: Logger
  /** Pool size against a real server. PGlite always gets one connection. */
  poolSize?: number
  /** How long a request waits for a new connection to a real server before it fails (ms, default 5000). */
  connectTimeoutMs?: number
}

const migrationsDir = path.join(path.dirname(fileURLToPath(import.meta.url)), 'migrations')

/**
 * Opens Postgres (DATABASE_URL) or starts the embedded PGlite, served over the wire with
 * pglite-socket so the rest of Vigil speaks plain `pg` either way, then applies migrations.
 */
export async function openDatabase (options: OpenDatabaseOptions): Promise<Database> {
  const log = options.log.child({ component: 'database' })
  if (options.databaseUrl !== null) {
    // A bounded connect wait: during an outage requests fail fast (503) instead of queueing.
    const pool = new pg.Pool({ connectionString: options.databaseUrl, max: options.poolSize ?? 10, connectionTimeoutMillis: options.connectTimeoutMs ?? 5000 })
    pool.on('error', (err) => log.error({ err }, 'idle database connection failed'))
    try {
      await migrate(pool, log)
    } catch (err) {
      await pool.end()
      throw err
    }
    return { pool, kind: 'postgres', url: options.databaseUrl, flushToDisk: async () => {}, whenDurable: async () => {}, close: () => pool.end() }
  }
  return await openEmbedded(options.dataDir, log)
}

async function openEmbedded (dataDir: string, log: Logger): Promise<Database> {
  const dir = path.join(dataDir, 'pglite')
  await fs.mkdir(dataDir, { recursive: true, mode: 0o700 })
  if (!existsSync(path.join(dir, 'PG_VERSION'))) {
    // An empty directory is what a first start cut short leaves (replaced below); anything else
    // is not a database Vigil made, and is left alone.
    const entries = await fs.readdir(dir).catch((err: NodeJS.ErrnoException) => { if (err.code === 'ENOENT') return []; throw err })
    if (entries.length > 0) throw new Error(`${dir} holds files but no database (no PG_VERSION): not a database Vigil made; move it aside and start again`)
    await createInChildProcess(dir, log)
  }
  return await openPglite(dir, log)
}

/**
 * Opens the PGlite database in `dir` (initdb first when the directory is empty), serves it on a
 * loopback socket for `pg`, and applies the migrations.
 */
async function openPglite (dir: string, log: Logger): Promise<Database> {
  // PGlite's WASM (9 MB) compiled by Liftoff only, never tiered up by TurboFan: the optimised
  // code of the functions migrations and queries make hot held ~80 MB resident, and measured
  // here it bought nothing (CPU per insert+aggregate round 3,190-3,344 ms default vs 2,754-3,010
  // ms Liftoff-only; docs/performance.md "Memory"). Process-wide, but PGlite is Vigil's only WASM.
  v8.setFlagsFromString(WASM_FLAGS)
  const { PGlite } = await import('@electric-sql/pglite')
  const { PGLiteSocketServer } = await import('@electric-sql/pglite-socket')
  await fs.mkdir(dir, { recursive: true, mode: 0o700 })
  const db = await PGlite.create({ dataDir: dir, startParams: [...PGlite.defaultStartParams, ...PGLITE_SETTINGS] })
  // PGlite writes a new database's files 0666 whatever the umask: private before any PHI is written.
  await makePrivate(dir)
  // PGlite has one backend: pglite-socket multiplexes connections at the query level, so two
  // connections' transactions would interleave. One connection, one pool slot.
  const server = new PGLiteSocketServer({ db, host: '127.0.0.1', port: 0, maxConnections: 1 })
  try {
    await server.start()
  } catch (err) {
    await db.close()
    throw err
  }
  const url = `postgres://postgres@${server.getServerConn()}/postgres?sslmode=disable`
  // The hot statements are prepared by name (parsed and planned once: a third of a small upsert's
  // CPU in PGlite's WASM). PGlite has one backend session whatever connects to it, so they outlive
  // the connection that prepared them, which pg forgets: a new connection (after a failed one)
  // starts from none, or pg would prepare a name PGlite still holds (42P05) on every retry. The
  // one connection is never closed for idleness: the server takes one at a time and refuses a
  // new one until it has seen the old one close.
  const pool = new pg.Pool({
    connectionString: url,
    max: 1,
    idleTimeoutMillis: 0,
    allowExitOnIdle: true,
    onConnect: async (client) => { await client.query('DEALLOCATE ALL') }
  })
  pool.on('error', (err) => log.error({ err }, 'idle database connection failed'))
  const fsync = createFilesystemSync(dir)
  const flushes = trackFlushes(coalesce(() => fsync.sync()), 2000)
  const close = async (): Promise<void> => {
    flushes.stop()
    await pool.end()
    await server.stop()
    await db.close()
    // Closing wrote a shutdown checkpoint into the page cache: on disk before the next start reads it.
    await fsync.sync().catch((err: Error) => log.error({ err }, 'syncing the embedded database after closing it failed'))
    await fsync.close()
    // Files PGlite made during the run follow the umask; this covers a caller without one.
    await makePrivate(dir)
  }
  try {
    await migrate(pool, log)
  } catch (err) {
    await close()
    throw err
  }
  log.info({ dataDir: dir }, 'embedded PGlite started')
  return { pool, kind: 'pglite', url, flushToDisk: flushes.flushToDisk, whenDurable: flushes.whenDurable, close }
}

/**
 * Memory settings of the embedded server (docs/performance.md "Memory"). Postgres touches all
 * of shared_buffers at start, inside the one WASM heap: the default 128 MB was a quarter of an
 * idle Vigil. 16 MB (2,048 pages) holds the hot catalogue and index pages of a small site; the
 * data files are read through the OS page cache like any file, so a miss costs a syscall.
 */
const PGLITE_SETTINGS = ['-c', 'shared_buffers=16MB']
const WASM_FLAGS = '--liftoff-only'

/**
 * A new embedded database is made, initdb and every migration, in a short-lived child process
 * (store/create-database.ts): PGlite runs initdb in its own WASM instance, and the memory it leaves
 * behind (~350 MB resident, measured) would stay in Vigil's process for good; the migrations
 * leave their share too (garbage that grows V8's young generation during start-up;
 * docs/performance.md "Memory of an idle embedded Vigil"). A child gives all of it back when it
 * exits. It builds the database in a sibling directory that is flushed to disk and then renamed
 * into place, so a first start cut short (a crash, a kill, a full disk) leaves no half-made
 * database behind: the next start makes it again. Only the first start pays for it (one extra
 * Node start and PGlite open, well under a second beside initdb). The migrations it applied are
 * logged here, as when they run in-process.
 */
async function createInChildProcess (dir: string, log: Logger): Promise<void> {
  const building = `${dir}.creating`
  await fs.rm(building, { recursive: true, force: true })
  // Beside this file, with its extension: TypeScript through tsx under the tests and the dev
  // scripts, the compiled JavaScript of dist/ under `npm start`.
  const typescript = import.meta.url.endsWith('.ts')
  const script = fileURLToPath(new URL(`./create-database.${typescript ? 'ts' : 'js'}`, import.meta.url))
  const loader = typescript ? ['--import', import.meta.resolve('tsx')] : []
  const stdout = await new Promise<string>((resolve, reject) => {
    execFile(process.execPath, [...loader, WASM_FLAGS, script, building], { maxBuffer: 16 * 1024 * 1024 }, (err, out, stderr) => {
      if (err === null) resolve(out)
      else reject(new Error(`creating the embedded database in ${dir} failed: ${err.message} ${stderr.slice(-2000)}`))
    })
  })
  for (const line of stdout.split('\n')) {
    const migration = line.startsWith('{') ? (JSON.parse(line) as { migration?: unknown }).migration : undefined
    if (typeof migration === 'string') log.info({ migration }, 'migration applied')
  }
  await syncFilesystemOnce(building)
  // rename(2) replaces the empty directory an earlier start cut short may have left (openEmbedded
  // refused a non-empty one before any of this).
  await fs.rename(building, dir)
}

/** What store/create-database.ts runs in its child process: a new database in `dir`, migrated, closed. */
export async function createEmbeddedDatabase (dir: string, log: Logger): Promise<void> {
  const db = await openPglite(dir, log)
  await db.close()
}

/** One syncfs(2) of the filesystem holding `dir`, its helper ended after (a first start's one-off). */
async function syncFilesystemOnce (dir: string): Promise<void> {
  const fsync = createFilesystemSync(dir)
  try {
    await fsync.sync()
  } finally {
    await fsync.close()
  }
}

/**
 * Callers that arrive while a flush runs share the next one (a flush already under way may
 * have started before their commit), so N concurrent commits cost at most two flushes.
 */
export function coalesce (flush: () => Promise<void>): () => Promise<void> {
  let running: Promise<void> | null = null
  let next: Promise<void> | null = null
  const start = (): Promise<void> => {
    running = flush().finally(() => { running = null })
    return running
  }
  return () => {
    if (running === null) return start()
    next ??= running.catch(() => {}).then(() => {
      next = null
      return start()
    })
    return next
  }
}

/**
 * flushToDisk (a coalesced flush: a call made while one runs waits for the next, so each call's
 * flush starts after it) with whenDurable beside it: a waiter is released by the first call made
 * after it that completes, or by one it makes itself after `maxWaitMs` (again after a failure).
 */
export function trackFlushes (flush: () => Promise<void>, maxWaitMs: number): { flushToDisk: () => Promise<void>, whenDurable: () => Promise<void>, stop: () => void } {
  let calls = 0
  let completed = 0
  let stopped = false
  const waiters = new Set<{ after: number, resolve: () => void, timer: NodeJS.Timeout | null }>()
  const flushToDisk = async (): Promise<void> => {
    const call = ++calls
    await flush()
    completed = Math.max(completed, call)
    for (const w of waiters) {
      if (completed <= w.after) continue
      if (w.timer !== null) clearTimeout(w.timer)
      waiters.delete(w)
      w.resolve()
    }
  }
  const arm = (w: { timer: NodeJS.Timeout | null }): void => {
    w.timer = setTimeout(() => {
      w.timer = null
      if (!stopped) flushToDisk().catch(() => { if (!stopped) arm(w) })
    }, maxWaitMs)
    w.timer.unref()
  }
  return {
    flushToDisk,
    whenDurable: () => new Promise<void>((resolve) => {
      if (stopped) return
      const w = { after: calls, resolve, timer: null }
      waiters.add(w)
      arm(w)
    }),
    stop () {
      // Waiters are never released: what they wait for is not known to be on disk.
      stopped = true
      for (const w of waiters) if (w.timer !== null) clearTimeout(w.timer)
      waiters.clear()
    }
  }
}

/**
 * Applies store/migrations/*.sql in name order, each once, each in its own transaction, under an
 * advisory lock that serializes processes starting together on one database.
 */
export async function migrate (pool: pg.Pool, log: Logger): Promise<void> {
  const files = (await fs.readdir(migrationsDir)).filter((f) => f.endsWith('.sql')).sort()
  const client = await pool.connect()
  try {
    // Under the lock too: two `CREATE TABLE IF NOT EXISTS` at once on an empty database both find
    // no table and the second fails on pg_type's unique index (23505), crashing that process.
    await client.query('BEGIN')
    try {
      await client.query('SELECT pg_advisory_xact_lock(7415001)')
      await client.query('CREATE TABLE IF NOT EXISTS schema_migrations (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())')
      await client.query('COMMIT')
    } catch (err) {
      await client.query('ROLLBACK')
      throw err
    }
    for (const name of files) {
      await client.query('BEGIN')
      try {
        // Serializes concurrent starts against one database; released at COMMIT.
        await client.query('SELECT pg_advisory_xact_lock(7415001)')
        const done = await client.query('SELECT 1 FROM schema_migrations WHERE name = $1', [name])
        if (done.rowCount === 0) {
          await client.query(await fs.readFile(path.join(migrationsDir, name), 'utf8'))
          await client.query('INSERT INTO schema_migrations (name) VALUES ($1)', [name])
          log.info({ migration: name }, 'migration applied')
        }
        await client.query('COMMIT')
      } catch (err) {
        await client.query('ROLLBACK')
        throw new Error(`migration ${name} failed: ${(err as Error).message}`, { cause: err })
      }
    }
  } finally {
    client.release()
  }
}

/**
 * Runs `work` in one transaction on one pooled connection: COMMIT when it resolves, ROLLBACK
 * when it throws (the error is rethrown), the connection released either way. `begin` may add
 * statements (no parameters) to run after BEGIN, sent with it as one simple query: one round trip.
 */
export async function inTransaction<T> (pool: pg.Pool, work: (client: pg.PoolClient) => Promise<T>, begin: readonly string[] = []): Promise<T> {
  const client = await pool.connect()
  // The connection can fail mid-transaction (an outage): the failing query rejects, and the
  // client's 'error' event must find a listener while it is checked out.
  const onError = (): void => {}
  client.on('error', onError)
  try {
    await client.query(['BEGIN', ...begin].join(';\n'))
    const result = await work(client)
    await client.query('COMMIT')
    return result
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {})
    throw err
  } finally {
    client.removeListener('error', onError)
    client.release()
  }
}
