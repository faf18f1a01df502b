import { randomUUID } from 'node:crypto'
import type { FastifyInstance } from 'fastify'

const CLIENT_REQUEST_ID = /^[A-Za-z0-9._-]{1,64}$/

/**
 * Fastify's request-id options. Fastify 5 ignores request-id headers by default. The id is
 * always Vigil's own: it is the audit rows' request id, which a client must not choose (issue
 * 11 §11). A client's X-Request-Id is kept apart as request.clientRequestId (below).
 */
export const requestIdOptions = {
  requestIdHeader: false,
  genReqId: () => randomUUID()
} as const

/** Every answer carries X-Request-Id (Vigil's id); a harmless caller's id is echoed as X-Client-Request-Id. */
export function registerRequestIds (app: FastifyInstance): void {
  app.decorateRequest('clientRequestId', null)
  app.addHook('onRequest', async (request, reply) => {
    // A caller's id is kept only when short and harmless (it reaches logs and audit rows),
    // and only as its own label: echoed back, logged beside Vigil's id, never as request.id.
    const incoming = request.headers['x-request-id']
    if (typeof incoming === 'string' && CLIENT_REQUEST_ID.test(incoming)) {
      request.clientRequestId = incoming
      reply.header('x-client-request-id', incoming)
      request.log = request.log.child({ clientRequestId: incoming })
    }
    reply.header('x-request-id', request.id)
  })
}
