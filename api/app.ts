import { randomUUID } from 'node:crypto'
import { STATUS_CODES } from 'node:http'
import type { Socket } from 'node:net'
import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { Ajv } from 'ajv'
import ajvFormats from 'ajv-formats'
import Fastify from 'fastify'
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest, FastifySchemaCompiler } from 'fastify'
import pino from 'pino'
import { DecryptionError, UnknownKeyError } from '../crypto/field-encryption.ts'
import { AssignmentChangedError, AssignmentOrderError, DuplicateMacError, NoCurrentAssignmentError, UnknownDeviceError, UnknownPatientError } from '../devices/device-registry.ts'
import { requireAuthentication } from '../access/auth.ts'
import { VigilError, errorCatalogue } from '../errors/catalogue.ts'
import type { ErrorCode } from '../errors/catalogue.ts'
import { registerLoadShedding } from './plugins/load-shedding.ts'
import { registerRequestBudgets } from './plugins/rate-limits.ts'
import { docsContentSecurityPolicy, registerSecurityHeaders } from './plugins/security-headers.ts'
import { registerWebApp } from './plugins/web-app.ts'
import { alertRoutes } from './routes/alerts.ts'
import { onCallRoutes } from './routes/on-call.ts'
import { deviceAssignmentRoutes } from './routes/device-assignment.ts'
import { deviceAssignmentCorrectionRoutes } from './routes/device-assignment-correction.ts'
import { deviceCredentialRoutes } from './routes/device-credentials.ts'
import { deviceRejectionRoutes } from './routes/device-rejections.ts'
import { deviceRejectionReplayRoutes } from './routes/device-rejection-replay.ts'
import { deviceRoutes } from './routes/devices.ts'
import { healthRoutes } from './routes/health.ts'
import { jobRoutes } from './routes/jobs.ts'
import { metricsRoutes } from './routes/metrics.ts'
import { patientRecordRoutes } from './routes/patient-records.ts'
import { patientRoutes } from './routes/patients.ts'
import { accessRoutes } from './routes/people.ts'
import { loginBudgetFor, sessionRoutes } from './routes/sessions.ts'
import { browserSessionRoutes } from './routes/browser-session.ts'
import { readingRoutes } from './routes/readings.ts'
import { alertRuleRoutes } from './routes/alert-rules.ts'
import { voiceNoteRoutes } from './routes/voice-notes.ts'
import { spoolRoutes } from './routes/spool.ts'
import { worklistRoutes } from './routes/worklist.ts'
import type { ApiDeps, ApiInstance, ApiLimits, RouteDeps } from './routes/route-deps.ts'

export type { ApiDeps, ApiInstance, ApiLimits, RouteDeps } from './routes/route-deps.ts'


export const apiLimitDefaults: Readonly<ApiLimits> = {
  // 100 requests/s sustained per token (config's API_RATE_LIMIT_PER_MINUTE default too):
  // room for provisioning tools and dashboards, not for one runaway client.
  rateLimitPerMinute: 6000,
  // A person loading /docs makes about ten requests; a script guessing tokens or paths, thousands.
  unauthenticatedRateLimitPerMinute: 120,
  // The mean of the loop's 10 ms ticks over a 5 s sample: past 1 s the loop is stalled
  // nearly throughout (answers and the broker's PUBACKs are late). One long pause, such as
  // Fastify compiling its serializers at start-up (about a second), stays far below it;
  // with 1 s samples that pause alone shed the end-to-end tests' first requests.
  maxEventLoopDelayMs: 1000,
  // Off: utilization near 1 is normal load here, not overload. Embedded PGlite runs its
  // queries on this event loop, and at 0.98 (even over 5 s samples) the API refused the
  // end-to-end tests' provisioning of 100 devices at once and the embedded flow's reads.
  maxEventLoopUtilization: 0,
  // Off: what the heap may use depends on the host and --max-old-space-size.
  maxHeapUsedBytes: 0,
  maxRssBytes: 0,
  loadSampleIntervalMs: 5000
}


// API bodies are small JSON documents; the largest (a device) is well under 1 KiB.
const BODY_LIMIT_BYTES = 64 * 1024
// The longest legitimate URL, a readings query with a 512-character cursor, is under 800
// characters. RFC 9110 §15.5.15: 414 for a target longer than the server will interpret.
const MAX_URL_LENGTH = 4096
// Node's default, stated so a NODE_OPTIONS=--max-http-header-size cannot widen it. Node
// counts the request line too, so this also caps a URL before the router sees it.
const MAX_HEADER_BYTES = 16 * 1024
// Fastify's default is no limit: a client could trickle a request for ever (slowloris).
const REQUEST_TIMEOUT_MS = 30_000

const REQUEST_ID = /^[A-Za-z0-9._-]{1,64}$/

const READ_METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'OPTIONS'])
// Space comes back when an operator frees it or the spool delivers: not within seconds.
const DISK_LOW_RETRY_AFTER_SECONDS = '30'

/**
 * The HTTP API, ready to `listen()` (or `inject()` in tests). The caller owns the
 * dependencies; `close()` on the returned instance closes only the HTTP side.
 */
export async function buildApi (deps: ApiDeps): Promise<FastifyInstance> {
  const limits = resolveLimits(deps)
  const app = Fastify({
    loggerInstance: deps.log.child({ component: 'api' }, { serializers: logSerializers }),
    // Fastify 5 ignores request-id headers by default. The id is always Vigil's own: it is
    // the audit rows' request id, which a client must not choose (issue 11 §11). A client's
    // X-Request-Id is kept apart as request.clientRequestId (below).
    requestIdHeader: false,
    genReqId: () => randomUUID(),
    bodyLimit: BODY_LIMIT_BYTES,
    requestTimeout: REQUEST_TIMEOUT_MS,
    http: { maxHeaderSize: MAX_HEADER_BYTES },
    trustProxy: deps.trustProxy ?? false,
    // The router refuses bad percent-encoding and over-long path parameters before any
    // hook runs (so before the limits too: these cost nothing); this gives them a code.
    frameworkErrors: answerRouterError,
    clientErrorHandler: answerMalformedRequest
  }).withTypeProvider<TypeBoxTypeProvider>() as unknown as ApiInstance

  app.setValidatorCompiler(createValidatorCompiler())
  app.decorateRequest('principal', null)
  app.decorateRequest('clientRequestId', null)
  app.setErrorHandler(handleError)

  // Root onRequest hooks run in this order, for every route and for 404s, and a refusal
  // ends the chain: security headers first so every answer carries them, then the cheap
  // refusals (URL length, load shedding, the address budget) before any route work.
  await registerSecurityHeaders(app)
  app.addHook('onRequest', async (request, reply) => {
    // A caller's id is kept only when short and harmless (it reaches logs and audit rows),
    // and only as its own label: echoed back, logged beside Vigil's id, never as request.id.
    const incoming = request.headers['x-request-id']
    if (typeof incoming === 'string' && REQUEST_ID.test(incoming)) {
      request.clientRequestId = incoming
      reply.header('x-client-request-id', incoming)
      request.log = request.log.child({ clientRequestId: incoming })
    }
    reply.header('x-request-id', request.id)
    // Responses hold PHI (names, vitals): no browser or proxy may keep a copy. Swagger
    // UI's static files replace this with their own (they hold none).
    reply.header('cache-control', 'no-store')
    if (request.url.length > MAX_URL_LENGTH) {
      throw new VigilError('VIGIL_ERR_URL_TOO_LONG', `the URL is longer than ${MAX_URL_LENGTH} characters`)
    }
  })
  await registerLoadShedding(app, {
    maxEventLoopDelayMs: limits.maxEventLoopDelayMs,
    maxEventLoopUtilization: limits.maxEventLoopUtilization,
    maxHeapUsedBytes: limits.maxHeapUsedBytes,
    maxRssBytes: limits.maxRssBytes,
    sampleIntervalMs: limits.loadSampleIntervalMs
  })
  const budgets = await registerRequestBudgets(app, {
    perTokenPerMinute: limits.rateLimitPerMinute,
    perAddressPerMinute: limits.unauthenticatedRateLimitPerMinute
  })
  // Public routes and unknown paths are charged to the caller's address here; /v1 routes
  // (which declare a permission) in the auth hook, to their token or, failing that, the address.
  app.addHook('onRequest', async (request, reply) => {
    if (request.routeOptions.config.permission === undefined) await budgets.chargeAddress(request, reply)
  })
  app.setNotFoundHandler(async (_request, reply) => {
    return await reply.code(404).send({ code: 'VIGIL_ERR_NOT_FOUND', message: 'no such route' })
  })

  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'Vigil API',
        version: '1',
        description: 'Remote patient monitoring. Every /v1 route needs `Authorization: Bearer <token>` (an API token, or the ' +
          'access token from POST /v1/auth/login) except /v1/auth/*. ' +
          'Errors are `{code, message}` with a stable code (VIGIL_ERR_…); match on the code, not the message. ' +
          `Limits: ${limits.rateLimitPerMinute} requests/min per token, ${limits.unauthenticatedRateLimitPerMinute}/min per address ` +
          'without a valid token (429 VIGIL_ERR_RATE_LIMITED with Retry-After); 503 VIGIL_ERR_UNAVAILABLE with Retry-After ' +
          'while overloaded or while the database is unreachable.'
      },
      components: { securitySchemes: { bearerAuth: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearerAuth: [] }],
      tags: [
        { name: 'patients' }, { name: 'records' }, { name: 'devices' }, { name: 'readings' }, { name: 'alerts' }, { name: 'jobs' }, { name: 'voice notes' }, { name: 'operations' }, { name: 'auth' }, { name: 'people' }
      ]
    }
  })
  // staticCSP replaces the API's CSP on the /docs routes only (the UI's own context).
  await app.register(swaggerUi, { routePrefix: '/docs', staticCSP: docsContentSecurityPolicy })

  // The access decisions follow this API's own patient and token stores.
  const bound = deps.access.bind({ patients: deps.patients, tokens: deps.tokens })
  const routeDeps: RouteDeps = {
    ...deps,
    authenticate: deps.authenticate ?? bound.authenticate,
    patientAccess: deps.patientAccess ?? bound.patientAccess
  }
  const access = deps.access
  await app.register(async (auth) => {
    const budget = loginBudgetFor(access)
    sessionRoutes(auth as ApiInstance, { access, budget })
    browserSessionRoutes(auth as ApiInstance, { access, authenticate: routeDeps.authenticate, budget })
  }, { prefix: '/v1/auth' })
  await app.register(async (v1) => {
    requireAuthentication(v1, routeDeps.authenticate, budgets)
    const diskReserve = deps.diskReserve
    if (diskReserve !== undefined) {
      // After authentication, before the body is read. Reads go on: they write only audit
      // rows, which the reserve's margin holds; so do /v1/auth logins and refreshes.
      v1.addHook('onRequest', async (request, reply) => {
        if (READ_METHODS.has(request.method) || !diskReserve.low()) return
        reply.header('retry-after', DISK_LOW_RETRY_AFTER_SECONDS)
        throw new VigilError('VIGIL_ERR_DISK_LOW', 'server storage is low: writes are refused until space is freed, retry later')
      })
    }
    patientRoutes(v1, routeDeps)
    deviceRoutes(v1, routeDeps)
    deviceAssignmentRoutes(v1, routeDeps)
    deviceAssignmentCorrectionRoutes(v1, routeDeps)
    deviceCredentialRoutes(v1, routeDeps)
    deviceRejectionRoutes(v1, routeDeps)
    deviceRejectionReplayRoutes(v1, routeDeps)
    readingRoutes(v1, routeDeps)
    if (routeDeps.patientRecords !== undefined) patientRecordRoutes(v1, { ...routeDeps, patientRecords: routeDeps.patientRecords })
    if (routeDeps.alerts !== undefined) alertRoutes(v1, { ...routeDeps, alerts: routeDeps.alerts })
    if (routeDeps.alerts !== undefined) onCallRoutes(v1, { ...routeDeps, access, onCall: routeDeps.alerts.onCall })
    accessRoutes(v1, { ...routeDeps, access })
    alertRuleRoutes(v1, routeDeps)
    jobRoutes(v1, routeDeps)
    // Voice notes need the PHI keys (their store encrypts audio and transcripts).
    if (routeDeps.voiceNotes !== undefined) voiceNoteRoutes(v1, { ...routeDeps, voiceNotes: routeDeps.voiceNotes })
    if (routeDeps.spool != null) spoolRoutes(v1, { ...routeDeps, spool: routeDeps.spool })
    worklistRoutes(v1, routeDeps)
  }, { prefix: '/v1' })

  if (deps.webApp !== undefined) registerWebApp(app as unknown as FastifyInstance, deps.webApp)
  healthRoutes(app, { ...deps, isUnderPressure: () => app.isUnderPressure() })
  metricsRoutes(app, deps)

  return app as unknown as FastifyInstance
}

/** The caller's limits over the defaults; a bad value fails here, naming the option. */
function resolveLimits (deps: Partial<ApiLimits>): ApiLimits {
  const limits = { ...apiLimitDefaults }
  for (const name of Object.keys(apiLimitDefaults) as Array<keyof ApiLimits>) {
    const value = deps[name]
    if (value !== undefined) limits[name] = value
  }
  const check = (name: keyof ApiLimits, ok: (v: number) => boolean, rule: string): void => {
    const value = limits[name]
    if (typeof value !== 'number' || !ok(value)) throw new Error(`buildApi: ${name} must be ${rule} (got ${String(value)})`)
  }
  const integerFrom = (min: number) => (v: number) => Number.isSafeInteger(v) && v >= min
  check('rateLimitPerMinute', integerFrom(1), 'an integer of at least 1')
  check('unauthenticatedRateLimitPerMinute', integerFrom(1), 'an integer of at least 1')
  check('maxEventLoopDelayMs', (v) => Number.isFinite(v) && v >= 0, 'a number of milliseconds, 0 or more')
  check('maxEventLoopUtilization', (v) => v >= 0 && v <= 1, 'between 0 and 1')
  check('maxHeapUsedBytes', integerFrom(0), 'an integer, 0 or more')
  check('maxRssBytes', integerFrom(0), 'an integer, 0 or more')
  check('loadSampleIntervalMs', integerFrom(10), 'an integer of at least 10')
  return limits
}

function answerRouterError (err: FastifyError, request: FastifyRequest, reply: FastifyReply): void {
  const refused = clientError(err) ?? vigil('VIGIL_ERR_VALIDATION', 'the URL is not valid')
  reply.header('x-request-id', request.id).header('cache-control', 'no-store').header('x-content-type-options', 'nosniff')
  reply.code(errorCatalogue[refused.code]).send(refused)
}

// Node refuses these before Fastify sees a request; Fastify's default answer has no code.
const MALFORMED_REQUESTS: Record<string, { code: ErrorCode, message: string }> = {
  ERR_HTTP_REQUEST_TIMEOUT: { code: 'VIGIL_ERR_REQUEST_TIMEOUT', message: `the request did not arrive within ${REQUEST_TIMEOUT_MS / 1000} s` },
  HPE_HEADER_OVERFLOW: { code: 'VIGIL_ERR_HEADERS_TOO_LARGE', message: `the request line and headers are larger than ${MAX_HEADER_BYTES} bytes` }
}

/** Fastify's clientErrorHandler (Node's 'clientError' event), bound to the instance. */
function answerMalformedRequest (this: FastifyInstance, err: Error & { code?: string }, socket: Socket): void {
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
  if (err instanceof AssignmentOrderError || err instanceof AssignmentChangedError) return vigil('VIGIL_ERR_CONFLICT', err.message)
  if (err instanceof NoCurrentAssignmentError) return vigil('VIGIL_ERR_NOT_FOUND', err.message)
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

async function handleError (this: unknown, err: unknown, request: FastifyRequest, reply: FastifyReply): Promise<ErrorResponse> {
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
  // Stored PHI that cannot be read (voice notes, records): a 500 with its own code, logged by key id only.
  if (err instanceof UnknownKeyError) {
    request.log.error({ keyId: err.keyId }, 'stored data is encrypted under a key that is not configured')
    reply.code(500)
    return { code: 'VIGIL_ERR_KEY_UNAVAILABLE', message: 'stored data is encrypted under a key the server does not have', requestId: request.id }
  }
  if (err instanceof DecryptionError) {
    request.log.error({ reason: err.reason }, 'stored data failed to decrypt')
    reply.code(500)
    return { code: 'VIGIL_ERR_DECRYPTION_FAILED', message: 'stored data could not be decrypted', requestId: request.id }
  }
  // Never echo internals: the id lets an operator find the logged error.
  request.log.error({ err }, 'request failed')
  reply.code(500)
  return { code: 'VIGIL_ERR_INTERNAL', message: 'internal error', requestId: request.id }
}
