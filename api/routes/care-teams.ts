import { Type } from '@fastify/type-provider-typebox'
import { actorOf } from '../../access/access-policy.ts'
import { VigilError } from '../../errors/catalogue.ts'
import { CareTeamAssignment, NewCareTeamAssignment, SerialParams } from '../schemas/access.ts'
import { IdParams, Uuid, errorResponses, instantMs, invalid } from '../schemas/common.ts'
import type { ApiInstance, RouteDeps } from './route-deps.ts'

/** Care teams: which clinicians reach which patient, for which period (issue 3 §4). */
export function careTeamRoutes (app: ApiInstance, deps: RouteDeps): void {
  const { access, patients, patientAccess } = deps
  const { people } = access

  app.post('/care-teams', {
    config: { permission: 'care-teams:write' },
    schema: {
      tags: ['people'],
      summary: 'Put a clinician on a patient\'s care team for a period',
      description: 'The clinician must hold a clinician-category role (nurse, doctor or a custom one).',
      body: NewCareTeamAssignment,
      response: { 201: CareTeamAssignment, ...errorResponses(404, 413) }
    }
  }, async (request, reply) => {
    const { clinicianId, patientId } = request.body
    const validFrom = request.body.validFrom === undefined ? access.now() : new Date(instantMs(request.body.validFrom, 'body/validFrom'))
    const validTo = request.body.validTo === undefined || request.body.validTo === null ? null : new Date(instantMs(request.body.validTo, 'body/validTo'))
    if (validTo !== null && validTo.getTime() <= validFrom.getTime()) throw invalid('body/validTo', 'must be after validFrom')
    const clinician = await people.getUser(clinicianId)
    if (clinician === null) throw new VigilError('VIGIL_ERR_UNKNOWN_USER', 'no user with this id')
    const roles = (await people.listRoles()).filter((r) => clinician.roles.includes(r.id))
    if (!roles.some((r) => r.category === 'clinician')) throw invalid('body/clinicianId', 'must be a user holding a clinician role (nurse, doctor …)')
    if (await patients.get(patientId) === null) throw new VigilError('VIGIL_ERR_UNKNOWN_PATIENT', 'no patient with this id')
    reply.code(201)
    return await people.assignCareTeam({ clinicianId, patientId, validFrom, validTo, assignedBy: actorOf(request) })
  })

  app.get('/care-teams', {
    config: { permission: 'care-teams:write' },
    schema: {
      tags: ['people'],
      summary: 'A clinician\'s care-team assignments, current and past (newest first)',
      querystring: Type.Object({ clinicianId: Uuid }, { additionalProperties: false }),
      response: { 200: Type.Object({ items: Type.Array(CareTeamAssignment) }), ...errorResponses() }
    }
  }, async (request) => ({ items: await people.careTeamsOfClinician(request.query.clinicianId) }))

  app.delete('/care-teams/:id', {
    config: { permission: 'care-teams:write' },
    schema: {
      tags: ['people'],
      summary: 'End a care-team assignment now',
      description: 'The row is kept (history); its validTo becomes now unless it ended earlier.',
      params: SerialParams,
      response: { 200: CareTeamAssignment, ...errorResponses(404) }
    }
  }, async (request) => {
    const ended = await people.endCareTeam(request.params.id, access.now())
    if (ended === null) throw new VigilError('VIGIL_ERR_NOT_FOUND', 'no care-team assignment with this id')
    return ended
  })

  app.get('/patients/:id/care-team', {
    config: { permission: 'patients:read' },
    schema: {
      tags: ['people'],
      summary: 'A patient\'s care-team assignments, current and past',
      params: IdParams,
      response: { 200: Type.Object({ items: Type.Array(CareTeamAssignment) }), ...errorResponses(404) }
    }
  }, async (request) => {
    await patientAccess.require(request, request.params.id, { action: 'care-team:read' })
    return { items: await people.careTeamOf(request.params.id) }
  })
}
