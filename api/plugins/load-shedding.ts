import { monitorEventLoopDelay, performance, type EventLoopUtilization, type IntervalHistogram } from 'node:perf_hooks'
import type { FastifyInstance } from 'fastify'
import { VigilError } from '../../errors/catalogue.ts'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** false: the route is answered even while the API sheds load (health and metrics). */
    shed?: boolean
  }
  interface FastifyInstance {
    /** True while the last sample was past a limit (what /healthz reports as `load`). */
    isUnderPressure: () => boolean
  }
}

export interface LoadSheddingLimits {
  /** Mean event-loop delay (ms) over one sample past which requests get 503; 0 turns the check off. */
  maxEventLoopDelayMs: number
  /** Event-loop utilization (0–1) over one sample past which requests get 503; 0 turns the check off. */
  maxEventLoopUtilization: number
  /** V8 heap in use (bytes) past which requests get 503; 0 turns the check off. */
  maxHeapUsedBytes: number
  /** Resident set size (bytes) past which requests get 503; 0 turns the check off. */
  maxRssBytes: number
  /** How often the event loop and memory are sampled (ms). */
  sampleIntervalMs: number
}

const RETRY_AFTER_SECONDS = 5
// While shedding, every request would log the same cause; once per period is enough.
const WARN_EVERY_MS = 10_000

/**
 * How often the delay histogram's timer ticks (ms): a tenth of the limit, between 10 and 100.
 * Each tick wakes the process, idle or not: `@fastify/under-pressure` (which this replaced) ticks
 * every 10 ms whatever its limit, and with prom-client's own 10 ms timer that was most of an idle
 * Vigil's 200 wake-ups a second. What is measured is the mean time between ticks less the tick,
 * so a loop is shed once its turns take longer than the limit plus one tick: 1.1 s at the default
 * 1 s limit (1.01 s with under-pressure).
 */
export function delayResolutionMs (maxEventLoopDelayMs: number, sampleIntervalMs = Number.POSITIVE_INFINITY): number {
  // A sample needs several ticks (Node drops the first after each reset), so a short sample
  // interval ticks faster: a sample without any tick reads as a stalled loop.
  return Math.max(10, Math.min(100, Math.floor(maxEventLoopDelayMs / 10), Math.floor(sampleIntervalMs / 4)))
}

type Pressure = { type: 'eventLoopDelay' | 'eventLoopUtilization' | 'heapUsedBytes' | 'rssBytes', value: number }

/**
 * Answers 503 before any work is done while the event loop is stalled (or, when those
 * checks are on, saturated, or memory is past its limit). The API shares
 * its process with the broker and the ingest pipeline, so refusing clinicians' reads for
 * a few seconds is what keeps devices' PUBACKs (and their readings) flowing.
 * Every `sampleIntervalMs` the last sample replaces the one before (the mean delay and the
 * utilization over that interval alone, not since start-up: after a quiet day a saturated loop
 * would barely move an average since start). `isUnderPressure()` is decorated on the instance
 * for /healthz.
 */
export function registerLoadShedding (app: FastifyInstance, limits: LoadSheddingLimits): void {
  let pressure: Pressure | null = null
  app.decorate('isUnderPressure', () => pressure !== null)
  const checkDelay = limits.maxEventLoopDelayMs > 0
  const checkUtilization = limits.maxEventLoopUtilization > 0
  const checkMemory = limits.maxHeapUsedBytes > 0 || limits.maxRssBytes > 0
  if (!checkDelay && !checkUtilization && !checkMemory) return

  const resolution = delayResolutionMs(limits.maxEventLoopDelayMs, limits.sampleIntervalMs)
  let histogram: IntervalHistogram | null = null
  if (checkDelay) {
    histogram = monitorEventLoopDelay({ resolution })
    histogram.enable()
  }
  let elu: EventLoopUtilization = performance.eventLoopUtilization()

  const sample = (): void => {
    let next: Pressure | null = null
    if (histogram !== null) {
      // Each tick records the time since the one before; past the resolution is delay. No tick
      // at all in a whole sample is a loop stalled throughout.
      const mean = histogram.mean / 1e6
      const delay = Number.isNaN(mean) || histogram.count === 0 ? Number.POSITIVE_INFINITY : Math.max(0, mean - resolution)
      histogram.reset()
      if (delay > limits.maxEventLoopDelayMs) next = { type: 'eventLoopDelay', value: delay }
    }
    if (next === null && checkMemory) {
      const mem = process.memoryUsage()
      if (limits.maxHeapUsedBytes > 0 && mem.heapUsed > limits.maxHeapUsedBytes) next = { type: 'heapUsedBytes', value: mem.heapUsed }
      else if (limits.maxRssBytes > 0 && mem.rss > limits.maxRssBytes) next = { type: 'rssBytes', value: mem.rss }
    }
    const current = performance.eventLoopUtilization()
    const utilization = performance.eventLoopUtilization(current, elu).utilization
    elu = current
    if (next === null && checkUtilization && utilization > limits.maxEventLoopUtilization) {
      next = { type: 'eventLoopUtilization', value: utilization }
    }
    pressure = next
  }
  const timer = setInterval(sample, Math.max(resolution, limits.sampleIntervalMs))
  timer.unref()
  app.addHook('onClose', async () => {
    clearInterval(timer)
    histogram?.disable()
  })

  let lastWarned = 0
  app.addHook('onRequest', async (request, reply) => {
    if (pressure === null || request.routeOptions.config.shed === false) return
    const now = Date.now()
    if (now - lastWarned >= WARN_EVERY_MS) {
      lastWarned = now
      request.log.warn({ pressure: pressure.type, value: pressure.value }, 'shedding load: answering 503')
    }
    reply.header('retry-after', RETRY_AFTER_SECONDS)
    throw new VigilError('VIGIL_ERR_UNAVAILABLE', 'server is overloaded, retry later')
  })
}
