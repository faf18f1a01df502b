import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import pino from 'pino'
import t from 'tap'
import { startRulesFile } from '../../alerts/engine/rules-file.ts'
import { migrate, openDatabase } from '../../store/database.ts'
import { createTestDatabase } from '../helpers/postgres.ts'
import { waitFor } from '../helpers/wait.ts'

// Issue 16: processes started together on one fresh database (test/cluster/concurrent-first-start
// does it with real processes; there the races depend on start-up timing). Here each race is
// set up on purpose, in one process, so it shows every time.

const log = pino({ level: 'silent' })
const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..')

t.test('migrate waits for another process creating schema_migrations instead of failing on pg_type (23505)', async (t) => {
  const testDb = await createTestDatabase({ empty: true })
  const pools = Array.from({ length: 3 }, () => new pg.Pool({ connectionString: testDb.url, max: 1 }))
  const watch = new pg.Pool({ connectionString: testDb.url, max: 1 })
  t.teardown(async () => {
    for (const p of [...pools, watch]) await p.end()
    await testDb.drop()
  })
  // Another process's first migrate, caught between creating the table and committing: it holds
  // the migrations' lock and an uncommitted schema_migrations (what migrate itself does first).
  const other = await pools[0]!.connect()
  await other.query('BEGIN')
  await other.query('SELECT pg_advisory_xact_lock(7415001)')
  await other.query('CREATE TABLE IF NOT EXISTS schema_migrations (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())')
  const starts = pools.slice(1).map(async (pool) => await migrate(pool, log).then(() => 'ok', (err: Error) => `${err.message} (${(err as { code?: string }).code})`))
  await waitFor('both starts to wait', async () => (await watch.query(
    "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")).rows[0].n === 2, 15_000)
  await other.query('COMMIT')
  other.release()
  t.same(await Promise.all(starts), ['ok', 'ok'], 'both migrated')
  const files = (await fs.readdir(path.join(root, 'store', 'migrations'))).filter((f) => f.endsWith('.sql'))
  t.equal((await watch.query('SELECT count(*)::int AS n FROM schema_migrations')).rows[0].n, files.length, 'each migration applied once')
})

t.test('the rules file loaded by several processes at once is recorded once, and all report the same load', async (t) => {
  const testDb = await createTestDatabase()
  const db = await openDatabase({ databaseUrl: testDb.url, dataDir: '', log, poolSize: 6 })
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-rules-start-'))
  const rulesPath = path.join(dir, 'alert-rules.yaml')
  await fs.copyFile(path.join(root, 'config', 'alert-rules.yaml'), rulesPath)
  // A barrier: a SHARE lock holds every start at its first write to the table, so all three are
  // under way at once when it lifts (as processes starting together on one database are).
  const barrier = await db.pool.connect()
  await barrier.query('BEGIN')
  await barrier.query('LOCK TABLE alert_rule_versions IN SHARE MODE')
  const starting = Promise.all(Array.from({ length: 3 }, async () => await startRulesFile({ pool: db.pool, path: rulesPath, log })))
  await waitFor('three starts to wait', async () => (await db.pool.query(
    "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")).rows[0].n === 3, 15_000)
  await barrier.query('COMMIT')
  barrier.release()
  const files = await starting
  t.teardown(async () => {
    for (const f of files) await f.close()
    await db.close()
    await testDb.drop()
    await fs.rm(dir, { recursive: true, force: true })
  })
  const { rows } = await db.pool.query('SELECT version, loaded_at FROM alert_rule_versions')
  t.equal(rows.length, 1, 'one version recorded, not one per process')
  const loads = files.map((f) => ({ version: f.current().version, loadedAt: f.current().loadedAt, loadedBy: f.current().loadedBy }))
  t.same(new Set(loads.map((l) => JSON.stringify(l))).size, 1, 'every process reports the same version, load time and loader')
  t.equal(loads[0]!.loadedAt, new Date(rows[0].loaded_at).getTime(), 'the recorded one')

  // An edit every process reloads: one new version, not three.
  const text = await fs.readFile(rulesPath, 'utf8')
  await fs.writeFile(rulesPath, `${text}\n# edited\n`)
  await Promise.all(files.map(async (f) => await f.reload()))
  t.equal((await db.pool.query('SELECT count(*)::int AS n FROM alert_rule_versions')).rows[0].n, 2, 'the edit recorded once')
  t.equal(new Set(files.map((f) => `${f.current().version} ${f.current().loadedAt}`)).size, 1, 'and reported the same everywhere')
})
