import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify'
import { DecryptionError, UnknownKeyError } from '../../crypto/field-encryption.ts'
import { VigilError, errorCatalogue } from '../../errors/catalogue.ts'
import type { ErrorCode } from '../../errors/catalogue.ts'
import { DISK_LOW_RETRY_AFTER_SECONDS } from './disk-reserve.ts'
import { httpLimits } from './http-limits.ts'

// One place turns anything thrown into `{code, message}` and a status. Codes come from the
// catalogue (errors/catalogue.ts): every layer throws VigilErrors (or errors that extend it);
// what else arrives here is Fastify's own request errors, database outages and bugs.


export interface ErrorResponse {
  code: ErrorCode
  message: string
  details?: Array<{ path: string, message: string, line?: number, column?: number }>
  requestId?: string
}

export function vigil (code: ErrorCode, message: string, details?: ErrorResponse['details']): ErrorResponse {
  return details === undefined ? { code, message } : { code, message, details }
}

/** Maps a thrown value to a client response; null when it is not a client error. */
export function clientError (err: unknown): ErrorResponse | null {
  if (err instanceof VigilError) {
    return vigil(err.code, err.message, err.details as ErrorResponse['details'])
  }
  const e = err as Partial<FastifyError> & { name?: string }
  if (Array.isArray(e.validation)) {
    const context = e.validationContext ?? 'request'
    const details = e.validation.map((v) => {
      const params = v.params as { missingProperty?: string, additionalProperty?: string }
      const leaf = params.missingProperty ?? params.additionalProperty
      return { path: `${context}${v.instancePath}${leaf === undefined ? '' : `/${leaf}`}`, message: v.message ?? 'is invalid' }
    })
    return vigil('VIGIL_ERR_VALIDATION', e.message ?? 'request is invalid', details)
  }
  if (e.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
    return vigil('VIGIL_ERR_PAYLOAD_TOO_LARGE', `request body is larger than ${httpLimits.bodyLimitBytes} bytes`)
  }
  // Both messages quote the URL: answer with fixed ones.
  if (e.code === 'FST_ERR_MAX_PARAM_LENGTH') return vigil('VIGIL_ERR_URL_TOO_LONG', 'a path segment is longer than 100 characters')
  if (e.code === 'FST_ERR_BAD_URL') return vigil('VIGIL_ERR_VALIDATION', 'the URL is not valid (bad percent-encoding)')
  // JSON.parse's message quotes the body, which may hold PHI: never echo it.
  if (e.name === 'SyntaxError' && e.statusCode === 400) return vigil('VIGIL_ERR_VALIDATION', 'request body is not valid JSON')
  // Fastify's own request errors (empty JSON body, unsupported media type, bad URL …) carry
  // fixed messages. The catalogue has no 415, so they are all validation errors.
  if (typeof e.code === 'string' && e.code.startsWith('FST_') && typeof e.statusCode === 'number' &&
    e.statusCode >= 400 && e.statusCode < 500 && typeof e.message === 'string') {
    return vigil('VIGIL_ERR_VALIDATION', e.message)
  }
  return null
}

// PostgreSQL Appendix A: class 08 is connection exception; 57P01–57P03 are shutdowns and
// "cannot connect now" (starting up, recovery); 53300 is too_many_connections.
const UNAVAILABLE_CODES = new Set(['57P01', '57P02', '57P03', '53300', 'ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT'])
// node-postgres reports these without a code: a dropped connection (also "… due to
// connection timeout"), a pool wait timeout, a client whose connection failed, a
// query_timeout, and a pool already ended (shutdown: another instance may answer).
const UNAVAILABLE_MESSAGES = [
  /^Connection terminated/,
  /^timeout exceeded when trying to connect/,
  /is not queryable$/,
  /^Query read timeout$/,
  /^Cannot use a pool after calling end on the pool$/
]

// PostgreSQL Appendix A: 53100 disk_full (also what a failed WAL segment write reports);
// ENOSPC from a file write of our own (the spool, a voice note).
const DISK_FULL = /No space left on device/

/** Whether `err` (or its cause) means the disk under the database (or a file Vigil writes) is full. */
export function isDiskFull (err: unknown, depth = 0): boolean {
  if (depth > 4 || typeof err !== 'object' || err === null) return false
  const e = err as { code?: unknown, message?: unknown, cause?: unknown }
  if (e.code === '53100' || e.code === 'ENOSPC') return true
  if (typeof e.message === 'string' && DISK_FULL.test(e.message)) return true
  return isDiskFull(e.cause, depth + 1)
}

/** Whether `err` (or its cause) means the database cannot be reached right now. */
export function isUnavailable (err: unknown, depth = 0): boolean {
  if (depth > 4 || typeof err !== 'object' || err === null) return false
  const e = err as { code?: unknown, message?: unknown, cause?: unknown, errors?: unknown }
  if (typeof e.code === 'string' && (UNAVAILABLE_CODES.has(e.code) || /^08[0-9A-Z]{3}$/.test(e.code))) return true
  if (typeof e.message === 'string' && UNAVAILABLE_MESSAGES.some((m) => m.test(e.message as string))) return true
  // net.connect with several addresses (autoSelectFamily) throws an AggregateError.
  if (Array.isArray(e.errors) && e.errors.some((inner) => isUnavailable(inner, depth + 1))) return true
  return isUnavailable(e.cause, depth + 1)
}

/** Fastify's error handler: 4xx for what the client can fix, 503 for outages, 500 (logged, never echoed) otherwise. */
export async function handleError (this: unknown, err: unknown, request: FastifyRequest, reply: FastifyReply): Promise<ErrorResponse> {
  // Stored PHI that cannot be read (voice notes, records): VigilErrors too, but the server's
  // fault, not the client's: a 500 with a fixed message, logged by key id or reason only.
  if (err instanceof UnknownKeyError) {
    request.log.error({ keyId: err.keyId }, 'stored data is encrypted under a key that is not configured')
    reply.code(err.statusCode)
    return { code: err.code, message: 'stored data is encrypted under a key the server does not have', requestId: request.id }
  }
  if (err instanceof DecryptionError) {
    request.log.error({ reason: err.reason }, 'stored data failed to decrypt')
    reply.code(err.statusCode)
    return { code: err.code, message: 'stored data could not be decrypted', requestId: request.id }
  }
  const client = clientError(err)
  if (client !== null) {
    request.log.info({ code: client.code }, 'request refused')
    reply.code(errorCatalogue[client.code])
    return client
  }
  if (isDiskFull(err)) {
    request.log.error({ err }, 'disk full')
    reply.code(503).header('retry-after', DISK_LOW_RETRY_AFTER_SECONDS)
    return { code: 'VIGIL_ERR_DISK_LOW', message: 'server storage is full, retry later', requestId: request.id }
  }
  if (isUnavailable(err)) {
    request.log.warn({ err }, 'database unavailable')
    reply.code(503).header('retry-after', '5')
    return { code: 'VIGIL_ERR_UNAVAILABLE', message: 'service temporarily unavailable, retry later', requestId: request.id }
  }
  // Never echo internals: the id lets an operator find the logged error.
  request.log.error({ err }, 'request failed')
  reply.code(500)
  return { code: 'VIGIL_ERR_INTERNAL', message: 'internal error', requestId: request.id }
}

/** Unknown paths: the same `{code, message}` shape as every other refusal. */
export async function answerNotFound (_request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
  return await reply.code(404).send({ code: 'VIGIL_ERR_NOT_FOUND', message: 'no such route' })
}
