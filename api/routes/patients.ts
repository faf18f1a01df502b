import type { ApiDeps, ApiInstance } from '../app.ts'
import { VigilError } from '../errors.ts'
import { IdParams, NewPatient, PageQuery, Patient, decodeIdCursor, errorResponses, page, pageOf } from '../schemas.ts'

export function patientRoutes (app: ApiInstance, { patients }: Pick<ApiDeps, 'patients'>): void {
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
    return await patients.create(request.body.displayName.trim())
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
    const patient = await patients.get(request.params.id)
    if (patient === null) throw new VigilError('VIGIL_ERR_UNKNOWN_PATIENT', 'no patient with this id')
    return patient
  })

  app.get('/patients', {
    config: { permission: 'patients:read' },
    schema: {
      tags: ['patients'],
      summary: 'List patients (ordered by id)',
      querystring: PageQuery,
      response: { 200: page(Patient), ...errorResponses() }
    }
  }, async (request) => {
    const { limit, cursor } = request.query
    const rows = await patients.list({ limit: limit + 1, afterId: decodeIdCursor(cursor) })
    return pageOf(rows, limit, (last) => last.id)
  })
}
