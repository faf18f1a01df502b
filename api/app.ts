import { randomUUID } from 'node:crypto'
import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { Ajv } from 'ajv'
import ajvFormats from 'ajv-formats'
import Fastify from 'fastify'
import type {
  FastifyBaseLogger, FastifyError, FastifyInstance, FastifyReply, FastifyRequest, FastifySchemaCompiler,
  RawReplyDefaultExpression, RawRequestDefaultExpression, RawServerDefault
} from 'fastify'
import pino from 'pino'
import type { Logger } from 'pino'
import type { Metrics } from '../observability/metrics.ts'
import type { ApiTokenStore } from '../store/api-tokens.ts'
import type { Database } from '../store/database.ts'
import { AssignmentOrderError, DuplicateMacError, UnknownDeviceError, UnknownPatientError } from '../store/device-registry.ts'
import type { DeviceRegistry } from '../store/device-registry.ts'
import type { PatientStore } from '../store/patients.ts'
import type { ReadingStore } from '../store/readings-store.ts'
import type { RejectionLog } from '../store/rejections.ts'
import { requireAuthentication } from './auth.ts'
import { VigilError, errorCatalogue } from './errors.ts'
import type { ErrorCode } from './errors.ts'
import { deviceAssignmentRoutes } from './routes/device-assignment.ts'
import { deviceCredentialRoutes } from './routes/device-credentials.ts'
import { deviceRejectionRoutes } from './routes/device-rejections.ts'
import { deviceRoutes } from './routes/devices.ts'
import { healthRoutes } from './routes/health.ts'
import { metricsRoutes } from './routes/metrics.ts'
import { patientRoutes } from './routes/patients.ts'
import { readingRoutes } from './routes/readings.ts'

export interface ApiDeps {
  log: Logger
  /** For /healthz. */
  db: Database
  patients: PatientStore
  devices: DeviceRegistry
  tokens: ApiTokenStore
  rejections: RejectionLog
  readings: ReadingStore
  metrics: Metrics
  /** Extra health checks (e.g. spool) -> name: async () => void (throws when unhealthy). */
  healthChecks?: Record<string, () => Promise<void>>
}

/** The Fastify instance routes are registered on: TypeBox schemas give handler types. */
export type ApiInstance = FastifyInstance<
  RawServerDefault, RawRequestDefaultExpression, RawReplyDefaultExpression, FastifyBaseLogger, TypeBoxTypeProvider
>

// API bodies are small JSON documents; the largest (a device) is well under 1 KiB.
const BODY_LIMIT_BYTES = 64 * 1024

const REQUEST_ID = /^[A-Za-z0-9._-]{1,64}$/

/**
 * The HTTP API, ready to `listen()` (or `inject()` in tests). The caller owns the
 * dependencies; `close()` on the returned instance closes only the HTTP side.
 */
export async function buildApi (deps: ApiDeps): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: deps.log.child({ component: 'api' }, { serializers: logSerializers }),
    // Fastify 5 ignores request-id headers by default; genReqId decides: a caller's id is
    // kept only when it is short and harmless (it ends up in logs and response headers).
    requestIdHeader: false,
    genReqId: (req) => {
      const incoming = req.headers['x-request-id']
      return typeof incoming === 'string' && REQUEST_ID.test(incoming) ? incoming : randomUUID()
    },
    bodyLimit: BODY_LIMIT_BYTES
  }).withTypeProvider<TypeBoxTypeProvider>() as unknown as ApiInstance

  app.setValidatorCompiler(createValidatorCompiler())
  app.decorateRequest('principal', null)
  app.addHook('onRequest', async (request, reply) => {
    reply.header('x-request-id', request.id)
  })
  app.setErrorHandler(handleError)
  app.setNotFoundHandler(async (_request, reply) => {
    return await reply.code(404).send({ code: 'VIGIL_ERR_NOT_FOUND', message: 'no such route' })
  })

  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'Vigil API',
        version: '1',
        description: 'Remote patient monitoring. Every /v1 route needs `Authorization: Bearer <token>`. ' +
          'Errors are `{code, message}` with a stable code (VIGIL_ERR_…); match on the code, not the message.'
      },
      components: { securitySchemes: { bearerAuth: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearerAuth: [] }],
      tags: [
        { name: 'patients' }, { name: 'devices' }, { name: 'readings' }, { name: 'operations' }
      ]
    }
  })
  await app.register(swaggerUi, { routePrefix: '/docs' })

  await app.register(async (v1) => {
    requireAuthentication(v1, deps.tokens)
    patientRoutes(v1, deps)
    deviceRoutes(v1, deps)
    deviceAssignmentRoutes(v1, deps)
    deviceCredentialRoutes(v1, deps)
    deviceRejectionRoutes(v1, deps)
    readingRoutes(v1, deps)
  }, { prefix: '/v1' })

  healthRoutes(app, deps)
  metricsRoutes(app, deps)

  return app as unknown as FastifyInstance
}

/**
 * Fastify's default validator coerces every part and drops unknown properties. Here only the
 * URL parts (strings by nature) are coerced: in a JSON body `"displayName": 42` is a client
 * bug, not "42". Unknown properties are refused: a typo such as `firmwareVersoin` must be a
 * 400, not a PATCH that changes nothing. (The pattern from Fastify's validation docs.)
 */
function createValidatorCompiler (): FastifySchemaCompiler<object> {
  // allErrors stays off, as in Fastify's defaults: with it a crafted body costs one error each.
  const common = { useDefaults: true, removeAdditional: false, allErrors: false, addUsedSchema: false } as const
  const body = new Ajv({ ...common, coerceTypes: false })
  const url = new Ajv({ ...common, coerceTypes: 'array' })
  ajvFormats.default(body)
  ajvFormats.default(url)
  return ({ schema, httpPart }) => (httpPart === 'body' ? body : url).compile(schema)
}

// ---------------------------------------------------------------------------------------
// Logging: request lines carry method, path and route pattern, never query strings,
// headers (Authorization) or bodies (names are PHI).
// ---------------------------------------------------------------------------------------

const logSerializers = {
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

// ---------------------------------------------------------------------------------------
// Errors: one place turns anything thrown into `{code, message}` and a status.
// ---------------------------------------------------------------------------------------

interface ErrorResponse {
  code: ErrorCode
  message: string
  details?: Array<{ path: string, message: string }>
  requestId?: string
}

function vigil (code: ErrorCode, message: string, details?: ErrorResponse['details']): ErrorResponse {
  return details === undefined ? { code, message } : { code, message, details }
}

/** Maps a thrown value to a client response; null when it is not a client error. */
export function clientError (err: unknown): ErrorResponse | null {
  if (err instanceof VigilError) {
    return vigil(err.code, err.message, err.details as ErrorResponse['details'])
  }
  if (err instanceof DuplicateMacError) return vigil('VIGIL_ERR_DUPLICATE_MAC', err.message)
  if (err instanceof UnknownDeviceError) return vigil('VIGIL_ERR_UNKNOWN_DEVICE', err.message)
  if (err instanceof UnknownPatientError) return vigil('VIGIL_ERR_UNKNOWN_PATIENT', err.message)
  if (err instanceof AssignmentOrderError) return vigil('VIGIL_ERR_CONFLICT', err.message)
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
    return vigil('VIGIL_ERR_PAYLOAD_TOO_LARGE', `request body is larger than ${BODY_LIMIT_BYTES} bytes`)
  }
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
// node-postgres reports a dropped connection or a pool wait timeout without a code.
const UNAVAILABLE_MESSAGES = [/^Connection terminated/, /^timeout exceeded when trying to connect/]

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

async function handleError (this: unknown, err: unknown, request: FastifyRequest, reply: FastifyReply): Promise<ErrorResponse> {
  const client = clientError(err)
  if (client !== null) {
    request.log.info({ code: client.code }, 'request refused')
    reply.code(errorCatalogue[client.code])
    return client
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
