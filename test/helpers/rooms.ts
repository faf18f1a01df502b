import fs from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import t from 'tap'
import YAML from 'yaml'

/**
 * The fast set runs a room's test files one after another in one process (test/rooms/*.test.ts)
 * instead of a process each: a test process pays about 4 s of CPU before its first assertion
 * (tap's loaders, tsx, Vigil's module graph), and on 2 cores that was most of the suite's time.
 *
 * Each file still behaves as it did alone: it is a subtest named by its path, its top-level code
 * runs when its turn comes (not while another file's tests run), its `t.teardown`s run when its
 * own tests end, and it keeps tap's per-file timeout. What it shares with the room's other files is
 * the process: module instances and process-wide state. A file that needs a process of its own is
 * named in .taprc's `include` (it then runs alone, as tap runs any file), and the room skips it.
 * `npx tap test/<room>/<file>.test.ts` runs one file alone, as before.
 */

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')

interface Taprc { include?: string[], exclude?: string[], timeout?: number }

async function taprc (): Promise<Taprc> {
  return YAML.parse(await fs.readFile(path.join(root, '.taprc'), 'utf8')) as Taprc
}

/** Every test file under test/<room>/, as 'test/<room>/…' paths, sorted. */
async function filesUnder (room: string): Promise<string[]> {
  const entries = await fs.readdir(path.join(root, 'test', room), { recursive: true })
  return entries.filter((f) => f.endsWith('.test.ts')).map((f) => path.posix.join('test', room, f.split(path.sep).join('/'))).sort()
}

/**
 * The files room `room` runs: its test files, less the resilience set (.taprc `exclude`) and the
 * files run alone (.taprc `include` names them); with `parts`, every parts-th of them from `part`
 * (1-based), so a big room can be two processes that run side by side.
 */
export async function roomFiles (room: string, split: { part: number, parts: number } = { part: 1, parts: 1 }): Promise<string[]> {
  const rc = await taprc()
  const apart = new Set([...(rc.exclude ?? []), ...(rc.include ?? [])])
  return (await filesUnder(room)).filter((f) => !apart.has(f)).filter((_f, i) => i % split.parts === split.part - 1)
}

// What a test file may call on the root `t` at its top level: sent to its own subtest instead.
const redirected = [
  'test', 'skip', 'todo', 'only', 'teardown', 'before', 'after', 'beforeEach', 'afterEach', 'setTimeout', 'plan', 'comment',
  'pass', 'fail', 'ok', 'notOk', 'equal', 'not', 'same', 'notSame', 'strictSame', 'strictNotSame', 'match', 'notMatch',
  'type', 'throws', 'doesNotThrow', 'rejects', 'resolves', 'resolveMatch', 'has', 'hasStrict', 'error', 'end'
] as const

/** Runs the room's files one after another in this process, each as a subtest named by its path. */
export async function runRoom (room: string, split?: { part: number, parts: number }): Promise<void> {
  const files = await roomFiles(room, split)
  const perFileMs = ((await taprc()).timeout ?? 30) * 1000
  // tap's per-file timeout applies to each file below; the process as a whole gets their sum.
  t.setTimeout(perFileMs * Math.max(1, files.length))
  if (files.length === 0) t.comment(`room ${room}: no files to run`)
  const rootT = t as unknown as Record<string, unknown>
  for (const file of files) {
    await t.test(file, { timeout: perFileMs }, async (sub) => {
      const subT = sub as unknown as Record<string, unknown>
      const saved = new Map(redirected.map((name) => [name, rootT[name]]))
      for (const name of redirected) {
        const method = subT[name]
        if (typeof method === 'function') rootT[name] = (...args: unknown[]) => (method as (...a: unknown[]) => unknown).apply(sub, args)
      }
      // TEST_CPU_REPORT=<file>: one JSON line per test file with the CPU its room process
      // (worker threads included, child processes not) spent on it, to find where the fast set's
      // time goes. Registered first, so it runs after the file's own teardowns (they run last first).
      const report = process.env.TEST_CPU_REPORT
      if (report !== undefined) {
        const cpuBefore = process.cpuUsage()
        const startedAt = Date.now()
        sub.teardown(async () => {
          const cpu = process.cpuUsage(cpuBefore)
          await fs.appendFile(report, JSON.stringify({ file, cpuMs: Math.round((cpu.user + cpu.system) / 1000), wallMs: Date.now() - startedAt }) + '\n')
        })
      }
      try {
        await import(pathToFileURL(path.join(root, file)).href)
      } finally {
        for (const [name, method] of saved) rootT[name] = method
      }
    })
  }
}
