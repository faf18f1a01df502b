import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import t from 'tap'
import { coalesce, openDatabase } from '../../store/database.ts'
import { createLogger } from '../../observability/logger.ts'

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

t.test('PGlite: flushToDisk syncs the embedded data directory', async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-flush-'))
  const db = await openDatabase({ databaseUrl: null, dataDir: dir, log: createLogger('silent') })
  t.teardown(async () => { await db.close(); await fs.rm(dir, { recursive: true, force: true }) })
  t.equal(db.kind, 'pglite')
  await db.pool.query("INSERT INTO patients (id, display_name) VALUES ('00000000-0000-4000-8000-000000000001', 'x')")
  await db.flushToDisk()
  t.pass('sync -f ran')
})
