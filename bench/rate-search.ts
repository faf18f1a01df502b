import { setTimeout as sleep } from 'node:timers/promises'
import { diskBusyMs, machineBusyCpuUs, mainThreadCpuUs, processUsage, totalUsage } from './child-processes.ts'
import type { GeneratorPool, LoadSummary } from './generator-pool.ts'
import { FsyncProbe } from './fsync-probe.ts'
import { countReadings } from './influx-queries.ts'
import type { LatencySummary } from './latency-histogram.ts'
import { QueryableProbe, type QueryableSummary } from './queryable-probe.ts'
import { metricDeltas, scrapeVigilMetrics } from './vigil-metrics.ts'

/** What a load step is aimed at: Vigil, the peer pipeline, or bare Aedes. */
export interface PipelineUnderTest {
  key: 'vigil' | 'peer' | 'aedes'
  label: string
  mqttPort: number
  /** Processes whose CPU and memory are this pipeline's own (not the generator's, not influxd's). */
  pids: () => number[]
  /** InfluxDB database its readings land in; null when it stores nothing (bare Aedes). */
  database: string | null
  /** Vigil: the base URL of each of its processes, for spool depth and diagnostics from /metrics. */
  vigilUrls?: string[]
  /** Readings stored with timestamps in [firstTs, lastTs], when they are not in InfluxDB (the embedded default: PGlite). */
  countStored?: (firstTs: number, lastTs: number) => Promise<number>
}

/**
 * CPU of a component shared by the pipeline's processes (Redis, PostgreSQL's backends): `read`
 * returns cumulative CPU µs per key (a pid, or one key for a whole server); a step's cost is the
 * sum of each key's growth (a key new since the start counts from 0).
 */
export interface SharedCpuMeter {
  name: string
  read: () => Promise<Record<string, number>>
  /**
   * Its CPU with the pipeline connected and silent (µs per second; set by measureIdle): Redis's
   * heartbeats and cron, job polling. A step's cost per reading is what it used above this.
   */
  idleUsPerSecond?: number
}

/** Sets each meter's idleUsPerSecond from a window of `ms` with no load. */
export async function measureIdle (meters: SharedCpuMeter[], ms = 3000): Promise<void> {
  if (meters.length === 0) return
  const before = await readMeters(meters)
  const started = performance.now()
  await sleep(ms)
  const after = await readMeters(meters)
  const seconds = (performance.now() - started) / 1000
  meters.forEach((m, i) => { m.idleUsPerSecond = Math.max(0, meterDelta(before[i]!, after[i]!)) / seconds })
}

export interface StepContext {
  pool: GeneratorPool
  influxUrl: string
  influxdPid: number | null
  /** A directory on the filesystem Vigil's spool uses, for the fsync probe. */
  probeDir: string
  progress: (message: string) => void
  /** Shared components whose CPU per reading each step reports (beside influxd's). */
  meters?: SharedCpuMeter[]
  /** The bench's own processes besides the pipeline, generators and influxd (a private Redis): not "other processes". */
  extraPids?: number[]
}

export interface StepOptions {
  durationMs: number
  /** Sample 1 in N messages for publish → queryable (0: none). */
  sampleEvery: number
  /** Readings per message (default 1): every acknowledged message must add this many. */
  readingsPerMessage?: number
}

export interface VigilDiagnostics {
  /** Mean PUBLISH received → durable (spool fsync) inside Vigil, ms. */
  durableMeanMs: number | null
  /** InfluxDB writes made by the spool's delivery loop, their mean size and latency. */
  storeWrites: number
  storeWriteMeanReadings: number | null
  storeWriteMeanMs: number | null
  rejections: number
  refused: number
}

export interface StepResult {
  /** Offered rate, messages (= readings) per second. */
  rate: number
  held: boolean
  /** Why the step did not hold (empty when held). */
  reasons: string[]
  load: LoadSummary
  /** Readings counted in InfluxDB for this step; null for a pipeline without storage. */
  stored: number | null
  storedPerSecond: number | null
  /** From the end of the window until everything acknowledged was queryable. */
  storeCaughtUpMs: number | null
  queryable: QueryableSummary | null
  /** Pipeline CPU from window start until caught up, per reading stored (or message acked). */
  cpuUsPerReading: number | null
  /** Pipeline CPU over that time, in cores. */
  cpuCores: number
  rssBytes: number
  influxdCpuUsPerReading: number | null
  /** CPU of each `ctx.meters` component from window start until caught up, above its idle, per reading stored. */
  sharedCpuUsPerReading?: Record<string, number | null>
  /** The idle rate (µs/s) subtracted for each meter. */
  sharedIdleUsPerSecond?: Record<string, number>
  /** The pipeline processes' main threads (Node's event loops) alone, per reading stored. */
  mainThreadCpuUsPerReading?: number | null
  /** The busiest main thread's share of one core over the step (1: that event loop was saturated). */
  busiestMainThreadCores?: number
  /**
   * CPU (cores) the rest of the machine used meanwhile: everything busy minus the bench's own
   * processes (pipeline, generators, influxd, this process). Other people's work shows up here.
   */
  otherCores: number
  /** Share of the time the busiest disk had I/O in flight (everyone's fsyncs, ours included). */
  diskBusy: number
  /** fdatasync latency sampled on the spool's filesystem during the step (see FsyncProbe). */
  fsync: LatencySummary
  vigil?: VigilDiagnostics
}

function cpuOfThisProcess (): number {
  const u = process.cpuUsage()
  return u.user + u.system
}

const ackDrainMs = 3000
const storeTimeoutMs = 30_000

/** Readings waiting in the spools of all of Vigil's processes. */
async function spoolDepth (vigilUrls: string[]): Promise<number> {
  let depth = 0
  for (const url of vigilUrls) depth += (await scrapeVigilMetrics(url)).get('vigil_spool_depth_readings') ?? 0
  return depth
}

/** Every process's metrics, summed by name. */
async function scrapeAll (vigilUrls: string[]): Promise<Map<string, number>> {
  const total = new Map<string, number>()
  for (const url of vigilUrls) {
    for (const [name, value] of await scrapeVigilMetrics(url)) total.set(name, (total.get(name) ?? 0) + value)
  }
  return total
}

async function readMeters (meters: SharedCpuMeter[]): Promise<Array<Record<string, number>>> {
  return await Promise.all(meters.map(async (m) => await m.read().catch(() => ({}))))
}

/** Sum over keys of after − before (a key missing before counts from 0). */
export function meterDelta (before: Record<string, number>, after: Record<string, number>): number {
  let sum = 0
  for (const [key, value] of Object.entries(after)) sum += value - (before[key] ?? 0)
  return sum
}

function mainThreads (pids: number[]): Map<number, number> {
  const cpu = new Map<number, number>()
  for (const pid of pids) {
    const us = mainThreadCpuUs(pid)
    if (us !== null) cpu.set(pid, us)
  }
  return cpu
}

/** Waits until the pipeline has written everything it holds (best effort, bounded). */
export async function waitForIdle (pipeline: PipelineUnderTest, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  if (pipeline.vigilUrls !== undefined) {
    while (Date.now() < deadline && await spoolDepth(pipeline.vigilUrls) > 0) await sleep(100)
  } else {
    await sleep(1000)
  }
}

/**
 * One measured window at a fixed offered rate, then the checks that decide whether the rate
 * was held: everything sent on schedule, PUBACKs kept pace (at the window's end no more than
 * 0.5 s of load or 3 % of it unacknowledged), every message acknowledged soon after, no
 * connection lost, and — for a pipeline with storage — every acknowledged reading counted in
 * InfluxDB, caught up within 1 s + 10 % of the window.
 */
export async function measureStep (ctx: StepContext, pipeline: PipelineUnderTest, rate: number, options: StepOptions): Promise<StepResult> {
  const { influxUrl } = ctx
  const cpuBefore = totalUsage(pipeline.pids())
  const mainBefore = mainThreads(pipeline.pids())
  const meters = ctx.meters ?? []
  const metersBefore = await readMeters(meters)
  const benchPids = (): number[] => [...pipeline.pids(), ...ctx.pool.pids, ...(ctx.influxdPid === null ? [] : [ctx.influxdPid]), ...(ctx.extraPids ?? [])]
  const benchBefore = totalUsage(benchPids()).cpuUs + cpuOfThisProcess()
  const machineBefore = machineBusyCpuUs()
  const diskBefore = diskBusyMs()
  const fsyncProbe = new FsyncProbe(ctx.probeDir)
  fsyncProbe.start()
  const influxBefore = ctx.influxdPid === null ? null : processUsage(ctx.influxdPid)
  const metricsBefore = pipeline.vigilUrls === undefined ? null : await scrapeAll(pipeline.vigilUrls)
  const probe = pipeline.database !== null && options.sampleEvery > 0 ? new QueryableProbe(influxUrl, pipeline.database) : null
  probe?.start()
  let rssBytes = 0
  const rssTimer = setTimeout(() => { rssBytes = totalUsage(pipeline.pids()).rssBytes }, Math.max(0, options.durationMs - 100))
  const started = performance.now()
  let load: LoadSummary
  try {
    load = await ctx.pool.run({
      rate, durationMs: options.durationMs, drainMs: ackDrainMs, sampleEvery: options.sampleEvery, readingsPerMessage: options.readingsPerMessage ?? 1, onSample: (s) => probe?.add(s)
    })
  } finally {
    clearTimeout(rssTimer)
  }
  if (rssBytes === 0) rssBytes = totalUsage(pipeline.pids()).rssBytes
  const windowEnd = started + load.windowMs
  const ackedReadings = load.acked * (options.readingsPerMessage ?? 1)

  let stored: number | null = null
  let storeCaughtUpMs: number | null = null
  if ((pipeline.database !== null || pipeline.countStored !== undefined) && load.sent > 0) {
    const deadline = performance.now() + storeTimeoutMs
    if (pipeline.vigilUrls !== undefined) {
      // Vigil tells when its spool is empty; only then is the count final.
      while (performance.now() < deadline && await spoolDepth(pipeline.vigilUrls) > 0) await sleep(50)
      storeCaughtUpMs = performance.now() - windowEnd
    }
    let lastProgress = performance.now()
    while (true) {
      const count = pipeline.countStored !== undefined
        ? await pipeline.countStored(load.firstTs, load.lastTs)
        : await countReadings(influxUrl, pipeline.database!, load.firstTs, load.lastTs)
      const now = performance.now()
      if (stored === null || count > stored) lastProgress = now
      stored = count
      if (count >= ackedReadings) {
        if (pipeline.vigilUrls === undefined) storeCaughtUpMs = now - windowEnd
        break
      }
      // The peer gives no signal of being done: stop once nothing more arrives for 3 s.
      if (now > deadline || now - lastProgress > 3000) break
      await sleep(100)
    }
  }
  const cpuAfter = totalUsage(pipeline.pids())
  const mainAfter = mainThreads(pipeline.pids())
  const metersAfter = await readMeters(meters)
  const benchCpuUs = totalUsage(benchPids()).cpuUs + cpuOfThisProcess() - benchBefore
  const machineCpuUs = machineBusyCpuUs() - machineBefore
  const diskMs = diskBusyMs() - diskBefore
  const fsync = await fsyncProbe.stop()
  const influxAfter = ctx.influxdPid === null ? null : processUsage(ctx.influxdPid)
  const elapsedMs = performance.now() - started
  const queryable = probe === null ? null : await probe.finish(5000)
  const denominator = stored ?? ackedReadings
  const cpuUs = cpuAfter.cpuUs - cpuBefore.cpuUs
  let mainUs = 0
  let busiestMainUs = 0
  for (const [pid, after] of mainAfter) {
    const used = after - (mainBefore.get(pid) ?? after)
    mainUs += used
    busiestMainUs = Math.max(busiestMainUs, used)
  }
  const sharedCpuUsPerReading: Record<string, number | null> = {}
  const sharedIdleUsPerSecond: Record<string, number> = {}
  meters.forEach((m, i) => {
    const idle = m.idleUsPerSecond ?? 0
    sharedIdleUsPerSecond[m.name] = idle
    const above = meterDelta(metersBefore[i]!, metersAfter[i]!) - idle * elapsedMs / 1000
    sharedCpuUsPerReading[m.name] = denominator > 0 ? Math.max(0, above) / denominator : null
  })

  let vigil: VigilDiagnostics | undefined
  if (metricsBefore !== null && pipeline.vigilUrls !== undefined) {
    const d = metricDeltas(metricsBefore, await scrapeAll(pipeline.vigilUrls))
    const durableCount = d.get('vigil_ingest_durable_seconds_count') ?? 0
    const writes = d.get('vigil_store_write_seconds_count') ?? 0
    vigil = {
      durableMeanMs: durableCount > 0 ? (d.get('vigil_ingest_durable_seconds_sum') ?? 0) * 1000 / durableCount : null,
      storeWrites: writes,
      storeWriteMeanReadings: writes > 0 ? (d.get('vigil_readings_stored_total') ?? 0) / writes : null,
      storeWriteMeanMs: writes > 0 ? (d.get('vigil_store_write_seconds_sum') ?? 0) * 1000 / writes : null,
      rejections: d.get('vigil_rejections_total') ?? 0,
      refused: d.get('vigil_mqtt_refused_total') ?? 0
    }
  }

  const reasons: string[] = []
  if (load.sent < 0.97 * load.offered) {
    // With the generator's own CPU low, it was starved of CPU: the machine is saturated.
    reasons.push(`generator fell behind its schedule (sent ${load.sent} of ${load.offered}; its CPU ${load.generatorCpu.map((c) => `${Math.round(c * 100)} %`).join(', ')})`)
  }
  if (load.disconnects > 0 || load.lost > 0) reasons.push(`${load.disconnects} connections closed, ${load.lost} messages lost with them`)
  // A backlog that outgrows what one transient stall leaves behind (half a second of load, or
  // 3 % of the window) means the pipeline did not keep up; smaller ones show in the p99.
  const backlog = load.sent - load.ackedInWindow
  if (backlog > Math.max(0.03 * load.sent, 0.5 * rate)) {
    reasons.push(`PUBACKs fell behind (${backlog} of ${load.sent} unacknowledged when the window ended)`)
  }
  if (load.unacked > 0) reasons.push(`${load.unacked} never acknowledged within ${ackDrainMs / 1000} s`)
  if (stored !== null && stored < ackedReadings) reasons.push(`stored ${stored} of ${ackedReadings} acknowledged readings (loss)`)
  if (stored !== null && stored > ackedReadings) reasons.push(`stored ${stored} > ${ackedReadings} acknowledged readings (unacknowledged messages were stored)`)
  if (storeCaughtUpMs !== null && storeCaughtUpMs > 1000 + 0.1 * options.durationMs) {
    reasons.push(`storage fell behind (caught up ${(storeCaughtUpMs / 1000).toFixed(1)} s after the window)`)
  }
  if (vigil !== undefined && vigil.rejections > 0) reasons.push(`${vigil.rejections} payloads rejected by Vigil`)

  return {
    rate,
    held: reasons.length === 0,
    reasons,
    load,
    stored,
    storedPerSecond: stored === null ? null : stored / (load.windowMs / 1000),
    storeCaughtUpMs,
    queryable,
    cpuUsPerReading: denominator > 0 ? cpuUs / denominator : null,
    cpuCores: cpuUs / 1000 / elapsedMs,
    rssBytes,
    influxdCpuUsPerReading: influxBefore !== null && influxAfter !== null && stored !== null && stored > 0
      ? (influxAfter.cpuUs - influxBefore.cpuUs) / stored
      : null,
    ...(meters.length === 0 ? {} : { sharedCpuUsPerReading, sharedIdleUsPerSecond }),
    mainThreadCpuUsPerReading: denominator > 0 && mainAfter.size > 0 ? mainUs / denominator : null,
    busiestMainThreadCores: busiestMainUs / 1000 / elapsedMs,
    otherCores: Math.max(0, (machineCpuUs - benchCpuUs) / 1000 / elapsedMs),
    diskBusy: Math.min(1, diskMs / elapsedMs),
    fsync,
    vigil
  }
}

export interface SearchOptions extends StepOptions {
  /** Offered rates to try, ascending. */
  grid: number[]
  /**
   * The first rate tried (added to the grid if it is not on it); lower rates are tried only if
   * it fails. Starting the peer at Vigil's maximum gives a same-rate comparison and saves steps.
   */
  startRate: number
  /** After the last held and first failed grid rate, try their geometric mean. */
  refine: boolean
  label: string
}

export interface SearchResult {
  steps: StepResult[]
  /** The highest rate held, or null when none was. */
  best: StepResult | null
}

function describeStep (s: StepResult): string {
  const pub = s.load.puback
  const parts = [
    `${s.held ? 'held' : 'NOT held'}`,
    `acked ${s.load.acked}/${s.load.sent}`,
    s.stored === null ? null : `stored ${s.stored}`,
    `PUBACK p50 ${fmtMs(pub.p50Ms)} p99 ${fmtMs(pub.p99Ms)}`,
    s.queryable === null || s.queryable.count === 0 ? null : `queryable p50 ${fmtMs(s.queryable.p50Ms)} p99 ${fmtMs(s.queryable.p99Ms)}`,
    s.cpuUsPerReading === null ? null : `${s.cpuUsPerReading.toFixed(0)} µs CPU/reading`,
    `generator CPU ${s.load.generatorCpu.map((c) => `${Math.round(c * 100)} %`).join(', ')}`,
    s.otherCores >= 0.1 ? `other processes ${s.otherCores.toFixed(2)} cores` : null,
    s.diskBusy >= 0.3 ? `disk busy ${Math.round(s.diskBusy * 100)} %` : null,
    s.fsync.p99Ms !== null && s.fsync.p99Ms >= 10 ? `fdatasync p50 ${fmtMs(s.fsync.p50Ms)} p99 ${fmtMs(s.fsync.p99Ms)}` : null
  ].filter((p) => p !== null)
  return parts.join(', ') + (s.held ? '' : ` — ${s.reasons.join('; ')}`)
}

export function fmtMs (ms: number | null): string {
  if (ms === null) return '–'
  return ms < 10 ? `${ms.toFixed(2)} ms` : ms < 100 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`
}

/**
 * Steps the offered rate up the grid from startRate until a step fails (or down until one
 * holds, when the first fails), then optionally tries one rate between the last held and first
 * failed. Connections stay open across steps.
 */
export async function findMaxRate (ctx: StepContext, pipeline: PipelineUnderTest, options: SearchOptions): Promise<SearchResult> {
  const steps: StepResult[] = []
  let best: StepResult | null = null
  let firstFailedRate: number | null = null
  const step = async (rate: number): Promise<StepResult> => {
    ctx.progress(`${options.label}: ${Math.round(rate)} msg/s for ${options.durationMs / 1000} s`)
    const result = await measureStep(ctx, pipeline, rate, options)
    steps.push(result)
    ctx.progress(`${options.label}: ${Math.round(rate)} msg/s ${describeStep(result)}`)
    if (!result.held) await waitForIdle(pipeline)
    return result
  }
  const grid = [...new Set([...options.grid, options.startRate])].sort((a, b) => a - b)
  let i = grid.indexOf(options.startRate)
  const first = await step(grid[i]!)
  if (first.held) {
    best = first
    for (i++; i < grid.length; i++) {
      const r = await step(grid[i]!)
      if (!r.held) {
        firstFailedRate = r.rate
        break
      }
      best = r
    }
  } else {
    firstFailedRate = first.rate
    for (i--; i >= 0; i--) {
      const r = await step(grid[i]!)
      if (r.held) {
        best = r
        break
      }
      firstFailedRate = r.rate
    }
  }
  if (options.refine && best !== null && firstFailedRate !== null) {
    const r = await step(Math.round(Math.sqrt(best.rate * firstFailedRate)))
    if (r.held) best = r
  }
  return { steps, best }
}
