import underPressure from '@fastify/under-pressure'
import type { FastifyInstance } from 'fastify'
import { VigilError } from '../../errors/catalogue.ts'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** false: the route is answered even while the API sheds load (health and metrics). */
    shed?: boolean
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
 * Answers 503 before any work is done while the event loop is stalled (or, when those
 * checks are on, saturated, or memory is past its limit). The API shares
 * its process with the broker and the ingest pipeline, so refusing clinicians' reads for
 * a few seconds is what keeps devices' PUBACKs (and their readings) flowing.
 * `isUnderPressure()` is decorated on the instance for /healthz.
 */
export async function registerLoadShedding (app: FastifyInstance, limits: LoadSheddingLimits): Promise<void> {
  let lastWarned = 0
  await app.register(underPressure, {
    maxEventLoopDelay: limits.maxEventLoopDelayMs,
    maxEventLoopUtilization: limits.maxEventLoopUtilization,
    // The plugin's default, 'cumulative', averages since start-up: after a quiet day a
    // saturated loop would barely move it. 'interval' is the last sample alone.
    eventLoopUtilizationMode: 'interval',
    maxHeapUsedBytes: limits.maxHeapUsedBytes,
    maxRssBytes: limits.maxRssBytes,
    sampleInterval: limits.sampleIntervalMs,
    // Returning without throwing lets the request through; throwing goes to the error handler.
    pressureHandler: async (request, reply, type, value) => {
      if (request.routeOptions.config.shed === false) return
      const now = Date.now()
      if (now - lastWarned >= WARN_EVERY_MS) {
        lastWarned = now
        request.log.warn({ pressure: type, value }, 'shedding load: answering 503')
      }
      reply.header('retry-after', RETRY_AFTER_SECONDS)
      throw new VigilError('VIGIL_ERR_UNAVAILABLE', 'server is overloaded, retry later')
    }
  })
}
