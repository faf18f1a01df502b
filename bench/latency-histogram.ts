/*
 * A latency histogram with logarithmic buckets 1 % wide (HDR-style, without the dependency):
 * constant memory however many messages a step sends, percentiles within 1 %, and histograms
 * from several generator processes merge by adding counts.
 */
const growth = 1.01
const logGrowth = Math.log(growth)
/** 1 µs … ~100 s; anything slower lands in the last bucket. */
const bucketCount = Math.ceil(Math.log(100e6) / logGrowth) + 1

/** Buckets as sparse [index, count] pairs: what crosses the IPC channel. */
export type SparseHistogram = Array<[number, number]>

export interface LatencySummary {
  count: number
  p50Ms: number | null
  p90Ms: number | null
  p99Ms: number | null
  maxMs: number | null
}

export class LatencyHistogram {
  private readonly counts = new Uint32Array(bucketCount)
  private total = 0
  private maxUs = 0

  recordMs (ms: number): void {
    const us = Math.max(1, ms * 1000)
    const index = Math.min(bucketCount - 1, Math.floor(Math.log(us) / logGrowth))
    this.counts[index]!++
    this.total++
    if (us > this.maxUs) this.maxUs = us
  }

  get count (): number { return this.total }

  /** Value (ms) at quantile q (0–1): the middle of the bucket holding it. */
  quantileMs (q: number): number | null {
    if (this.total === 0) return null
    const rank = Math.max(1, Math.ceil(q * this.total))
    let seen = 0
    for (let i = 0; i < bucketCount; i++) {
      seen += this.counts[i]!
      if (seen >= rank) return Math.min(this.maxUs, Math.pow(growth, i + 0.5)) / 1000
    }
    return this.maxUs / 1000
  }

  summary (): LatencySummary {
    return {
      count: this.total,
      p50Ms: this.quantileMs(0.5),
      p90Ms: this.quantileMs(0.9),
      p99Ms: this.quantileMs(0.99),
      maxMs: this.total === 0 ? null : this.maxUs / 1000
    }
  }

  toSparse (): { buckets: SparseHistogram, maxUs: number } {
    const buckets: SparseHistogram = []
    for (let i = 0; i < bucketCount; i++) if (this.counts[i] !== 0) buckets.push([i, this.counts[i]!])
    return { buckets, maxUs: this.maxUs }
  }

  add (sparse: { buckets: SparseHistogram, maxUs: number }): void {
    for (const [i, n] of sparse.buckets) {
      this.counts[i]! += n
      this.total += n
    }
    if (sparse.maxUs > this.maxUs) this.maxUs = sparse.maxUs
  }
}
