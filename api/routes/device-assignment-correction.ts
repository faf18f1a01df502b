import { Type } from '@fastify/type-provider-typebox'
import type { ApiInstance, RouteDeps } from './route-deps.ts'
import { VigilError } from '../../errors/catalogue.ts'
import { Assignment, IdParams, errorResponses, instantMs } from '../schemas/common.ts'

const AssignmentCorrection = Type.Object({
  validFrom: Type.String({ format: 'date-time', description: 'The corrected start of the current assignment' })
}, { additionalProperties: false })

/**
 * PATCH /v1/devices/{id}/assignment: corrects when the current assignment began (issue 12:
 * a device used before it was assigned, or whose clock is behind). Readings already kept as
 * device_unassigned are then stored by POST /v1/devices/{id}/rejections/replay.
 */
export function deviceAssignmentCorrectionRoutes (app: ApiInstance, { devices, patientAccess }: Pick<RouteDeps, 'devices' | 'patientAccess'>): void {
  app.patch('/devices/:id/assignment', {
    config: { permission: 'devices:write' },
    schema: {
      tags: ['devices'],
      summary: 'Correct the start of the current assignment',
      description: 'Moves the current assignment\'s validFrom (earlier or later); the patient stays the same. ' +
        'Refused with 409 VIGIL_ERR_CONFLICT when the new start would overlap an earlier assignment of the device. ' +
        '404 VIGIL_ERR_NOT_FOUND when the device has no current assignment; the caller must be able to see its patient ' +
        '(404 VIGIL_ERR_UNKNOWN_PATIENT otherwise). Audited as devices:assignment-correct.',
      params: IdParams,
      body: AssignmentCorrection,
      response: { 200: Assignment, ...errorResponses(404, 409, 413) }
    }
  }, async (request) => {
    const validFrom = new Date(instantMs(request.body.validFrom, 'body/validFrom'))
    const device = await devices.get(request.params.id)
    if (device === null) throw new VigilError('VIGIL_ERR_UNKNOWN_DEVICE', 'no device with this id')
    if (device.patientId === null) throw new VigilError('VIGIL_ERR_NOT_FOUND', 'the device has no current assignment')
    await patientAccess.require(request, device.patientId, { action: 'devices:assignment-correct' })
    return await devices.correctStart(device.id, device.patientId, validFrom)
  })
}
