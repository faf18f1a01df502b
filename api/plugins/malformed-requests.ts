import { STATUS_CODES } from 'node:http'
import type { Socket } from 'node:net'
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { errorCatalogue } from '../../errors/catalogue.ts'
import type { ErrorCode } from '../../errors/catalogue.ts'
import { clientError, vigil } from './error-handler.ts'
import { httpLimits } from './http-limits.ts'

// Requests refused before any hook runs, so before the error handler and the security
// headers: these answers set the few headers every answer carries themselves.

/**
 * Fastify's frameworkErrors: the router refuses bad percent-encoding and over-long path
 * parameters before any hook runs (so before the limits too: these cost nothing); this
 * gives them a code.
 */
export function answerRouterError (err: FastifyError, request: FastifyRequest, reply: FastifyReply): void {
  const refused = clientError(err) ?? vigil('VIGIL_ERR_VALIDATION', 'the URL is not valid')
  reply.header('x-request-id', request.id).header('cache-control', 'no-store').header('x-content-type-options', 'nosniff')
  reply.code(errorCatalogue[refused.code]).send(refused)
}

// Node refuses these before Fastify sees a request; Fastify's default answer has no code.
const MALFORMED_REQUESTS: Record<string, { code: ErrorCode, message: string }> = {
  ERR_HTTP_REQUEST_TIMEOUT: { code: 'VIGIL_ERR_REQUEST_TIMEOUT', message: `the request did not arrive within ${httpLimits.requestTimeoutMs / 1000} s` },
  HPE_HEADER_OVERFLOW: { code: 'VIGIL_ERR_HEADERS_TOO_LARGE', message: `the request line and headers are larger than ${httpLimits.maxHeaderBytes} bytes` }
}

/** Fastify's clientErrorHandler (Node's 'clientError' event), bound to the instance: answers on the raw socket. */
export function answerMalformedRequest (this: FastifyInstance, err: Error & { code?: string }, socket: Socket): void {
  // https://nodejs.org/api/http.html#event-clienterror: after a reset there is no one to answer.
  if (err.code === 'ECONNRESET' || socket.destroyed) return
  const known = MALFORMED_REQUESTS[err.code ?? '']
  const { code, message } = known ?? { code: 'VIGIL_ERR_VALIDATION' as const, message: 'malformed HTTP request' }
  const status = errorCatalogue[code]
  this.log.debug({ code, err: { code: err.code, message: err.message } }, 'malformed request refused')
  if (socket.writable) {
    const body = JSON.stringify({ code, message })
    socket.write(`HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json; charset=utf-8\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n` +
      `Connection: close\r\n\r\n${body}`)
  }
  socket.destroy(err)
}
