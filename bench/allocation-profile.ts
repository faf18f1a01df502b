import net from 'node:net'
import WebSocket from 'ws'
import { areaOf } from './cpu-profile-summary.ts'
import type { AllocationSummary } from './report.ts'

/*
 * --alloc-profile: where Vigil's garbage comes from. Vigil runs with --inspect on a loopback
 * port; over the DevTools protocol V8's sampling heap profiler records one allocation in every
 * 16 KiB, including objects a scavenge or a full collection has already freed (by default it
 * keeps only what is still alive, which says nothing about garbage). Summed by allocating
 * function: bytes a message, not CPU. The CPU those bytes cost shows as "V8: garbage
 * collection" in --profile.
 */

interface SamplingNode {
  callFrame: { functionName: string, url: string, lineNumber: number }
  selfSize: number
  children: SamplingNode[]
}

/** A free loopback port for `--inspect=127.0.0.1:<port>` (the bench is the only user of it). */
export async function freePort (): Promise<number> {
  const server = net.createServer()
  await new Promise<void>((resolve, reject) => server.listen(0, '127.0.0.1', resolve).once('error', reject))
  const { port } = server.address() as net.AddressInfo
  await new Promise((resolve) => server.close(resolve))
  return port
}

export interface AllocationSampler {
  /** Stops sampling and returns the sampled bytes by function. */
  stop (): Promise<SamplingNode>
  close (): void
}

/** Connects to the inspector on `port` (Vigil's main thread) and starts sampling. */
export async function startAllocationSampling (port: number, intervalBytes = 16 * 1024): Promise<AllocationSampler> {
  const targets = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json() as Array<{ webSocketDebuggerUrl: string }>
  const url = targets[0]?.webSocketDebuggerUrl
  if (url === undefined) throw new Error(`no inspector target on 127.0.0.1:${port}`)
  const ws = new WebSocket(url)
  await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject))
  let nextId = 0
  const pending = new Map<number, { resolve: (result: unknown) => void, reject: (err: Error) => void }>()
  ws.on('message', (data) => {
    const message = JSON.parse(String(data)) as { id?: number, result?: unknown, error?: { message: string } }
    const waiting = message.id === undefined ? undefined : pending.get(message.id)
    if (waiting === undefined) return
    pending.delete(message.id!)
    if (message.error !== undefined) waiting.reject(new Error(`inspector: ${message.error.message}`))
    else waiting.resolve(message.result)
  })
  const call = async (method: string, params: Record<string, unknown> = {}): Promise<unknown> => await new Promise((resolve, reject) => {
    const id = ++nextId
    pending.set(id, { resolve, reject })
    ws.send(JSON.stringify({ id, method, params }))
  })
  await call('HeapProfiler.enable')
  await call('HeapProfiler.startSampling', {
    samplingInterval: intervalBytes, includeObjectsCollectedByMinorGC: true, includeObjectsCollectedByMajorGC: true
  })
  return {
    async stop () {
      const result = await call('HeapProfiler.stopSampling') as { profile: { head: SamplingNode } }
      return result.profile.head
    },
    close: () => ws.close()
  }
}

/** Sampled bytes by allocating function (self size), the `top` largest, over `seconds` and `messages`. */
export function summarizeAllocations (head: SamplingNode, repoRoot: string, seconds: number, messages: number, top = 20): AllocationSummary {
  const sites = new Map<string, { name: string, where: string, bytes: number }>()
  let total = 0
  const stack = [head]
  for (let node = stack.pop(); node !== undefined; node = stack.pop()) {
    stack.push(...node.children)
    if (node.selfSize === 0) continue
    total += node.selfSize
    const frame = node.callFrame
    const area = areaOf(frame, repoRoot)
    const where = frame.url === '' ? '' : `${area.replace(/^npm: |^Node: /, '')}${frame.lineNumber >= 0 ? `:${frame.lineNumber + 1}` : ''}`
    const name = frame.functionName === '' ? '(anonymous)' : frame.functionName
    const key = `${name}@${where}`
    const site = sites.get(key) ?? { name, where, bytes: 0 }
    site.bytes += node.selfSize
    sites.set(key, site)
  }
  return {
    seconds,
    messages,
    totalBytes: total,
    sites: [...sites.values()].sort((a, b) => b.bytes - a.bytes).slice(0, top).map((s) => ({ ...s, share: total === 0 ? 0 : s.bytes / total }))
  }
}
