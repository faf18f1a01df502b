import type { FastifyRequest } from 'fastify'
import type { RequestBudgets } from '../../access/auth.ts'
import type { RouteDeps } from './route-deps.ts'

/** What the FHIR routes receive: the /v1 route deps, and the request budgets for their own auth hook. */
export type FhirRouteDeps = RouteDeps & { budgets: RequestBudgets, softwareVersion?: string }

export const FHIR_JSON = 'application/fhir+json; charset=utf-8'

/** The service base of this request (…/fhir/R4), for Bundle links and fullUrls. */
export function fhirBase (request: FastifyRequest): string {
  return `${request.protocol}://${request.host}/fhir/R4`
}
