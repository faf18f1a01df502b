// The import picture of the code: folders as rooms, imports as arrows, cycles between rooms,
// floors, and the arrows that run back up. Issue 14 measures the layout with it, before and after.
//
//   npx tsx scripts/import-picture.ts [dir] [--tests] [--floors scripts/layout-floors.json] [--json] [--list]
//
// Arrows: every relative module specifier in a .ts file (import, import type, export … from,
// import(), and `import('…')` in type positions), resolved to a file. Packages and node: are
// not rooms. A room is the file's folder (api/routes is a room apart from api; files at the
// top are the room "(root)"). test/ is left out unless --tests (tests sit above everything);
// scripts/ (this tooling) and node_modules, data, .tap, scratch, results are never read.
//
// Floors without --floors: the room order (bottom to top) with the fewest arrows running up
// (an exact minimum feedback arc set over room arrows, ties broken by file imports; only arrows
// inside a tangle of rooms can run up, so each tangle is ordered on its own), then each
// room's floor is 1 + the highest floor it imports downward (floor 0 imports nothing). With
// --floors (a JSON {room: floor}; "folder/**" covers a folder and those below it, "*" any other)
// are used: an arrow is upward when it points to a higher floor, sideways on the same floor.
import fs from 'node:fs'
import path from 'node:path'
import ts from 'typescript'

const SKIP_DIRS = new Set(['scripts', 'node_modules', '.git', 'data', '.tap', 'scratch', 'coverage', 'results'])

interface Options { dir: string, tests: boolean, floors?: string, json: boolean, list: boolean }

function parseArgs (argv: string[]): Options {
  const options: Options = { dir: '.', tests: false, json: false, list: false }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    if (arg === '--tests') options.tests = true
    else if (arg === '--json') options.json = true
    else if (arg === '--list') options.list = true
    else if (arg === '--floors') options.floors = argv[++i]
    else if (arg.startsWith('--')) throw new Error(`unknown option ${arg}`)
    else options.dir = arg
  }
  return options
}

export function listTypeScriptFiles (root: string): string[] {
  const out: string[] = []
  const walk = (rel: string): void => {
    for (const entry of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
      const child = rel === '' ? entry.name : `${rel}/${entry.name}`
      if (entry.isDirectory()) {
        if (!SKIP_DIRS.has(entry.name) && !entry.name.startsWith('.')) walk(child)
      } else if (entry.isFile() && entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')) out.push(child)
    }
  }
  walk('')
  return out.sort()
}

/** Every module specifier in a file, with its kind. */
export function moduleSpecifiers (fileName: string, text: string): Array<{ specifier: string, typeOnly: boolean }> {
  const source = ts.createSourceFile(fileName, text, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS)
  const found: Array<{ specifier: string, typeOnly: boolean }> = []
  const visit = (node: ts.Node): void => {
    if (ts.isImportDeclaration(node) && ts.isStringLiteral(node.moduleSpecifier)) {
      const clause = node.importClause
      const typeOnly = clause !== undefined && (clause.isTypeOnly ||
        (clause.name === undefined && clause.namedBindings !== undefined && ts.isNamedImports(clause.namedBindings) &&
          clause.namedBindings.elements.length > 0 && clause.namedBindings.elements.every((e) => e.isTypeOnly)))
      found.push({ specifier: node.moduleSpecifier.text, typeOnly })
    } else if (ts.isExportDeclaration(node) && node.moduleSpecifier !== undefined && ts.isStringLiteral(node.moduleSpecifier)) {
      found.push({ specifier: node.moduleSpecifier.text, typeOnly: node.isTypeOnly })
    } else if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword) {
      const arg = node.arguments[0]
      if (arg !== undefined && ts.isStringLiteralLike(arg)) found.push({ specifier: arg.text, typeOnly: false })
    } else if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument) && ts.isStringLiteral(node.argument.literal)) {
      found.push({ specifier: node.argument.literal.text, typeOnly: true })
    }
    ts.forEachChild(node, visit)
  }
  visit(source)
  return found
}

export function resolveRelative (root: string, fromFile: string, specifier: string): string | undefined {
  if (!specifier.startsWith('./') && !specifier.startsWith('../')) return undefined
  const target = path.posix.normalize(path.posix.join(path.posix.dirname(fromFile), specifier))
  const candidates = [target, target.replace(/\.js$/, '.ts'), `${target}.ts`, `${target}/index.ts`]
  return candidates.find((c) => fs.existsSync(path.join(root, c)) && fs.statSync(path.join(root, c)).isFile())
}

export function roomOf (file: string): string {
  const dir = path.posix.dirname(file)
  return dir === '.' ? '(root)' : dir
}

interface Arrow { from: string, to: string, imports: Array<{ from: string, to: string, typeOnly: boolean }> }

export interface Picture {
  files: number
  imports: number
  typeOnlyImports: number
  unresolved: string[]
  rooms: string[]
  arrows: Arrow[]
  cycles: { components: string[][], mutualPairs: Array<[string, string]>, elementary: number, elementaryCapped: boolean }
  floors: Record<string, number>
  floorCount: number
  floorsDeclared: boolean
  upward: Arrow[]
  sideways: Arrow[]
}

export function importPicture (root: string, options: { tests: boolean, floors?: Record<string, number> }): Picture {
  const files = listTypeScriptFiles(root).filter((f) => options.tests || !(f === 'test' || f.startsWith('test/')))
  const arrows = new Map<string, Arrow>()
  const rooms = new Set<string>()
  let imports = 0
  let typeOnlyImports = 0
  const unresolved: string[] = []
  for (const file of files) {
    rooms.add(roomOf(file))
    for (const { specifier, typeOnly } of moduleSpecifiers(file, fs.readFileSync(path.join(root, file), 'utf8'))) {
      if (!specifier.startsWith('.')) continue
      const target = resolveRelative(root, file, specifier)
      if (target === undefined) { unresolved.push(`${file} → ${specifier}`); continue }
      if (!options.tests && (target.startsWith('test/'))) continue
      imports++
      if (typeOnly) typeOnlyImports++
      const from = roomOf(file)
      const to = roomOf(target)
      rooms.add(to)
      if (from === to) continue
      const key = `${from}\u0000${to}`
      let arrow = arrows.get(key)
      if (arrow === undefined) arrows.set(key, arrow = { from, to, imports: [] })
      arrow.imports.push({ from: file, to: target, typeOnly })
    }
  }
  const roomList = [...rooms].sort()
  const arrowList = [...arrows.values()].sort((a, b) => a.from.localeCompare(b.from) || a.to.localeCompare(b.to))
  const cycles = findCycles(roomList, arrowList)
  let floors: Record<string, number>
  let upward: Arrow[]
  let sideways: Arrow[] = []
  if (options.floors !== undefined) {
    const declared = options.floors
    floors = Object.fromEntries(roomList.map((r) => {
      const f = declaredFloor(declared, r)
      if (f === undefined) throw new Error(`--floors names no floor for room ${r} (and has no "*")`)
      return [r, f]
    }))
    upward = arrowList.filter((a) => floors[a.to]! > floors[a.from]!)
    sideways = arrowList.filter((a) => floors[a.to] === floors[a.from])
  } else {
    ({ floors, upward } = fewestUpward(roomList, arrowList, cycles.components))
  }
  return {
    files: files.length,
    imports,
    typeOnlyImports,
    unresolved,
    rooms: roomList,
    arrows: arrowList,
    cycles,
    floors,
    floorCount: new Set(Object.values(floors)).size,
    floorsDeclared: options.floors !== undefined,
    upward,
    sideways
  }
}

/** A room's declared floor: its own key, else the longest `folder/**` above it, else "*". */
export function declaredFloor (declared: Record<string, number>, room: string): number | undefined {
  if (declared[room] !== undefined) return declared[room]
  const glob = Object.keys(declared).filter((k) => k.endsWith('/**') && (room === k.slice(0, -3) || room.startsWith(k.slice(0, -2))))
    .sort((a, b) => b.length - a.length)[0]
  return glob === undefined ? declared['*'] : declared[glob]
}

function findCycles (rooms: string[], arrows: Arrow[]): Picture['cycles'] {
  const next = new Map<string, string[]>(rooms.map((r) => [r, []]))
  for (const a of arrows) next.get(a.from)!.push(a.to)
  // Tarjan's strongly connected components.
  let index = 0
  const indices = new Map<string, number>()
  const low = new Map<string, number>()
  const stack: string[] = []
  const onStack = new Set<string>()
  const components: string[][] = []
  const strong = (v: string): void => {
    indices.set(v, index); low.set(v, index); index++
    stack.push(v); onStack.add(v)
    for (const w of next.get(v)!) {
      if (!indices.has(w)) { strong(w); low.set(v, Math.min(low.get(v)!, low.get(w)!)) } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, indices.get(w)!))
    }
    if (low.get(v) === indices.get(v)) {
      const component: string[] = []
      let w: string
      do { w = stack.pop()!; onStack.delete(w); component.push(w) } while (w !== v)
      if (component.length > 1) components.push(component.sort())
    }
  }
  for (const r of rooms) if (!indices.has(r)) strong(r)
  const has = new Set(arrows.map((a) => `${a.from}\u0000${a.to}`))
  const mutualPairs = arrows.filter((a) => a.from < a.to && has.has(`${a.to}\u0000${a.from}`)).map((a): [string, string] => [a.from, a.to])
  // Elementary cycles (simple circuits) by depth-first search from each room's lowest member, capped.
  const CAP = 100_000
  let elementary = 0
  const order = new Map(rooms.map((r, i) => [r, i]))
  for (const start of rooms) {
    const s = order.get(start)!
    const path = new Set<string>([start])
    const dfs = (v: string): void => {
      for (const w of next.get(v)!) {
        if (elementary >= CAP) return
        if (w === start) elementary++
        else if (order.get(w)! > s && !path.has(w)) { path.add(w); dfs(w); path.delete(w) }
      }
    }
    dfs(start)
  }
  return { components: components.sort((a, b) => b.length - a.length), mutualPairs, elementary, elementaryCapped: elementary >= CAP }
}

/**
 * Exact: the bottom-to-top room order with the fewest upward room arrows (then fewest upward file
 * imports). Only arrows inside a tangle (strongly connected rooms) can run up, so each tangle is
 * ordered on its own (dynamic programming over its subsets) and the tangles are stacked in
 * dependency order.
 */
function fewestUpward (rooms: string[], arrows: Arrow[], components: string[][]): { floors: Record<string, number>, upward: Arrow[] } {
  const componentOf = new Map<string, number>()
  const groups = [...components, ...rooms.filter((r) => !components.some((c) => c.includes(r))).map((r) => [r])]
  groups.forEach((g, i) => { for (const r of g) componentOf.set(r, i) })
  // Stack the groups: a group goes up only once every group it imports is placed.
  const placed = new Set<number>()
  const order: string[] = []
  while (placed.size < groups.length) {
    const ready = groups.findIndex((g, i) => !placed.has(i) &&
      arrows.every((a) => componentOf.get(a.from) !== i || componentOf.get(a.to) === i || placed.has(componentOf.get(a.to)!)))
    placed.add(ready)
    order.push(...orderTangle(groups[ready]!, arrows.filter((a) => componentOf.get(a.from) === ready && componentOf.get(a.to) === ready)))
  }
  const position = new Map(order.map((room, i) => [room, i]))
  const upward = arrows.filter((a) => position.get(a.to)! > position.get(a.from)!)
  const down = arrows.filter((a) => position.get(a.to)! < position.get(a.from)!)
  const floors: Record<string, number> = {}
  for (const room of order) floors[room] = Math.max(-1, ...down.filter((a) => a.from === room).map((a) => floors[a.to]!)) + 1
  return { floors, upward }
}

function orderTangle (rooms: string[], arrows: Arrow[]): string[] {
  const n = rooms.length
  if (n === 1) return rooms
  if (n > 22) throw new Error(`a tangle of ${n} rooms: too many for the exact order; pass --floors`)
  const id = new Map(rooms.map((r, i) => [r, i]))
  // into[v][u]: the cost when v is placed above u although u imports v (u → v runs up).
  const into: number[][] = rooms.map(() => rooms.map(() => 0))
  for (const a of arrows) into[id.get(a.to)!]![id.get(a.from)!] = 100_000 + a.imports.length
  const size = 1 << n
  const cost = new Float64Array(size).fill(Infinity)
  const choice = new Int8Array(size).fill(-1)
  cost[0] = 0
  for (let set = 0; set < size; set++) {
    const base = cost[set]!
    if (base === Infinity) continue
    for (let v = 0; v < n; v++) {
      if ((set & (1 << v)) !== 0) continue
      let c = base
      const row = into[v]!
      for (let u = 0; u < n; u++) if ((set & (1 << u)) !== 0) c += row[u]!
      const next = set | (1 << v)
      if (c < cost[next]!) { cost[next] = c; choice[next] = v }
    }
  }
  const order: string[] = []
  for (let set = size - 1; set !== 0; set &= ~(1 << choice[set]!)) order.unshift(rooms[choice[set]!]!)
  return order
}

function report (p: Picture, list: boolean): string {
  const lines: string[] = []
  const arrowImports = p.arrows.reduce((n, a) => n + a.imports.length, 0)
  lines.push(`files ${p.files}, relative imports ${p.imports} (${p.typeOnlyImports} type-only), ${arrowImports} of them between rooms`)
  lines.push(`rooms ${p.rooms.length}, arrows (room pairs) ${p.arrows.length}`)
  lines.push(`cycles: ${p.cycles.components.length} tangle(s) of rooms [${p.cycles.components.map((c) => c.join(' ')).join(' | ')}], ` +
    `${p.cycles.mutualPairs.length} two-way pair(s) [${p.cycles.mutualPairs.map(([a, b]) => `${a}↔${b}`).join(', ')}], ` +
    `${p.cycles.elementary}${p.cycles.elementaryCapped ? '+' : ''} elementary cycle(s)`)
  const upImports = p.upward.reduce((n, a) => n + a.imports.length, 0)
  lines.push(`floors ${p.floorCount} (${p.floorsDeclared ? 'declared' : 'fewest-upward order'}), upward arrows ${p.upward.length} (${upImports} file imports)` +
    (p.floorsDeclared ? `, sideways arrows ${p.sideways.length}` : ''))
  const byFloor = new Map<number, string[]>()
  for (const [room, floor] of Object.entries(p.floors)) byFloor.set(floor, [...(byFloor.get(floor) ?? []), room])
  for (const floor of [...byFloor.keys()].sort((a, b) => b - a)) lines.push(`  floor ${floor}: ${byFloor.get(floor)!.sort().join(' ')}`)
  const show = (title: string, arrows: Arrow[]): void => {
    if (arrows.length === 0) return
    lines.push(title)
    for (const a of arrows) {
      lines.push(`  ${a.from} → ${a.to} (${a.imports.length})`)
      if (list) for (const i of a.imports) lines.push(`      ${i.from} → ${i.to}${i.typeOnly ? ' (type)' : ''}`)
    }
  }
  show('upward arrows:', p.upward)
  show('sideways arrows:', p.sideways)
  if (p.unresolved.length > 0) lines.push(`unresolved: ${p.unresolved.join(', ')}`)
  return lines.join('\n')
}

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === path.resolve(new URL(import.meta.url).pathname)) {
  const options = parseArgs(process.argv.slice(2))
  const floors = options.floors === undefined ? undefined : JSON.parse(fs.readFileSync(options.floors, 'utf8')) as Record<string, number>
  const picture = importPicture(path.resolve(options.dir), { tests: options.tests, floors })
  if (options.json) console.log(JSON.stringify(picture, null, 2))
  else console.log(report(picture, options.list))
}
