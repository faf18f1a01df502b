import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import type { Test } from 'tap'
import { createFilesystemSync } from '../../store/filesystem-sync.ts'
import { waitFor, within } from '../helpers/wait.ts'

// Whether a sync reaches the disk is tested across a power cut (power-cut-flush.test.ts, through
// flushToDisk); this file tests the helper shell that runs it.

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')

/** Live helper shells this process started (their command line names vigil-sync). */
function helperShells (): number[] {
  const pids: number[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
      const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0]
      if (ppid !== process.pid || state === 'Z') continue
      if (readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0').includes('vigil-sync')) pids.push(Number(entry))
    } catch { /* exited meanwhile */ }
  }
  return pids
}

function tempDir (t: Test): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'vigil-fsync-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  return dir
}

t.test('one shell runs every sync, in order, and close ends it', async (t) => {
  const fsync = createFilesystemSync(tempDir(t))
  t.teardown(() => fsync.close())
  t.same(helperShells(), [], 'no shell before the first call')
  await fsync.sync()
  const [shell] = helperShells()
  t.ok(shell, 'a shell after the first call')
  // Concurrent calls queue on the one shell and are answered in order.
  const order: number[] = []
  await Promise.all(Array.from({ length: 10 }, async (_, i) => { await fsync.sync(); order.push(i) }))
  t.same(order, [...Array(10).keys()], 'answered in the order asked')
  t.same(helperShells(), [shell], 'still the same one shell')
  await fsync.close()
  await waitFor('the shell to exit after close', () => helperShells().length === 0)
  await t.rejects(fsync.sync(), /closed/, 'a call after close fails')
})

t.test('a sync that fails rejects with sync\'s own message, and the next call works', async (t) => {
  const dir = tempDir(t)
  // A backslash in the path: dash's echo read `\c` in sync's message as "stop here", and the
  // answer never ended, so this call and every flush after it waited forever.
  const missing = path.join(dir, 'gone\\cut')
  const fsync = createFilesystemSync(missing)
  t.teardown(() => fsync.close())
  await within('the failed sync to answer', t.rejects(fsync.sync(), /failed: .*No such file or directory/))
  const err = await fsync.sync().then(() => null, (e: Error) => e)
  t.ok(err?.message.startsWith(`sync -f ${missing} failed:`), 'the message names the directory')
  const again = createFilesystemSync(dir)
  t.teardown(() => again.close())
  await again.sync()
})

t.test('a shell that dies fails the call it held; the next call starts another', async (t) => {
  const fsync = createFilesystemSync(tempDir(t))
  t.teardown(() => fsync.close())
  await fsync.sync()
  const [first] = helperShells()
  const held = fsync.sync()
  process.kill(first!, 'SIGKILL')
  await t.rejects(held, /helper shell exited \(SIGKILL\)/, 'the call it held fails, naming why')
  await fsync.sync()
  const [second] = helperShells()
  t.ok(second !== undefined && second !== first, 'a new shell answered the next call')
})

t.test('signals to the process group leave the shell to Vigil\'s shutdown', async (t) => {
  // Ctrl-C or a service manager's SIGTERM reaches the whole group; Vigil syncs as it shuts down.
  const fsync = createFilesystemSync(tempDir(t))
  t.teardown(() => fsync.close())
  await fsync.sync()
  const [shell] = helperShells()
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.kill(shell!, signal)
  await fsync.sync()
  t.same(helperShells(), [shell], 'the same shell answered after the signals')
})

t.test('an idle shell does not keep the process alive', async (t) => {
  // A process whose only handle is the idle shell must exit on its own after its sync.
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e',
    `import { createFilesystemSync } from './store/filesystem-sync.ts'
     await createFilesystemSync(${JSON.stringify(tempDir(t))}).sync()
     console.log('synced')`], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => { child.kill('SIGKILL') })
  let out = ''
  child.stdout.on('data', (d: Buffer) => { out += d.toString() })
  const code = await within('the process to exit by itself', new Promise((resolve) => child.once('exit', resolve)))
  t.equal(code, 0)
  t.equal(out, 'synced\n')
})
