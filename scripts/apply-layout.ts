// Applies a move map ({"old/path.ts": "new/path.ts"}) to a checkout: `git mv` each file, then
// rewrites every path that pointed at a moved file or folder, in every file, moved or not:
//
//  - module specifiers in .ts files: import / import type / export … from / import() /
//    `import('…')` types, kept relative, keeping the extension the specifier had (.ts, .js or none);
//  - `new URL('./x', import.meta.url)`;
//  - worker task names: `taskFile(import.meta.url | new URL(…).href, 'dir/task')` (workers/pool.ts
//    resolves the name next to the caller and adds .ts/.js itself);
//  - folder paths built from the file's own place: `path.join|resolve(path.dirname(<import.meta.url>), '..', 'x')`;
//  - repository-relative paths written out in strings and comments (`store/database.ts`,
//    `path.join('config', 'alert-rules.yaml')`), and in package.json, .taprc, tsconfig.json,
//    Dockerfile, .ci/*, docker-compose.yml and Markdown pages.
//
// Files named in the map that no longer exist are skipped (reported); files not in the map stay
// where they are and only their paths are rewritten. Run from the repository root:
//
//   npx tsx scripts/apply-layout.ts [--map scripts/layout-move-map.json] [--dry-run] [--no-git] [--since 7ee2196]
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import ts from 'typescript'

const posix = path.posix
/** The commit scripts/layout-move-map.json was written against (main before issues 11–13 merged). */
const MAP_BASE = '7ee2196'

interface Options { root: string, map: string, dryRun: boolean, git: boolean, since: string }

function parseArgs (argv: string[]): Options {
  const options: Options = { root: process.cwd(), map: 'scripts/layout-move-map.json', dryRun: false, git: true, since: MAP_BASE }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    if (arg === '--map') options.map = argv[++i]!
    else if (arg === '--dry-run') options.dryRun = true
    else if (arg === '--no-git') options.git = false
    else if (arg === '--root') options.root = path.resolve(argv[++i]!)
    else if (arg === '--since') options.since = argv[++i]!
    else throw new Error(`unknown argument ${arg}`)
  }
  return options
}

// Pages that describe the move itself, and the tooling: their old paths are meant.
const KEEP_AS_WRITTEN = [/^scripts\/(apply-layout\.ts|import-picture\.ts|layout-move-map\.json)$/, /^docs\/(layout-plan|architecture-before)\.md$/, /^package-lock\.json$/]
const TEXT_FILES = /(\.(ts|md|json|yaml|yml|sql|cjs|mjs|js|sh)|^\.taprc|^Dockerfile|^\.ci\/.*|^\.dockerignore|^\.gitignore)$/
const SKIP_DIRS = new Set(['node_modules', '.git', 'data', '.tap', 'scratch', 'coverage'])

function listFiles (root: string, git: boolean): string[] {
  if (git) {
    const out = execFileSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: root, encoding: 'utf8' })
    return [...new Set(out.split('\0').filter((f) => f !== '' && fs.existsSync(path.join(root, f))))].sort()
  }
  const files: string[] = []
  const walk = (rel: string): void => {
    for (const entry of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
      const child = rel === '' ? entry.name : `${rel}/${entry.name}`
      if (entry.isDirectory()) { if (!SKIP_DIRS.has(entry.name)) walk(child) } else if (entry.isFile()) files.push(child)
    }
  }
  walk('')
  return files.sort()
}

function addedSince (root: string, since: string, git: boolean): string[] {
  if (!git) return []
  try {
    const out = execFileSync('git', ['diff', '--name-only', '--diff-filter=A', '-z', since], { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
    const untracked = execFileSync('git', ['ls-files', '-z', '--others', '--exclude-standard'], { cwd: root, encoding: 'utf8' })
    return [...out.split('\0'), ...untracked.split('\0')].filter((f) => f !== '')
  } catch {
    return [] // the base commit is not in this clone
  }
}

export interface Layout {
  /** Old repository path (file or folder, no trailing slash) → new path, or itself. */
  mapPath (old: string): string
  moves: Map<string, string>
}

export function layoutFrom (moves: Map<string, string>, existingFiles: string[]): Layout {
  const folders = new Map<string, string | null>()
  // A folder moves with its files when every file under it that moves goes to the same new folder
  // and none stays behind (store/migrations would follow store/database.ts only if moved together).
  for (const file of existingFiles) {
    for (let dir = posix.dirname(file); dir !== '.'; dir = posix.dirname(dir)) {
      const target = moves.get(file)
      const rel = posix.relative(dir, file)
      const implied = target === undefined ? dir : (target.endsWith(`/${rel}`) ? target.slice(0, -rel.length - 1) : null)
      const seen = folders.get(dir)
      folders.set(dir, seen === undefined ? implied : (seen === implied ? seen : null))
    }
  }
  return {
    moves,
    mapPath (old: string): string {
      const norm = posix.normalize(old).replace(/\/$/, '')
      const file = moves.get(norm)
      if (file !== undefined) return file
      const dir = folders.get(norm)
      if (dir !== undefined && dir !== null) return dir
      // A path below a folder that moved whole.
      for (let up = posix.dirname(norm); up !== '.'; up = posix.dirname(up)) {
        const moved = folders.get(up)
        if (moved !== undefined && moved !== null && moved !== up) return posix.join(moved, posix.relative(up, norm))
      }
      return norm
    }
  }
}

function relativeSpecifier (fromFile: string, target: string): string {
  const rel = posix.relative(posix.dirname(fromFile), target)
  return rel.startsWith('../') || rel === '..' ? rel : `./${rel}`
}

interface Edit { start: number, end: number, text: string }

function isImportMetaUrl (node: ts.Node): boolean {
  return ts.isPropertyAccessExpression(node) && node.name.text === 'url' && ts.isMetaProperty(node.expression)
}

/** The file (repository path) a URL expression names: import.meta.url, or new URL('lit', import.meta.url)[.href]. */
function urlTarget (node: ts.Expression, file: string): string | undefined {
  if (isImportMetaUrl(node)) return file
  if (ts.isPropertyAccessExpression(node) && node.name.text === 'href') return urlTarget(node.expression, file)
  if (ts.isNewExpression(node) && node.expression.getText() === 'URL' && node.arguments?.length === 2 &&
    ts.isStringLiteralLike(node.arguments[0]!) && isImportMetaUrl(node.arguments[1]!)) {
    return posix.normalize(posix.join(posix.dirname(file), node.arguments[0].text))
  }
  return undefined
}

/** `path.dirname(fileURLToPath(import.meta.url))`, `path.dirname(new URL(import.meta.url).pathname)`. */
function isOwnFolder (node: ts.Expression): boolean {
  return ts.isCallExpression(node) && /^path\.dirname$/.test(node.expression.getText()) && /import\.meta\.url/.test(node.getText())
}

const hasExtension = (spec: string): string | undefined => /\.(ts|js|mts|mjs|cts|cjs|json|yaml|sql)$/.exec(spec)?.[1]

/** The repository path a relative specifier names, if that file (or, extensionless, file.ts) exists. */
function resolveOld (root: string, fromFile: string, spec: string, exists: Set<string>): string | undefined {
  const target = posix.normalize(posix.join(posix.dirname(fromFile), spec)).replace(/\/$/, '')
  if (exists.has(target)) return target
  if (target.endsWith('.js') && exists.has(target.replace(/\.js$/, '.ts'))) return target.replace(/\.js$/, '.ts')
  if (exists.has(`${target}.ts`)) return `${target}.ts`
  if (fs.existsSync(path.join(root, target))) return target // a folder
  return undefined
}

/** The new specifier text for a relative specifier in `file`, keeping its extension style. */
function newSpecifier (layout: Layout, file: string, spec: string, oldTarget: string): string {
  const newFile = layout.mapPath(file)
  const newTarget = layout.mapPath(oldTarget)
  let rel = relativeSpecifier(newFile, newTarget)
  const written = hasExtension(spec)
  const real = hasExtension(oldTarget)
  if (written === 'js' && real === 'ts') rel = rel.replace(/\.ts$/, '.js')
  else if (written === undefined && real !== undefined && !spec.endsWith(`.${real}`)) rel = rel.slice(0, -(real.length + 1))
  if (spec.endsWith('/') && !rel.endsWith('/')) rel += '/'
  return rel
}

export function rewriteTypeScript (root: string, file: string, text: string, layout: Layout, exists: Set<string>, warnings: string[]): string {
  const source = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS)
  const edits: Edit[] = []
  const replaceLiteral = (node: ts.StringLiteralLike, value: string): void => {
    if (value !== node.text) edits.push({ start: node.getStart() + 1, end: node.getEnd() - 1, text: value })
  }
  const specifier = (node: ts.Node | undefined): void => {
    if (node === undefined || !ts.isStringLiteralLike(node)) return
    const spec = node.text
    if (!spec.startsWith('./') && !spec.startsWith('../')) return
    const target = resolveOld(root, file, spec, exists)
    if (target === undefined) { warnings.push(`${file}: ${spec} resolves to nothing; left as written`); return }
    replaceLiteral(node, newSpecifier(layout, file, spec, target))
  }
  const visit = (node: ts.Node): void => {
    if ((ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) && node.moduleSpecifier !== undefined) {
      specifier(node.moduleSpecifier)
    } else if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument)) {
      specifier(node.argument.literal)
    } else if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword) {
      specifier(node.arguments[0])
    } else if (ts.isNewExpression(node) && node.expression.getText() === 'URL' && node.arguments?.length === 2 &&
      ts.isStringLiteralLike(node.arguments[0]!) && isImportMetaUrl(node.arguments[1]!)) {
      specifier(node.arguments[0])
    } else if (ts.isCallExpression(node) && /(^|\.)taskFile$/.test(node.expression.getText()) && node.arguments.length === 2 &&
      ts.isStringLiteralLike(node.arguments[1]!)) {
      // taskFile(callerUrl, 'name'): the task is `name` + the caller's extension, next to the caller.
      const base = urlTarget(node.arguments[0]!, file)
      const name = node.arguments[1]
      if (base === undefined) warnings.push(`${file}: taskFile(${node.arguments[0]!.getText()}, '${name.text}') has a caller URL this script cannot follow; check it by hand`)
      else {
        const oldTask = posix.normalize(posix.join(posix.dirname(base), `${name.text}.ts`))
        if (!exists.has(oldTask)) warnings.push(`${file}: task ${oldTask} does not exist; left as written`)
        else replaceLiteral(name, posix.relative(posix.dirname(layout.mapPath(base)), layout.mapPath(oldTask)).replace(/\.ts$/, ''))
      }
    } else if (ts.isCallExpression(node) && /^path\.(join|resolve)$/.test(node.expression.getText()) && node.arguments.length >= 1 &&
      isOwnFolder(node.arguments[0]!)) {
      // path.join(<this file's folder>, '..', 'store', 'migrations'): the same place from the new folder.
      const rest = node.arguments.slice(1)
      if (rest.length > 0 && rest.every(ts.isStringLiteralLike)) {
        const oldTarget = posix.normalize(posix.join(posix.dirname(file), ...rest.map((a) => (a as ts.StringLiteralLike).text)))
        const rel = posix.relative(posix.dirname(layout.mapPath(file)), layout.mapPath(oldTarget))
        const quote = text[rest[0]!.getStart()]
        const segments = rel === '' ? ['.'] : rel.split('/')
        const replacement = segments.map((s) => `${quote}${s}${quote}`).join(', ')
        if (replacement !== rest.map((a) => a.getText()).join(', ')) {
          edits.push({ start: rest[0]!.getStart(), end: rest[rest.length - 1]!.getEnd(), text: replacement })
        }
      } else if (rest.length > 0) {
        warnings.push(`${file}:${source.getLineAndCharacterOfPosition(node.getStart()).line + 1}: ${node.getText().slice(0, 80)} — not all literals; check by hand`)
      }
    } else if (ts.isCallExpression(node) && /^path\.(join|resolve)$/.test(node.expression.getText()) && node.arguments.length >= 2 &&
      node.arguments.every(ts.isStringLiteralLike)) {
      // path.join('config', 'alert-rules.yaml'): a repository path written in pieces.
      const args = node.arguments as unknown as ts.StringLiteralLike[]
      const joined = posix.normalize(posix.join(...args.map((a) => a.text)))
      const moved = layout.mapPath(joined)
      if (moved !== joined && exists.has(joined)) {
        const quote = text[args[0]!.getStart()]
        edits.push({ start: args[0]!.getStart(), end: args[args.length - 1]!.getEnd(), text: moved.split('/').map((s) => `${quote}${s}${quote}`).join(', ') })
      }
    }
    ts.forEachChild(node, visit)
  }
  visit(source)
  edits.sort((a, b) => b.start - a.start)
  let out = text
  for (const e of edits) out = out.slice(0, e.start) + e.text + out.slice(e.end)
  return out
}

/** Repository paths written out (comments, strings, docs): `store/database.ts` → `store/…` new. Not `../store/database.ts`. */
export function rewriteMentions (text: string, layout: Layout): string {
  const olds = [...layout.moves.keys()].sort((a, b) => b.length - a.length)
  if (olds.length === 0) return text
  const escaped = olds.map((o) => o.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))
  const pattern = new RegExp(`(?<![\\w./-])(${escaped.join('|')})(?![\\w/-]|\\.\\w)`, 'g')
  return text.replace(pattern, (old: string) => layout.moves.get(old) ?? old)
}

export function applyLayout (options: Options): { moved: number, missing: string[], alreadyMoved: string[], rewritten: string[], warnings: string[], notInMap: string[] } {
  const root = options.root
  const map = JSON.parse(fs.readFileSync(path.resolve(root, options.map), 'utf8')) as Record<string, string>
  const files = listFiles(root, options.git)
  const exists = new Set(files)
  const moves = new Map<string, string>()
  const missing: string[] = []
  const alreadyMoved: string[] = []
  for (const [from, to] of Object.entries(map)) {
    if (exists.has(from)) {
      if (exists.has(to)) throw new Error(`${to} exists already: cannot move ${from} there`)
      moves.set(from, to)
    } else if (exists.has(to)) alreadyMoved.push(from)
    else missing.push(from)
  }
  const layout = layoutFrom(moves, files)
  const warnings: string[] = []
  // Files added since the map was written (another branch's new store/foo.ts or flat
  // test/foo.test.ts) that sit in a folder the map moves files out of: they stay where they
  // are, but may belong in a room; add them to the map and run again.
  const mappedFolders = new Set(Object.keys(map).map((f) => posix.dirname(f)))
  const notInMap = addedSince(root, options.since, options.git)
    .filter((f) => f.endsWith('.ts') && !(f in map) && mappedFolders.has(posix.dirname(f)) && exists.has(f))
  const rewritten: string[] = []
  const contents = new Map<string, string>()
  for (const file of files) {
    if (KEEP_AS_WRITTEN.some((re) => re.test(file)) || !TEXT_FILES.test(file)) continue
    const text = fs.readFileSync(path.join(root, file), 'utf8')
    let out = file.endsWith('.ts') ? rewriteTypeScript(root, file, text, layout, exists, warnings) : text
    out = rewriteMentions(out, layout)
    if (out !== text) { contents.set(file, out); rewritten.push(file) }
  }
  if (!options.dryRun) {
    for (const [from, to] of moves) {
      fs.mkdirSync(path.dirname(path.join(root, to)), { recursive: true })
      if (options.git) execFileSync('git', ['mv', from, to], { cwd: root })
      else fs.renameSync(path.join(root, from), path.join(root, to))
    }
    for (const [file, text] of contents) fs.writeFileSync(path.join(root, layout.mapPath(file)), text)
    // Folders left empty by the moves.
    for (const from of moves.keys()) {
      for (let dir = path.dirname(from); dir !== '.'; dir = path.dirname(dir)) {
        const abs = path.join(root, dir)
        if (fs.existsSync(abs) && fs.readdirSync(abs).length === 0) fs.rmdirSync(abs)
        else break
      }
    }
  }
  return { moved: moves.size, missing, alreadyMoved, rewritten, warnings, notInMap }
}

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === path.resolve(new URL(import.meta.url).pathname)) {
  const options = parseArgs(process.argv.slice(2))
  const result = applyLayout(options)
  console.log(`${options.dryRun ? 'would move' : 'moved'} ${result.moved} file(s); ${options.dryRun ? 'would rewrite' : 'rewrote'} paths in ${result.rewritten.length} file(s)`)
  if (result.alreadyMoved.length > 0) console.log(`${result.alreadyMoved.length} file(s) of the map already at their new place`)
  if (result.missing.length > 0) console.log(`in the map but gone (skipped): ${result.missing.join(', ')}`)
  if (result.notInMap.length > 0) console.log(`not in the map, left where they are (give them a room in the map and run again?): ${result.notInMap.join(', ')}`)
  for (const w of result.warnings) console.log(`warning: ${w}`)
}
