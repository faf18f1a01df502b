import type { ApiInstance, RouteDeps } from '../app.ts'
import { VigilError } from '../errors.ts'
import { IdParams, NewPatient, PageQuery, Patient, decodeIdCursor, errorResponses, page, pageOf } from '../schemas.ts'
import { auditActor } from '../access-policy.ts'

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

  app.get('/patients', {
    config: { permission: 'patients:read' },
    schema: {
      tags: ['patients'],
      summary: 'List the patients you may see (ordered by id)',
      description: 'Admins: every patient; clinicians: their care team and break-glass grants; a patient: themselves; other roles: none.',
      querystring: PageQuery,
      response: { 200: page(Patient), ...errorResponses() }
    }
  }, async (request) => {
    const { limit, cursor } = request.query
    const visible = await patientAccess.visiblePatients(request.principal!)
    const rows = visible !== null && visible.size === 0
      ? []
      : await patients.list({ limit: limit + 1, afterId: decodeIdCursor(cursor), ids: visible === null ? undefined : [...visible] })
    const result = pageOf(rows, limit, (last) => last.id)
    // Names are PHI: one audit row per list read, with no single patient.
    if (result.items.length > 0) {
      await access.audit.record({
        ...auditActor(request), patientId: null,
        action: 'patients:list', fields: ['displayName'], outcome: 'allowed'
      })
    }
    return result
  })
}
