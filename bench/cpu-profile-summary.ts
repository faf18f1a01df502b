import fs from 'node:fs/promises'
import path from 'node:path'
import type { ProfileSummary } from './report.ts'

interface ProfileNode {
  id: number
  callFrame: { functionName: string, url: string, lineNumber: number }
}

interface CpuProfile {
  nodes: ProfileNode[]
  /** µs on the system's monotonic clock (CLOCK_MONOTONIC, as process.hrtime). */
  startTime: number
  samples: number[]
  timeDeltas: number[]
}

/** Where a frame's code lives: a file of this checkout, an npm package, a Node core area, or V8. */
export function areaOf (frame: ProfileNode['callFrame'], repoRoot: string): string {
  const { url, functionName } = frame
  if (url === '') {
    if (functionName === '(garbage collector)') return 'V8: garbage collection'
    if (functionName === '(program)') return 'V8: (program) — native code outside JS'
    return 'V8 builtins / native'
  }
  const modules = /\/node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(url)
  if (modules !== null) return `npm: ${modules[1]}`
  if (url.startsWith('node:')) return `Node: ${url.slice(5).replace(/^internal\//, '').split('/')[0]}`
  const file = url.startsWith('file://') ? new URL(url).pathname : url
  return path.relative(repoRoot, file)
}

/**
 * Self time by function and by area from a V8 .cpuprofile (node --cpu-prof), idle excluded:
 * where Vigil's CPU went. Only samples between `fromMonotonicUs` and `toMonotonicUs`
 * (process.hrtime.bigint() / 1000n; V8 stamps samples with the same system-wide monotonic
 * clock) count, so start-up, connecting and disconnecting do not dilute the hot path.
 */
export async function summarizeCpuProfile (
  file: string, repoRoot: string, options: { fromMonotonicUs?: number, toMonotonicUs?: number, top?: number } = {}
): Promise<ProfileSummary> {
  const top = options.top ?? 20
  const from = options.fromMonotonicUs ?? 0
  const to = options.toMonotonicUs ?? Number.POSITIVE_INFINITY
  const profile = JSON.parse(await fs.readFile(file, 'utf8')) as CpuProfile
  const byId = new Map(profile.nodes.map((n) => [n.id, n]))
  const selfUs = new Map<number, number>()
  let at = profile.startTime
  for (let i = 0; i < profile.samples.length; i++) {
    at += profile.timeDeltas[i] ?? 0
    if (at < from || at > to) continue
    // timeDeltas[i + 1] is the time until the next sample, i.e. how long sample i's frame ran.
    const delta = profile.timeDeltas[i + 1] ?? 0
    selfUs.set(profile.samples[i]!, (selfUs.get(profile.samples[i]!) ?? 0) + delta)
  }
  const functions = new Map<string, { name: string, where: string, us: number }>()
  const areas = new Map<string, number>()
  let totalUs = 0
  for (const [id, us] of selfUs) {
    const node = byId.get(id)
    if (node === undefined || node.callFrame.functionName === '(idle)') continue
    totalUs += us
    const area = areaOf(node.callFrame, repoRoot)
    areas.set(area, (areas.get(area) ?? 0) + us)
    // Files run through tsx report positions in the transpiled code (often line 1): no line then.
    const line = node.callFrame.lineNumber > 0 ? `:${node.callFrame.lineNumber + 1}` : ''
    const where = node.callFrame.url === '' ? '' : `${area.replace(/^npm: |^Node: /, '')}${line}`
    const name = node.callFrame.functionName === '' ? '(anonymous)' : node.callFrame.functionName
    const key = `${name}@${where}`
    const entry = functions.get(key) ?? { name, where, us: 0 }
    entry.us += us
    functions.set(key, entry)
  }
  const share = (us: number): number => totalUs === 0 ? 0 : us / totalUs
  return {
    file,
    totalMs: totalUs / 1000,
    byArea: [...areas].sort((a, b) => b[1] - a[1]).slice(0, top).map(([area, us]) => ({ area, selfMs: us / 1000, share: share(us) })),
    byFunction: [...functions.values()].sort((a, b) => b.us - a.us).slice(0, top).map((f) => ({ name: f.name, where: f.where, selfMs: f.us / 1000, share: share(f.us) }))
  }
}

/** The largest .cpuprofile in `dir` (the main thread's), or null. */
export async function findCpuProfile (dir: string): Promise<string | null> {
  let best: { file: string, size: number } | null = null
  for (const name of await fs.readdir(dir).catch(() => [] as string[])) {
    if (!name.endsWith('.cpuprofile')) continue
    const file = path.join(dir, name)
    const { size } = await fs.stat(file)
    if (best === null || size > best.size) best = { file, size }
  }
  return best?.file ?? null
}
