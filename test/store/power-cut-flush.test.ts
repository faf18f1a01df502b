import { spawn } from 'node:child_process'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { openDatabase } from '../../store/database.ts'
import { createLogger } from '../../observability/logger.ts'
import { createCuttableDisk, cutWithControl } from '../helpers/power-cut.ts'
import { waitFor, within } from '../helpers/wait.ts'

// PGlite runs with fsync off: a commit sits in the page cache until flushToDisk. SIGKILL alone
// keeps the page cache (the kernel writes it back later), so only a power cut can tell whether
// flushToDisk flushed anything: a child commits a row and flushes, is killed, the power goes
// (test/helpers/power-cut.ts), and the row must be there. The child also makes the database
// (PGlite's initdb, written without fsync), so with flushToDisk a no-op nothing of it reaches
// the disk and the row cannot be read back (checked by hand when this test was written).
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
// The child's embedded start runs PGlite's initdb: about 50 s on a loaded 2-core machine, 220 s
// seen with the machine at load 35; the file gets more than tap's usual 240 s for that.
const START_MS = 240_000
t.setTimeout(480_000)

t.test('PGlite: a commit followed by flushToDisk survives a power cut', async (t) => {
  const disk = await createCuttableDisk(256)
  t.teardown(() => disk.close())
  const log = createLogger('silent')
  const started = Date.now()
  const phase = (what: string): void => { t.comment(`${what} after ${Math.round((Date.now() - started) / 1000)} s`) }

  const child = spawn(process.execPath, ['--import', 'tsx', path.join(root, 'test/store/database-flush-child.ts'), disk.dir], {
    cwd: root, stdio: ['ignore', 'pipe', 'pipe']
  })
  t.teardown(() => { child.kill('SIGKILL') })
  let out = ''
  child.stdout.on('data', (d: Buffer) => { out += d.toString() })
  child.stderr.on('data', (d: Buffer) => { out += d.toString() })
  const exited = new Promise((resolve) => child.once('exit', resolve))
  await waitFor('the child to make the database, commit and flush', () => out.includes('flushed\n') || child.exitCode !== null, START_MS)
  t.match(out, /^flushed\n/, `the child committed and flushed (output: ${out.slice(0, 500)})`)
  child.kill('SIGKILL')
  await within('the child to die', exited)
  phase('child made the database, committed, flushed and was killed')

  await cutWithControl(t, disk)
  phase('power cut')

  const after = await openDatabase({ databaseUrl: null, dataDir: disk.dir, log })
  t.teardown(() => after.close())
  phase('reopened')
  const rows = await after.pool.query("SELECT display_name FROM patients WHERE id = '00000000-0000-4000-8000-000000000001'")
  t.strictSame(rows.rows, [{ display_name: 'flushed' }], 'the flushed commit is on the disk after the power cut')
})
