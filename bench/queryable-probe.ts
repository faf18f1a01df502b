import { setTimeout as sleep } from 'node:timers/promises'
import type { SampleReport } from './generator-protocol.ts'
import { findReadings } from './influx-queries.ts'
import { LatencyHistogram, type LatencySummary } from './latency-histogram.ts'

export interface QueryableSummary extends LatencySummary {
  /** Samples still not queryable when the probe gave up. */
  notFound: number
  /** Mean time between polls: the resolution of these figures. */
  pollIntervalMs: number | null
}

/**
 * Publish → queryable latency: sampled messages (reported by the generator once PUBACKed) are
 * looked up in InfluxDB by one batched query per poll, every `pollGapMs`, until found. A
 * sample's latency is from its publish to the start of the poll that first saw it, so the
 * figures are upper bounds with the poll interval as resolution.
 */
export class QueryableProbe {
  private readonly pending = new Map<string, SampleReport>()
  private readonly latency = new LatencyHistogram()
  private running = false
  private loop: Promise<void> | null = null
  private intervals = 0
  private intervalTotalMs = 0
  private failure: Error | null = null

  constructor (
    private readonly baseUrl: string,
    private readonly db: string,
    private readonly options: { pollGapMs?: number, maxPerQuery?: number, maxPending?: number } = {}
  ) {}

  add (sample: SampleReport): void {
    // Bounded so a store that has stopped keeping up cannot turn the probe into a load of its own.
    if (this.pending.size >= (this.options.maxPending ?? 500)) return
    this.pending.set(`${sample.deviceId}:${sample.seq}`, sample)
  }

  start (): void {
    this.running = true
    this.loop = this.poll()
  }

  private async poll (): Promise<void> {
    const gap = this.options.pollGapMs ?? 20
    const maxPerQuery = this.options.maxPerQuery ?? 40
    let previousPoll: number | null = null
    while (this.running) {
      const started = performance.now()
      if (this.pending.size > 0) {
        const batch = [...this.pending.values()].slice(0, maxPerQuery)
        const queriedAt = performance.timeOrigin + started
        try {
          const from = Math.min(...batch.map((b) => b.ts))
          const to = Math.max(...batch.map((b) => b.ts))
          const found = await findReadings(this.baseUrl, this.db, batch, from, to)
          for (const b of batch) {
            const key = `${b.deviceId}:${b.seq}`
            if (found.has(key)) {
              this.latency.recordMs(queriedAt - b.publishedAt)
              this.pending.delete(key)
            }
          }
          if (previousPoll !== null) {
            this.intervals++
            this.intervalTotalMs += started - previousPoll
          }
          previousPoll = started
        } catch (err) {
          this.failure = err as Error
          this.running = false
          return
        }
      } else {
        previousPoll = null
      }
      await sleep(Math.max(1, gap - (performance.now() - started)))
    }
  }

  /** Keeps polling until every sample is found or `timeoutMs` passes, then stops. */
  async finish (timeoutMs: number): Promise<QueryableSummary> {
    const deadline = performance.now() + timeoutMs
    while (this.running && this.pending.size > 0 && performance.now() < deadline) await sleep(20)
    this.running = false
    await this.loop
    if (this.failure !== null) throw this.failure
    return {
      ...this.latency.summary(),
      notFound: this.pending.size,
      pollIntervalMs: this.intervals > 0 ? this.intervalTotalMs / this.intervals : null
    }
  }
}
