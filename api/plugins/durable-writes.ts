import type { FastifyInstance } from 'fastify'

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
 * of refused logins must not become a flood of syncs. Registered only for PGlite: a Postgres
 * server's COMMIT is durable already.
 */
export function registerDurableWrites (app: FastifyInstance, flushToDisk: () => Promise<void>): void {
  app.addHook('onSend', async (request, reply, payload) => {
    if (READS.has(request.method) || reply.statusCode >= 400) return payload
    try {
      await flushToDisk()
      return payload
    } catch (err) {
      // Committed, but not known to be on disk: the caller must not take it as stored.
      request.log.error({ code: (err as { code?: unknown }).code, message: (err as Error).message }, 'a write could not be synced to disk')
      reply.code(503).header('retry-after', 5).header('content-type', 'application/json; charset=utf-8')
      return JSON.stringify({ code: 'VIGIL_ERR_UNAVAILABLE', message: 'the write could not be made durable; check it before retrying' })
    }
  })
}
