import { Type } from '@fastify/type-provider-typebox'
import type { FastifyRequest } from 'fastify'
import type { ApiInstance, RouteDeps } from './route-deps.ts'
import { VigilError } from '../../errors/catalogue.ts'
import type { PatientAccessPolicy } from '../../access/patient-access.ts'
import { Assignment, AssignmentRequest, IdParams, errorResponses, instantMs } from '../schemas/common.ts'

/**
 * Changing a device's assignment starts or stops a patient's monitoring, so it needs the
 * patients on both sides (issue 11 §1): the device's current patient (whose readings stop, or
 * would go to someone else) and, for PUT, the new one. A role that manages devices but reaches
 * no patient (device integrator, developer) registers and provisions devices and cannot do
 * either; admins and the patients' care teams can. Each side writes its own audit row
 * (allowed or denied), each naming the device and both patients.
 */
export function deviceAssignmentRoutes (app: ApiInstance, { devices, patientAccess }: Pick<RouteDeps, 'devices' | 'patientAccess'>): void {
  app.put('/devices/:id/assignment', {
    config: { permission: 'devices:write' },
    schema: {
      tags: ['devices'],
      summary: 'Assign the device to a patient',
      description: 'Ends the current assignment at validFrom (kept in the history) and opens a new one. ' +
        'Readings are attributed to the patient assigned at the reading\'s time. ' +
        'validFrom before the current assignment\'s start gives 409 VIGIL_ERR_CONFLICT. ' +
        'The caller must reach the new patient (admins, the patient\'s care team; others get 404 VIGIL_ERR_UNKNOWN_PATIENT) ' +
        'and the device\'s current patient, if any (403 VIGIL_ERR_FORBIDDEN otherwise).',
      params: IdParams,
      body: AssignmentRequest,
      response: { 200: Assignment, ...errorResponses(404, 409, 413) }
    }
  }, async (request) => {
    const validFrom = request.body.validFrom === undefined ? new Date() : new Date(instantMs(request.body.validFrom, 'body/validFrom'))
    const device = await devices.get(request.params.id)
    if (device === null) throw new VigilError('VIGIL_ERR_UNKNOWN_DEVICE', 'no device with this id')
    const previous = device.patientId
    const next = request.body.patientId
    const details = { deviceId: device.id, previousPatientId: previous, patientId: next }
    if (previous !== null && previous !== next) await requireCurrentPatient(patientAccess, request, previous, details)
    await patientAccess.require(request, next, { action: 'devices:assign', details })
    // Refused (409) if the assignment changed since it was checked above.
    return await devices.assign(device.id, next, validFrom, null, previous)
  })

  app.delete('/devices/:id/assignment', {
    config: { permission: 'devices:write' },
    schema: {
      tags: ['devices'],
      summary: 'End the current assignment now',
      description: 'Readings the device sends afterwards are rejected as unassigned. 404 VIGIL_ERR_NOT_FOUND when it has none. ' +
        'The caller must reach the device\'s current patient (403 VIGIL_ERR_FORBIDDEN otherwise): ending a patient\'s monitoring is ' +
        'for admins and the patient\'s care team, not for roles that only manage devices.',
      params: IdParams,
      response: { 204: Type.Null({ description: 'Assignment ended' }), ...errorResponses(404, 409) }
    }
  }, async (request, reply) => {
    const device = await devices.get(request.params.id)
    if (device === null) throw new VigilError('VIGIL_ERR_UNKNOWN_DEVICE', 'no device with this id')
    const current = device.patientId
    if (current === null) throw new VigilError('VIGIL_ERR_NOT_FOUND', 'the device has no current assignment')
    await requireCurrentPatient(patientAccess, request, current, { deviceId: device.id, previousPatientId: current, patientId: null })
    if (!await devices.unassign(device.id, current)) {
      throw new VigilError('VIGIL_ERR_CONFLICT', 'the device\'s assignment changed meanwhile: read it again and retry')
    }
    return await reply.code(204).send(null)
  })
}

/**
 * The device's current patient must be one the caller reaches. The refusal is 403, not the
 * usual 404: the caller named a device it may see, whose assignment (not the patient's id) it
 * already sees in GET /v1/devices/{id}. Also used for the device's credentials (device-credentials.ts).
 */
export async function requireCurrentPatient (patientAccess: PatientAccessPolicy, request: FastifyRequest, patientId: string, details: Record<string, unknown>,
  action = 'devices:unassign'): Promise<void> {
  try {
    await patientAccess.require(request, patientId, { action, details })
  } catch (err) {
    if (err instanceof VigilError && err.code === 'VIGIL_ERR_UNKNOWN_PATIENT') {
      throw new VigilError('VIGIL_ERR_FORBIDDEN', 'the device is assigned to a patient you do not reach: only that patient\'s care team or an admin can change it')
    }
    throw err
  }
}
