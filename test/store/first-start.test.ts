import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import pino from 'pino'
import t, { type Test } from 'tap'
import { openDatabase } from '../../store/database.ts'
import { createLogCapture } from '../helpers/log-capture.ts'

// A first start on the embedded default makes the database (initdb and every migration) in a
// child process, in a sibling directory renamed into place once it is whole (store/database.ts).

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..')
const migrations = (await fs.readdir(path.join(root, 'store', 'migrations'))).filter((f) => f.endsWith('.sql')).sort()

async function emptyDataDir (t: Test): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-first-start-'))
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  return dir
}

t.test('a first start makes the whole database, logs each migration, and clears what a start cut short left', async (t) => {
  const dataDir = await emptyDataDir(t)
  // What a start killed mid-initdb leaves: an empty database directory and a half-made one beside it.
  await fs.mkdir(path.join(dataDir, 'pglite'), { mode: 0o700 })
  await fs.mkdir(path.join(dataDir, 'pglite.creating', 'base'), { recursive: true })
  await fs.writeFile(path.join(dataDir, 'pglite.creating', 'PG_VERSION'), '17\n')
  const capture = createLogCapture()
  const db = await openDatabase({ databaseUrl: null, dataDir, log: pino({ level: 'info' }, capture.stream) })
  t.teardown(() => db.close())
  t.same(capture.find('migration applied').map((line) => line.migration), migrations, 'every migration, in order, in the log of the process that started')
  const applied = await db.pool.query<{ name: string }>('SELECT name FROM schema_migrations ORDER BY name')
  t.same(applied.rows.map((row) => row.name), migrations)
  t.same((await fs.readdir(dataDir)).sort(), ['pglite'], 'nothing left beside the database')
  t.equal(((await fs.stat(path.join(dataDir, 'pglite'))).mode & 0o777), 0o700, 'private')
})

t.test('a database directory with files but no database stops the start with a message naming it', async (t) => {
  const dataDir = await emptyDataDir(t)
  await fs.mkdir(path.join(dataDir, 'pglite'), { mode: 0o700 })
  await fs.writeFile(path.join(dataDir, 'pglite', 'notes.txt'), 'not a database\n')
  await t.rejects(openDatabase({ databaseUrl: null, dataDir, log: pino({ level: 'silent' }) }), { message: /pglite holds files but no database \(no PG_VERSION\)/ })
  t.same((await fs.readdir(dataDir)).sort(), ['pglite'], 'no database built beside it')
  t.same(await fs.readdir(path.join(dataDir, 'pglite')), ['notes.txt'], 'what was there is left as it was')
})
