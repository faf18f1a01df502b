import { LatencyHistogram, type LatencySummary } from './latency-histogram.ts'

export interface QueryLoadResult {
  patients: number
  concurrency: number
  durationMs: number
  latest: LatencySummary & { perSecond: number }
  aggregate24h: LatencySummary & { perSecond: number }
  /** Answered 429 (rate limited) or 503 (load shed): Vigil protecting itself, not failing. */
  refused: number
  errors: number
  firstError: string | null
}

/**
 * A clinician-dashboard load on Vigil's read API: `concurrency` clients in a closed loop, each
 * alternating `GET /v1/patients/:id/readings/latest` and a 24-hour hourly mean of heart rate
 * (`/readings/aggregate`), for a random one of `patientIds`.
 */
export async function runQueryLoad (
  baseUrl: string, token: string, patientIds: readonly string[], options: { durationMs: number, concurrency?: number }
): Promise<QueryLoadResult> {
  const concurrency = options.concurrency ?? 2
  const latest = new LatencyHistogram()
  const aggregate = new LatencyHistogram()
  let errors = 0
  let refused = 0
  let firstError: string | null = null
  const headers = { authorization: `Bearer ${token}` }
  const started = performance.now()
  const deadline = started + options.durationMs

  const timed = async (route: string, into: LatencyHistogram): Promise<void> => {
    const t0 = performance.now()
    try {
      const res = await fetch(baseUrl + route, { headers, signal: AbortSignal.timeout(30_000) })
      await res.arrayBuffer()
      if (res.status === 429 || res.status === 503) {
        refused++
        return
      }
      if (!res.ok) throw new Error(`GET ${route.split('?')[0]} → HTTP ${res.status}`)
      into.recordMs(performance.now() - t0)
    } catch (err) {
      errors++
      firstError ??= (err as Error).message
    }
  }

  const client = async (n: number): Promise<void> => {
    let k = n
    while (performance.now() < deadline) {
      const patientId = patientIds[Math.floor(Math.random() * patientIds.length)]!
      if (k++ % 2 === 0) {
        await timed(`/v1/patients/${patientId}/readings/latest`, latest)
      } else {
        const to = new Date()
        const from = new Date(to.getTime() - 24 * 3_600_000)
        const query = new URLSearchParams({ metric: 'heart_rate', from: from.toISOString(), to: to.toISOString(), every: '1h', fn: 'mean' })
        await timed(`/v1/patients/${patientId}/readings/aggregate?${query.toString()}`, aggregate)
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, (_, i) => client(i)))
  const seconds = (performance.now() - started) / 1000
  return {
    patients: patientIds.length,
    concurrency,
    durationMs: seconds * 1000,
    latest: { ...latest.summary(), perSecond: latest.count / seconds },
    aggregate24h: { ...aggregate.summary(), perSecond: aggregate.count / seconds },
    refused,
    errors,
    firstError
  }
}
