import { execFile } from 'node:child_process'
import fs from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import t from 'tap'
import YAML from 'yaml'

// `npm test` runs the fast set (tap with .taprc: every test file but the excluded ones);
// `npm run test:resilience` runs the files package.json names. Together: every test file, once.
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')

async function allTestFiles (): Promise<string[]> {
  const entries = await fs.readdir(path.join(root, 'test'), { recursive: true })
  return entries.filter((f) => f.endsWith('.test.ts')).map((f) => path.posix.join('test', f.split(path.sep).join('/'))).sort()
}

const taprc = YAML.parse(await fs.readFile(path.join(root, '.taprc'), 'utf8')) as { include?: string[], exclude?: string[], files?: string[] }
const scripts = (JSON.parse(await fs.readFile(path.join(root, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts

t.test('the resilience set is named the same in .taprc and package.json', async (t) => {
  t.equal(scripts.test, 'tap', 'npm test is plain tap (.taprc decides)')
  t.equal(taprc.files, undefined, '.taprc has no `files:` (tap would run them past `exclude`)')
  t.strictSame(taprc.include, ['test/**/*.test.ts'])
  const [command, ...args] = scripts['test:resilience']!.split(/\s+/)
  t.equal(command, 'tap')
  t.strictSame([...args].sort(), [...(taprc.exclude ?? [])].sort(), 'test:resilience runs exactly the files .taprc excludes')
  t.equal(new Set(args).size, args.length, 'no file named twice')
})

t.test('every test file is in exactly one set', async (t) => {
  const all = await allTestFiles()
  const resilience = scripts['test:resilience']!.split(/\s+/).slice(1)
  for (const f of resilience) t.ok(all.includes(f), `${f} (resilience set) exists`)
  // What tap itself would run for `npm test`.
  const { stdout } = await promisify(execFile)(path.join(root, 'node_modules/.bin/tap'), ['list'], { cwd: root })
  const fast = stdout.split('\n').filter((l) => l !== '').sort()
  const inNeither = all.filter((f) => !fast.includes(f) && !resilience.includes(f))
  const inBoth = fast.filter((f) => resilience.includes(f))
  t.strictSame(inNeither, [], 'no test file left out of both sets')
  t.strictSame(inBoth, [], 'no test file in both sets')
  t.strictSame([...fast, ...resilience].sort(), all, 'the two sets together are every test file')
  t.ok(resilience.length > 0 && fast.length > resilience.length, `${fast.length} fast, ${resilience.length} resilience`)
})

// tap passes each file the loaders of the Test class it was built with: after `npm ci` that is
// the default build (ts-node) until `tap build` runs (the `prepare` script), and a first run
// would load every file through ts-node and tsx both (the fast set's first CI run did).
t.test('test files load TypeScript through tsx alone, not ts-node', async (t) => {
  t.ok(process.execArgv.includes('--import=tsx'), 'tsx is a loader')
  t.notOk(process.execArgv.some((a) => a.includes('@tapjs/typescript') || a.includes('ts-node')), 'ts-node is not')
})
