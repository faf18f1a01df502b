import { setTimeout as sleep } from 'node:timers/promises'

/**
 * Vigil's /metrics (Prometheus text) as name → value, labelled series summed per name: enough
 * for the bench's spool-depth polling and per-step deltas.
 */
export async function scrapeVigilMetrics (baseUrl: string): Promise<Map<string, number>> {
  let res = await fetch(`${baseUrl}/metrics`, { signal: AbortSignal.timeout(10_000) })
  // Under full load Vigil may shed HTTP requests (503) or rate-limit them (429): ask again soon.
  for (let attempt = 0; (res.status === 503 || res.status === 429) && attempt < 100; attempt++) {
    await res.arrayBuffer()
    await sleep(200)
    res = await fetch(`${baseUrl}/metrics`, { signal: AbortSignal.timeout(10_000) })
  }
  if (!res.ok) throw new Error(`GET /metrics → HTTP ${res.status}`)
  const values = new Map<string, number>()
  for (const line of (await res.text()).split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)/.exec(line)
    if (match === null) continue
    const [, name, labels, raw] = match
    // Histogram buckets would be summed across `le`: meaningless, so skipped.
    if (labels !== undefined && name!.endsWith('_bucket')) continue
    const value = Number(raw)
    if (Number.isFinite(value)) values.set(name!, (values.get(name!) ?? 0) + value)
  }
  return values
}

/** Change of each counter between two scrapes (names present in `after`). */
export function metricDeltas (before: Map<string, number>, after: Map<string, number>): Map<string, number> {
  const deltas = new Map<string, number>()
  for (const [name, value] of after) deltas.set(name, value - (before.get(name) ?? 0))
  return deltas
}
