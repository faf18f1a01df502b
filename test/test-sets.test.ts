import { execFile } from 'node:child_process'
import fs from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import t from 'tap'
import YAML from 'yaml'
import { roomFiles } from './helpers/rooms.ts'

// `npm test` runs the fast set: tap with .taprc, which names the room runners (test/rooms/*: a
// room's files one after another in one process, test/helpers/rooms.ts) and any file that runs
// alone; `npm run test:resilience` runs the files package.json names (.taprc excludes them).
// Together: every test file, once.
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')

async function allTestFiles (): Promise<string[]> {
  const entries = await fs.readdir(path.join(root, 'test'), { recursive: true })
  return entries.filter((f) => f.endsWith('.test.ts')).map((f) => path.posix.join('test', f.split(path.sep).join('/'))).sort()
}

const taprc = YAML.parse(await fs.readFile(path.join(root, '.taprc'), 'utf8')) as { include?: string[], exclude?: string[], files?: string[] }
const scripts = (JSON.parse(await fs.readFile(path.join(root, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts
const runners = (await fs.readdir(path.join(root, 'test/rooms'))).filter((f) => f.endsWith('.test.ts')).sort()
const rooms = (await fs.readdir(path.join(root, 'test'), { withFileTypes: true }))
  .filter((d) => d.isDirectory() && !['helpers', 'rooms'].includes(d.name)).map((d) => d.name).sort()

t.test('the resilience set is named the same in .taprc and package.json', async (t) => {
  t.equal(scripts.test, 'tap', 'npm test is plain tap (.taprc decides)')
  t.equal(taprc.files, undefined, '.taprc has no `files:` (tap would run them past `exclude`)')
  t.equal(taprc.include?.[0], 'test/rooms/*.test.ts', 'the room runners are the fast set')
  t.ok(taprc.include?.slice(1).every((f) => f.endsWith('.test.ts') && !f.includes('*')), 'besides them, .taprc names single files')
  const [command, ...args] = scripts['test:resilience']!.split(/\s+/)
  t.equal(command, 'tap')
  t.strictSame([...args].sort(), [...(taprc.exclude ?? [])].sort(), 'test:resilience runs exactly the files .taprc excludes')
  t.equal(new Set(args).size, args.length, 'no file named twice')
})

t.test('every room has a runner that runs it', async (t) => {
  // test/rooms/<nn>-<room>.test.ts: tap starts files in name order, so the number orders the rooms
  // longest first (test/rooms/README.md).
  const named = runners.map((r) => /^(\d{2})-([a-z0-9-]+)\.test\.ts$/.exec(r))
  t.strictSame(runners.filter((_r, i) => named[i] === null), [], 'every runner is named <nn>-<room>.test.ts')
  t.strictSame(named.map((m) => m?.[2]).sort(), rooms, 'one runner per test/<room>/')
  t.strictSame(named.map((m) => Number(m?.[1])), runners.map((_r, i) => i + 1), 'numbered 01, 02 … without gaps or repeats')
  for (const [i, runner] of runners.entries()) {
    const text = await fs.readFile(path.join(root, 'test/rooms', runner), 'utf8')
    t.match(text, `runRoom('${named[i]?.[2] ?? ''}')`, `${runner} runs its own room`)
  }
})

t.test('every test file is in exactly one set', async (t) => {
  const all = (await allTestFiles()).filter((f) => !f.startsWith('test/rooms/'))
  const resilience = scripts['test:resilience']!.split(/\s+/).slice(1)
  for (const f of resilience) t.ok(all.includes(f), `${f} (resilience set) exists`)
  // What tap itself runs for `npm test`: the runners, and the files that run alone.
  const { stdout } = await promisify(execFile)(path.join(root, 'node_modules/.bin/tap'), ['list'], { cwd: root })
  const listed = stdout.split('\n').filter((l) => l !== '').sort()
  t.strictSame(listed.filter((f) => f.startsWith('test/rooms/')), runners.map((r) => `test/rooms/${r}`), 'tap runs every room runner')
  const alone = listed.filter((f) => !f.startsWith('test/rooms/'))
  const inRooms = (await Promise.all(rooms.map(async (r) => await roomFiles(r)))).flat()
  const fast = [...inRooms, ...alone].sort()
  t.equal(new Set(fast).size, fast.length, 'no file run twice in the fast set')
  const inNeither = all.filter((f) => !fast.includes(f) && !resilience.includes(f))
  const inBoth = fast.filter((f) => resilience.includes(f))
  t.strictSame(inNeither, [], 'no test file left out of both sets')
  t.strictSame(inBoth, [], 'no test file in both sets')
  t.strictSame([...fast, ...resilience].sort(), all, 'the two sets together are every test file')
  t.ok(resilience.length > 0 && fast.length > resilience.length, `${fast.length} fast (${alone.length} alone, in ${runners.length} room processes), ${resilience.length} resilience`)
})

// tap passes each file the loaders of the Test class it was built with: after `npm ci` that is
// the default build (ts-node) until `tap build` runs (the `prepare` script), and a first run
// would load every file through ts-node and tsx both (the fast set's first CI run did).
t.test('test files load TypeScript through tsx alone, not ts-node', async (t) => {
  t.ok(process.execArgv.includes('--import=tsx'), 'tsx is a loader')
  t.notOk(process.execArgv.some((a) => a.includes('@tapjs/typescript') || a.includes('ts-node')), 'ts-node is not')
})
