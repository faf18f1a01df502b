import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import Fastify from 'fastify'
import type { FastifyInstance } from 'fastify'
import { requireAuthentication } from '../access/auth.ts'
import { refuseWritesWhileDiskLow } from './plugins/disk-reserve.ts'
import { registerDurableWrites } from './plugins/durable-writes.ts'
import { answerNotFound, handleError } from './plugins/error-handler.ts'
import { httpServerOptions, registerUrlLengthLimit } from './plugins/http-limits.ts'
import { registerLoadShedding } from './plugins/load-shedding.ts'
import { logSerializers } from './plugins/log-serializers.ts'
import { answerMalformedRequest, answerRouterError } from './plugins/malformed-requests.ts'
import { registerOpenApi } from './plugins/openapi.ts'
import { registerRequestBudgets } from './plugins/rate-limits.ts'
import { registerRequestIds, requestIdOptions } from './plugins/request-ids.ts'
import { registerRequestMetrics } from './plugins/request-metrics.ts'
import { registerSecurityHeaders } from './plugins/security-headers.ts'
import { createSerializerCompiler } from './plugins/serializer.ts'
import { createValidatorCompiler } from './plugins/validator.ts'
import { registerWebApp } from './plugins/web-app.ts'
import { alertRoutes } from './routes/alerts.ts'
import { apiTokenRoutes } from './routes/api-tokens.ts'
import { auditRoutes } from './routes/audit.ts'
import { breakGlassRoutes } from './routes/break-glass.ts'
import { careTeamRoutes } from './routes/care-teams.ts'
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
import { loginBudgetFor, sessionRoutes } from './routes/sessions.ts'
import { browserSessionRoutes } from './routes/browser-session.ts'
import { readingRoutes } from './routes/readings.ts'
import { roleRoutes } from './routes/roles.ts'
import { userRoutes } from './routes/users.ts'
import { alertRuleRoutes } from './routes/alert-rules.ts'
import { voiceNoteRoutes } from './routes/voice-notes.ts'
import { spoolRoutes } from './routes/spool.ts'
import { fhirRoutes } from './routes/fhir.ts'
import { readingsCsvRoutes } from './routes/readings-csv.ts'
import { researchExportRoutes } from './routes/research-exports.ts'
import { worklistRoutes } from './routes/worklist.ts'
import type { ApiDeps, ApiInstance, ApiLimits, RouteDeps } from './routes/route-deps.ts'
import { defaults } from '../config/schema/defaults.ts'

export type { ApiDeps, ApiInstance, ApiLimits, RouteDeps } from './routes/route-deps.ts'
export { isDiskFull, isUnavailable } from './plugins/error-handler.ts'


export const apiLimitDefaults: Readonly<ApiLimits> = {
  // The same defaults as API_RATE_LIMIT_PER_MINUTE and API_UNAUTHENTICATED_RATE_LIMIT_PER_MINUTE
  // (config/schema/defaults.ts says why these numbers).
  rateLimitPerMinute: defaults.API_RATE_LIMIT_PER_MINUTE,
  unauthenticatedRateLimitPerMinute: defaults.API_UNAUTHENTICATED_RATE_LIMIT_PER_MINUTE,
  // API_MAX_EVENT_LOOP_DELAY_MS (defaults.ts says why 1 s over a 5 s sample).
  maxEventLoopDelayMs: defaults.API_MAX_EVENT_LOOP_DELAY_MS,
  // Off: utilization near 1 is normal load here, not overload. Embedded PGlite runs its
  // queries on this event loop, and at 0.98 (even over 5 s samples) the API refused the
  // end-to-end tests' provisioning of 100 devices at once and the embedded flow's reads.
  maxEventLoopUtilization: 0,
  // Off: what the heap may use depends on the host and --max-old-space-size.
  maxHeapUsedBytes: 0,
  maxRssBytes: 0,
  loadSampleIntervalMs: 5000
}


/**
 * The HTTP API, ready to `listen()` (or `inject()` in tests). The caller owns the
 * dependencies; `close()` on the returned instance closes only the HTTP side.
 */
export async function buildApi (deps: ApiDeps): Promise<FastifyInstance> {
  const limits = resolveLimits(deps)
  const app = Fastify({
    loggerInstance: deps.log.child({ component: 'api' }, { serializers: logSerializers }),
    ...requestIdOptions,
    ...httpServerOptions,
    trustProxy: deps.trustProxy ?? false,
    frameworkErrors: answerRouterError,
    clientErrorHandler: answerMalformedRequest
  }).withTypeProvider<TypeBoxTypeProvider>() as unknown as ApiInstance

  const validator = createValidatorCompiler()
  app.setValidatorCompiler(validator.compiler)
  const serializer = createSerializerCompiler()
  app.setSerializerCompiler(serializer.compiler)
  app.decorate('compileAllSchemas', () => ({ validators: validator.compileAll(), serializers: serializer.compileAll() }))
  app.decorateRequest('principal', null)
  app.setErrorHandler(handleError)

  // Root onRequest hooks run in this order, for every route and for 404s, and a refusal
  // ends the chain: security headers first so every answer carries them, then the cheap
  // refusals (URL length, load shedding, the address budget) before any route work.
  await registerSecurityHeaders(app)
  registerRequestIds(app)
  registerUrlLengthLimit(app)
  registerLoadShedding(app, {
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
  app.setNotFoundHandler(answerNotFound)
  // An onResponse hook: every answer is timed, refusals by the hooks above included.
  registerRequestMetrics(app, (timing, seconds) => { deps.metrics.httpRequestSeconds.observe({ ...timing }, seconds) })
  // Embedded: a successful write's answer waits for the data directory's sync (PGlite runs with fsync off).
  if (deps.db.kind === 'pglite') registerDurableWrites(app, deps.db.flushToDisk)

  await registerOpenApi(app, limits)

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
    if (deps.diskReserve !== undefined) refuseWritesWhileDiskLow(v1, deps.diskReserve)
    patientRoutes(v1, routeDeps)
    deviceRoutes(v1, routeDeps)
    deviceAssignmentRoutes(v1, routeDeps)
    deviceAssignmentCorrectionRoutes(v1, routeDeps)
    deviceCredentialRoutes(v1, routeDeps)
    deviceRejectionRoutes(v1, routeDeps)
    deviceRejectionReplayRoutes(v1, routeDeps)
    readingRoutes(v1, routeDeps)
    readingsCsvRoutes(v1, routeDeps)
    if (routeDeps.patientRecords !== undefined) patientRecordRoutes(v1, { ...routeDeps, patientRecords: routeDeps.patientRecords })
    if (routeDeps.alerts !== undefined) alertRoutes(v1, { ...routeDeps, alerts: routeDeps.alerts })
    if (routeDeps.alerts !== undefined) onCallRoutes(v1, { ...routeDeps, access, onCall: routeDeps.alerts.onCall })
    // People and access (issue 3 §7); login, refresh and logout are public: sessionRoutes above.
    userRoutes(v1, routeDeps)
    roleRoutes(v1, routeDeps)
    careTeamRoutes(v1, routeDeps)
    breakGlassRoutes(v1, routeDeps)
    auditRoutes(v1, routeDeps)
    apiTokenRoutes(v1, routeDeps)
    alertRuleRoutes(v1, routeDeps)
    jobRoutes(v1, routeDeps)
    // Voice notes need the PHI keys (their store encrypts audio and transcripts).
    if (routeDeps.voiceNotes !== undefined) voiceNoteRoutes(v1, { ...routeDeps, voiceNotes: routeDeps.voiceNotes })
    if (routeDeps.spool != null) spoolRoutes(v1, { ...routeDeps, spool: routeDeps.spool })
    if (routeDeps.researchExports !== undefined) researchExportRoutes(v1, { ...routeDeps, researchExports: routeDeps.researchExports })
    worklistRoutes(v1, routeDeps)
  }, { prefix: '/v1' })

  // FHIR R4 read and search (issue 17): the same authentication, access policy and audit as /v1;
  // described by its own CapabilityStatement (GET /fhir/R4/metadata), not in /docs.
  await app.register(async (fhir) => { await fhirRoutes(fhir as ApiInstance, { ...routeDeps, budgets }) }, { prefix: '/fhir/R4' })

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
