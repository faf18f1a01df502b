import type { FastifyReply, FastifyRequest } from 'fastify'
import type { RequestBudgets } from '../../access/auth.ts'
import type { RouteDeps } from './route-deps.ts'

/** What the FHIR routes receive: the /v1 route deps, and the request budgets for their own auth hook. */
export type FhirRouteDeps = RouteDeps & { budgets: RequestBudgets, softwareVersion?: string }

export const FHIR_JSON = 'application/fhir+json; charset=utf-8'

/** The service base of this request (…/fhir/R4), for Bundle links and fullUrls. */
export function fhirBase (request: FastifyRequest): string {
  return `${request.protocol}://${request.host}/fhir/R4`
}

const ownContentType = new WeakSet<FastifyReply>()

/** This reply sets its own content type (bulk export manifest, NDJSON): the FHIR hook leaves it. */
export function keepContentType (reply: FastifyReply): void {
  ownContentType.add(reply)
}

export function keepsContentType (reply: FastifyReply): boolean {
  return ownContentType.has(reply)
}
