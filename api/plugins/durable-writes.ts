import type { FastifyInstance } from 'fastify'

declare module 'fastify' {
  interface FastifyContextConfig {
    /**
     * Whether a successful answer waits for the embedded data directory's sync. Default: every
     * method but GET, HEAD and OPTIONS. `true` for a GET that commits (the FHIR bulk export's
     * kick-off), `false` for a read sent as a POST (searches keep names out of URLs).
     */
    durable?: boolean
  }
}

const READS = new Set(['GET', 'HEAD', 'OPTIONS'])

/**
 * On the embedded default PGlite runs Postgres with fsync off: a COMMIT is durable only once the
 * data directory is synced (`flushToDisk`). Until now only readings were synced (each delivered
 * batch), so a patient, device, alert acknowledgement or token the API had answered 2xx for could
 * be gone after a power cut. Now a write request that succeeded waits for that sync before its
 * answer leaves, as a device's PUBACK waits for the spool. Requests answered together share
 * one sync (`coalesce` in store/database.ts).
 *
 * Only successful writes: a refused request committed nothing the caller was told of, and a flood
 * of refused logins must not become a flood of syncs. A route's `durable` config overrides the
 * method: a GET that commits, a POST that only reads. Registered only for PGlite: a Postgres
 * server's COMMIT is durable already.
 */
export function registerDurableWrites (app: FastifyInstance, flushToDisk: () => Promise<void>): void {
  app.addHook('onSend', async (request, reply, payload) => {
    const durable = request.routeOptions.config.durable ?? !READS.has(request.method)
    if (!durable || reply.statusCode >= 400) return payload
    try {
      await flushToDisk()
      return payload
    } catch (err) {
      // Committed, but not known to be on disk (the disk is failing): the caller must not take it
      // as stored. No Retry-After: a blind retry of a committed POST would make a second one.
      request.log.error({ code: (err as { code?: unknown }).code, message: (err as Error).message }, 'a write could not be synced to disk')
      reply.code(503).removeHeader('location').removeHeader('content-location').header('content-type', 'application/json; charset=utf-8')
      return JSON.stringify({ code: 'VIGIL_ERR_UNAVAILABLE', message: 'the write was made but could not be synced to disk; check whether it took effect before retrying' })
    }
  })
}
