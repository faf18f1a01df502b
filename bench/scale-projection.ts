/**
 * What the scale-out run's per-reading costs project for a bigger machine (issue 16). Pure
 * arithmetic on measured figures, so the model is in one place and testable:
 *
 * - Every reading costs the server CPU in each component: Vigil (all threads, whichever
 *   process took it), influxd, Redis, PostgreSQL's backends. Telemetry is consumed where it
 *   arrives, so Vigil processes share nothing on the ingest path: its part scales by adding
 *   processes, as long as cores are free.
 * - A Vigil process cannot go faster than its main thread (the event loop: MQTT, ingest,
 *   PUBACKs): at most 1e6 / (main-thread µs per reading) readings/s per process, and then it
 *   uses vigil µs / main-thread µs cores (workers, GC and libuv threads besides).
 * - Redis runs commands on one thread: at most 1e6 / (Redis µs per reading) readings/s, with
 *   any number of cores.
 * - The whole machine: `cores` × 1e6 / (sum of the components' µs per reading), every core
 *   busy — an upper bound (no headroom, perfect scheduling, no lock or disk limits).
 * - The load generator is not on the server: its CPU is not counted.
 *
 * The projected rate is the lowest of those bounds; the processes it needs are that rate over
 * one process's bound. InfluxDB's and PostgreSQL's own ceilings (disk, WAL, compaction) are
 * not modelled beyond their CPU per reading.
 */

export interface MeasuredCosts {
  /** Vigil CPU per reading, all threads of all its processes. */
  vigilUs: number
  /** Vigil's main threads alone per reading. */
  vigilMainThreadUs: number | null
  influxdUs: number | null
  redisUs: number | null
  postgresUs: number | null
}

export interface Bound {
  name: string
  /** Readings per second this component allows; Infinity when it costs nothing measurable. */
  rate: number
}

export interface Projection {
  cores: number
  /** µs of server CPU per reading (the components measured, summed). */
  serverUs: number
  /** cores × 1e6 / serverUs. */
  cpuBound: number
  /** One Vigil process with its event loop saturated; null when the main thread was not measured. */
  perProcessRate: number | null
  /** Cores one such process uses (all its threads). */
  coresPerProcess: number | null
  /** Readings/s Redis's one thread allows; null when it costs nothing measurable per reading. */
  redisBound: number | null
  /** The lowest bound, and which it is. */
  rate: number
  bottleneck: string
  /** Vigil processes needed for `rate` (each at its event loop's limit). */
  processes: number | null
  /** Cores each component uses at `rate`. */
  coresAtRate: Array<{ name: string, cores: number }>
  /** With InfluxDB, Redis and PostgreSQL on other machines, the box's cores all for Vigil. */
  vigilOnlyRate: number
  /** The components' CPU the vigil-only rate needs elsewhere. */
  elsewhereAtVigilOnlyRate: Array<{ name: string, cores: number }>
}

/** Readings/s a component allows on one thread at `us` per reading (Infinity when ≤ 0: none measured). */
function oneThread (us: number | null): number {
  return us === null || us <= 0 ? Infinity : 1e6 / us
}

export function projectScale (cores: number, m: MeasuredCosts): Projection {
  if (!(cores > 0)) throw new Error('cores must be positive')
  if (!(m.vigilUs > 0)) throw new Error('Vigil CPU per reading must be positive')
  const parts = [
    { name: 'Vigil', us: m.vigilUs },
    { name: 'influxd', us: Math.max(0, m.influxdUs ?? 0) },
    { name: 'Redis', us: Math.max(0, m.redisUs ?? 0) },
    { name: 'PostgreSQL', us: Math.max(0, m.postgresUs ?? 0) }
  ]
  const serverUs = parts.reduce((n, p) => n + p.us, 0)
  const cpuBound = cores * 1e6 / serverUs
  const main = m.vigilMainThreadUs !== null && m.vigilMainThreadUs > 0 ? m.vigilMainThreadUs : null
  const perProcessRate = main === null ? null : 1e6 / main
  const coresPerProcess = main === null ? null : m.vigilUs / main
  const redisBound = oneThread(m.redisUs)
  const bounds: Bound[] = [{ name: `all ${cores} cores busy`, rate: cpuBound }, { name: 'Redis (one thread)', rate: redisBound }]
  const lowest = bounds.reduce((a, b) => (b.rate < a.rate ? b : a))
  const rate = lowest.rate
  const vigilOnlyRate = cores * 1e6 / m.vigilUs
  return {
    cores,
    serverUs,
    cpuBound,
    perProcessRate,
    coresPerProcess,
    redisBound: Number.isFinite(redisBound) ? redisBound : null,
    rate,
    bottleneck: lowest.name,
    processes: perProcessRate === null ? null : Math.ceil(rate / perProcessRate),
    coresAtRate: parts.map((p) => ({ name: p.name, cores: rate * p.us / 1e6 })),
    vigilOnlyRate,
    elsewhereAtVigilOnlyRate: parts.slice(1).map((p) => ({ name: p.name, cores: vigilOnlyRate * p.us / 1e6 }))
  }
}
