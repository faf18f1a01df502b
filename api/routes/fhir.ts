import type { FastifyReply, FastifyRequest } from 'fastify'
import { requireAuthentication } from '../../access/auth.ts'
import { capabilityStatementOf } from '../../fhir/capability-statement.ts'
import { operationOutcomeOf } from '../../fhir/resources.ts'
import type { ApiInstance } from './route-deps.ts'
import { FHIR_JSON, fhirBase, keepsContentType } from './fhir-context.ts'
import { fhirBulkExportRoutes } from './fhir-bulk-export.ts'
import type { FhirRouteDeps } from './fhir-context.ts'
import { fhirObservationRoutes } from './fhir-observations.ts'
import { fhirPatientRoutes } from './fhir-patients.ts'

/**
 * FHIR R4 read and search (HL7 FHIR R4 4.0.1, RESTful API), registered under /fhir/R4.
 * metadata is public (R4 §3.1.0.1.10: clients read it before authenticating); everything else
 * goes through the /v1 authentication hook, permissions, patient access policy and audit log.
 * Every error, from any hook, leaves as an OperationOutcome with the status /v1 would give.
 */
export async function fhirRoutes (app: ApiInstance, deps: FhirRouteDeps): Promise<void> {
  // One place turns the central error handler's {code, message} into an OperationOutcome, so
  // refusals from the root hooks (rate limits, load shedding) and the auth hook are covered too.
  app.addHook('onSend', async (_request, reply, payload) => {
    if (reply.statusCode < 400 || typeof payload !== 'string') return payload
    let body: unknown
    try {
      body = JSON.parse(payload)
    } catch {
      return payload
    }
    const error = body as { code?: unknown, message?: unknown, resourceType?: unknown }
    if (error === null || typeof error !== 'object' || error.resourceType !== undefined || typeof error.code !== 'string' || typeof error.message !== 'string') return payload
    reply.type(FHIR_JSON)
    return JSON.stringify(operationOutcomeOf(reply.statusCode, error as { code: string, message: string }))
  })
  app.addHook('onSend', async (_request, reply, payload) => {
    if (reply.statusCode < 400 && !keepsContentType(reply)) reply.type(FHIR_JSON)
    return payload
  })
  app.setNotFoundHandler(async (_request: FastifyRequest, reply: FastifyReply) => {
    reply.code(404)
    return { code: 'VIGIL_ERR_NOT_FOUND', message: 'no such FHIR interaction here (GET metadata lists what is implemented)' }
  })

  app.get('/metadata', { schema: { hide: true, summary: 'The CapabilityStatement: what this FHIR endpoint implements' } }, async (request) => {
    return capabilityStatementOf({
      base: fhirBase(request),
      softwareVersion: deps.softwareVersion ?? '0.1.0',
      date: STARTED_AT,
      flags: deps.alerts !== undefined,
      bulkExport: deps.bulkExports !== undefined
    })
  })

  await app.register(async (authenticated) => {
    requireAuthentication(authenticated, deps.authenticate, deps.budgets)
    // R4 §3.1.1.3 (search via POST): parameters as application/x-www-form-urlencoded.
    authenticated.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string', bodyLimit: FORM_LIMIT_BYTES }, (_request, body, done) => {
      const form: Record<string, string[]> = Object.create(null)
      for (const [name, value] of new URLSearchParams(body as string)) (form[name] ??= []).push(value)
      done(null, form)
    })
    fhirPatientRoutes(authenticated as ApiInstance, deps)
    fhirObservationRoutes(authenticated as ApiInstance, deps)
    if (deps.bulkExports !== undefined) fhirBulkExportRoutes(authenticated as ApiInstance, { ...deps, bulkExports: deps.bulkExports })
  })
}

const STARTED_AT = new Date().toISOString()
// A search form holds a few ids or codes.
const FORM_LIMIT_BYTES = 8 * 1024
