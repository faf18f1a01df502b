import { setTimeout as sleep } from 'node:timers/promises'

/**
 * Vigil's /metrics (Prometheus text) as name → value, labelled series summed per name: enough
 * for the bench's spool-depth polling and per-step deltas.
 */
async function metricsText (baseUrl: string): Promise<string> {
  let res = await fetch(`${baseUrl}/metrics`, { signal: AbortSignal.timeout(10_000) })
  // Under full load Vigil may shed HTTP requests (503) or rate-limit them (429): ask again soon.
  for (let attempt = 0; (res.status === 503 || res.status === 429) && attempt < 100; attempt++) {
    await res.arrayBuffer()
    await sleep(200)
    res = await fetch(`${baseUrl}/metrics`, { signal: AbortSignal.timeout(10_000) })
  }
  if (!res.ok) throw new Error(`GET /metrics → HTTP ${res.status}`)
  return await res.text()
}

export async function scrapeVigilMetrics (baseUrl: string): Promise<Map<string, number>> {
  const values = new Map<string, number>()
  for (const line of (await metricsText(baseUrl)).split('\n')) {
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

/** Vigil's /metrics series whose name starts with one of `prefixes`, each keyed by its whole name with labels (`name{a="b"}`). */
export async function scrapeVigilSeries (baseUrl: string, prefixes: readonly string[]): Promise<Map<string, number>> {
  const out = new Map<string, number>()
  for (const line of (await metricsText(baseUrl)).split('\n')) {
    if (!prefixes.some((prefix) => line.startsWith(prefix))) continue
    const space = line.lastIndexOf(' ')
    const value = Number(line.slice(space + 1))
    if (Number.isFinite(value)) out.set(line.slice(0, space), value)
  }
  return out
}

/** Mean seconds of one histogram series between two scrapes (`series` is the part in braces), null when none was observed. */
export function meanBetween (before: Map<string, number>, after: Map<string, number>, name: string, series: string): number | null {
  const delta = (suffix: string): number => (after.get(`${name}_${suffix}{${series}}`) ?? 0) - (before.get(`${name}_${suffix}{${series}}`) ?? 0)
  const count = delta('count')
  return count > 0 ? delta('sum') / count : null
}
