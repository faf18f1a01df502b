import fs from 'node:fs/promises'
import path from 'node:path'
import type { ProfileSummary } from './report.ts'

interface ProfileNode {
  id: number
  callFrame: { functionName: string, url: string, lineNumber: number }
}

interface CpuProfile {
  nodes: ProfileNode[]
  samples: number[]
  timeDeltas: number[]
}

/** Where a frame's code lives: a file of this checkout, an npm package, a Node core area, or V8. */
function areaOf (frame: ProfileNode['callFrame'], repoRoot: string): string {
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
 * where Vigil's CPU went.
 */
export async function summarizeCpuProfile (file: string, repoRoot: string, top = 20): Promise<ProfileSummary> {
  const profile = JSON.parse(await fs.readFile(file, 'utf8')) as CpuProfile
  const byId = new Map(profile.nodes.map((n) => [n.id, n]))
  const selfUs = new Map<number, number>()
  for (let i = 0; i < profile.samples.length; i++) {
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
    const where = node.callFrame.url === '' ? '' : `${area.replace(/^npm: |^Node: /, '')}:${node.callFrame.lineNumber + 1}`
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
