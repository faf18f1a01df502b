import type { FastifyReply, FastifyRequest } from 'fastify'
import pino from 'pino'

/**
 * The API logger's serializers: request lines carry method, path and route pattern, never
 * query strings, headers (Authorization) or bodies (names are PHI).
 */
export const logSerializers = {
  req (request: FastifyRequest) {
    const url = typeof request.url === 'string' ? request.url : ''
    const query = url.indexOf('?')
    return {
      method: request.method,
      url: query === -1 ? url : url.slice(0, query),
      route: request.routeOptions?.url
    }
  },
  res (reply: FastifyReply) {
    return { statusCode: reply.statusCode }
  },
  // pg errors carry `detail`/`where` with row values (a display name is PHI): keep only
  // what identifies the failure.
  err (err: Error & { code?: unknown, statusCode?: unknown }) {
    const std = pino.stdSerializers.err(err)
    return { type: std.type, message: std.message, stack: std.stack, code: err.code, statusCode: err.statusCode }
  }
}
