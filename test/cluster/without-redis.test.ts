import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import t from 'tap'
import { createTestDatabase } from '../helpers/postgres.ts'
import { spawnVigil, type VigilProcess } from '../helpers/vigil-process.ts'
import { waitFor } from '../helpers/wait.ts'

// A process without REDIS_URL takes itself for the only one on its database (alert rule state in
// memory between saves): another one there is said in the log, by the second at start and by the
// first at its next leadership check (docs/operations.md#running-several-processes).
const warning = 'another Vigil process uses this database and REDIS_URL is unset'

t.test('a second process without REDIS_URL on the same database logs that it is not alone', async (t) => {
  const database = await createTestDatabase()
  t.teardown(() => database.drop())
  const started: VigilProcess[] = []
  t.teardown(async () => {
    for (const p of started) p.child.kill('SIGKILL')
    await Promise.all(started.map(async (p) => await p.exited))
  })
  const start = async (): Promise<VigilProcess> => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-without-redis-'))
    t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
    const p = await spawnVigil({ DATABASE_URL: database.url, VIGIL_ADMIN_TOKEN: 'without-redis-admin-token-0123456789abcdef', LOG_LEVEL: 'info' }, dir, { startTimeoutMs: 120_000 })
    started.push(p)
    return p
  }
  const first = await start()
  t.notOk(first.output().includes(warning), 'alone on its database: nothing to say')
  const second = await start()
  const line = second.output().split('\n').find((l) => l.includes(warning))
  t.ok(line !== undefined, 'the second one says so')
  t.match(JSON.parse(line!), { level: 50, processCount: 2 }, 'as an error, with how many it found')
  // The first finds the second at its next leadership check (every third of the takeover time).
  await waitFor('the first to say it too', () => first.output().includes(warning), { timeoutMs: 30_000 })
  t.pass('the first one says so at its next check')
})
