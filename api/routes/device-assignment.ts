import { Type } from '@fastify/type-provider-typebox'
import type { ApiInstance, RouteDeps } from '../app.ts'
import { VigilError } from '../errors.ts'
import { Assignment, AssignmentRequest, IdParams, errorResponses, instantMs } from '../schemas.ts'

export function deviceAssignmentRoutes (app: ApiInstance, { devices, patientAccess }: Pick<RouteDeps, 'devices' | 'patientAccess'>): void {
  app.put('/devices/:id/assignment', {
    config: { permission: 'devices:write' },
    schema: {
      tags: ['devices'],
      summary: 'Assign the device to a patient',
      description: 'Ends the current assignment at validFrom (kept in the history) and opens a new one. ' +
        'Readings are attributed to the patient assigned at the reading\'s time. ' +
        'validFrom before the current assignment\'s start gives 409 VIGIL_ERR_CONFLICT. ' +
        'The caller must be able to see the patient (admins, the patient\'s care team); others get 404 VIGIL_ERR_UNKNOWN_PATIENT.',
      params: IdParams,
      body: AssignmentRequest,
      response: { 200: Assignment, ...errorResponses(404, 409, 413) }
    }
  }, async (request) => {
    const validFrom = request.body.validFrom === undefined ? new Date() : new Date(instantMs(request.body.validFrom, 'body/validFrom'))
    if (await devices.get(request.params.id) === null) throw new VigilError('VIGIL_ERR_UNKNOWN_DEVICE', 'no device with this id')
    await patientAccess.require(request, request.body.patientId, { action: 'devices:assign' })
    return await devices.assign(request.params.id, request.body.patientId, validFrom, null)
  })

  app.delete('/devices/:id/assignment', {
    config: { permission: 'devices:write' },
    schema: {
      tags: ['devices'],
      summary: 'End the current assignment now',
      description: 'Readings the device sends afterwards are rejected as unassigned. 404 VIGIL_ERR_NOT_FOUND when it has none.',
      params: IdParams,
      response: { 204: Type.Null({ description: 'Assignment ended' }), ...errorResponses(404) }
    }
  }, async (request, reply) => {
    const id = request.params.id
    if (await devices.get(id) === null) throw new VigilError('VIGIL_ERR_UNKNOWN_DEVICE', 'no device with this id')
    if (!await devices.unassign(id)) throw new VigilError('VIGIL_ERR_NOT_FOUND', 'the device has no current assignment')
    return await reply.code(204).send(null)
  })
}
