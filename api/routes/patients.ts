import type { ApiInstance, RouteDeps } from './route-deps.ts'
import { VigilError } from '../../errors/catalogue.ts'
import { Type } from '@fastify/type-provider-typebox'
import type { FastifyRequest } from 'fastify'
import { IdParams, NewPatient, PageLimit, PageQuery, Patient, decodeIdCursor, errorResponses, page, pageOf } from '../schemas/common.ts'

const PatientSearch = Type.Object({
  name: Type.String({ minLength: 1, maxLength: 200, pattern: '\\S', description: 'part of the display name (any case)' }),
  limit: PageLimit,
  cursor: Type.Optional(Type.String({ maxLength: 64, description: 'nextCursor of the previous page' }))
}, { additionalProperties: false })
import { auditActor } from '../../access/access-policy.ts'

export function patientRoutes (app: ApiInstance, { patients, patientAccess, access }: Pick<RouteDeps, 'patients' | 'patientAccess' | 'access'>): void {
  app.post('/patients', {
    config: { permission: 'patients:write' },
    schema: {
      tags: ['patients'],
      summary: 'Create a patient',
      body: NewPatient,
      response: { 201: Patient, ...errorResponses(413) }
    }
  }, async (request, reply) => {
    reply.code(201)
    // The patient is also a user with the patient role (migration 003's trigger, same transaction).
    const patient = await patients.create(request.body.displayName.trim())
    await access.audit.record({
      ...auditActor(request), patientId: patient.id,
      action: 'patients:write', fields: ['displayName'], outcome: 'allowed'
    })
    return patient
  })

  app.get('/patients/:id', {
    config: { permission: 'patients:read' },
    schema: {
      tags: ['patients'],
      summary: 'One patient',
      params: IdParams,
      response: { 200: Patient, ...errorResponses(404) }
    }
  }, async (request) => {
    await patientAccess.require(request, request.params.id, { action: 'patients:read', fields: ['displayName'] })
    const patient = await patients.get(request.params.id)
    if (patient === null) throw new VigilError('VIGIL_ERR_UNKNOWN_PATIENT', 'no patient with this id')
    return patient
  })

  /** A page of the caller's visible patients by name; a cursor must be one of them (no probing where a name sorts). */
  async function visiblePage (request: FastifyRequest, query: { limit: number, cursor?: string, nameContains?: string }) {
    const visible = await patientAccess.visiblePatients(request.principal!)
    const afterId = decodeIdCursor(query.cursor)
    if (afterId !== undefined && visible !== null && !visible.has(afterId)) throw new VigilError('VIGIL_ERR_BAD_CURSOR', 'cursor is not one this API returned')
    const rows = visible !== null && visible.size === 0
      ? []
      : await patients.list({ limit: query.limit + 1, afterId, ids: visible === null ? undefined : [...visible], nameContains: query.nameContains })
    return pageOf(rows, query.limit, (last) => last.id)
  }

  app.get('/patients', {
    config: { permission: 'patients:read' },
    schema: {
      tags: ['patients'],
      summary: 'List the patients you may see, by name',
      description: 'Admins: every patient; clinicians: their care team and break-glass grants; a patient: themselves; other roles: none. ' +
        'Sorted by name (case-insensitive), then id.',
      querystring: PageQuery,
      response: { 200: page(Patient), ...errorResponses() }
    }
  }, async (request) => {
    const result = await visiblePage(request, request.query)
    // Names are PHI: one audit row per list read, with no single patient.
    if (result.items.length > 0) {
      await access.audit.record({
        ...auditActor(request), patientId: null,
        action: 'patients:list', fields: ['displayName'], outcome: 'allowed'
      })
    }
    return result
  })

  app.post('/patients/search', {
    // A read in a POST (names stay out of URLs): no sync on the embedded default.
    config: { permission: 'patients:read', durable: false },
    schema: {
      tags: ['patients'],
      summary: 'Find the patients you may see by name',
      description: 'Case-insensitive substring of the display name, sorted by name. A POST, so names stay out of URLs and access logs; ' +
        'each search is an audit row (without the search text). By medical card number: POST /v1/patients/lookup (phi:read).',
      body: PatientSearch,
      response: { 200: page(Patient), ...errorResponses(413) }
    }
  }, async (request) => {
    const { name, limit, cursor } = request.body
    const result = await visiblePage(request, { limit: limit ?? 50, cursor, nameContains: name.trim() })
    await access.audit.record({
      ...auditActor(request), patientId: null,
      action: 'patients:search', fields: ['displayName'], outcome: 'allowed'
    })
    return result
  })
}
