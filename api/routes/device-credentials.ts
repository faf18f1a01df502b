import { Type } from '@fastify/type-provider-typebox'
import type { FastifyRequest } from 'fastify'
import { auditActor } from '../../access/access-policy.ts'
import type { ApiInstance, RouteDeps } from './route-deps.ts'
import { VigilError } from '../../errors/catalogue.ts'
import { DeviceCredential, IdParams, errorResponses } from '../schemas/common.ts'
import { requireCurrentPatient } from './device-assignment.ts'

/**
 * Whoever holds a device's credential feeds its patient's monitoring (readings, alerts that
 * resolve on normal values), and revoking it stops that monitoring. So, like changing the
 * assignment (device-assignment.ts), issuing or revoking the credential of an assigned device
 * needs the device's current patient (403 VIGIL_ERR_FORBIDDEN otherwise) and is audited
 * against that patient; an unassigned device is provisioned by device roles freely, audited
 * with no patient.
 */
export function deviceCredentialRoutes (app: ApiInstance, { devices, patientAccess, access }: Pick<RouteDeps, 'devices' | 'patientAccess' | 'access'>): void {
  async function authorize (request: FastifyRequest, deviceId: string, action: 'credentials:issue' | 'credentials:revoke'): Promise<void> {
    const device = await devices.get(deviceId)
    if (device === null) throw new VigilError('VIGIL_ERR_UNKNOWN_DEVICE', 'no device with this id')
    const patientId = device.patientId
    if (patientId !== null) {
      await requireCurrentPatient(patientAccess, request, patientId, { deviceId, patientId }, action)
      return
    }
    await access.audit.record({ ...auditActor(request), patientId: null, action, fields: [], outcome: 'allowed', details: { deviceId, patientId: null } })
  }

  app.post('/devices/:id/credentials', {
    config: { permission: 'credentials:write' },
    schema: {
      tags: ['devices'],
      summary: 'Issue a new MQTT credential',
      description: 'Revokes the previous credential and disconnects its sessions. The password is shown once. ' +
        'For an assigned device the caller must reach its current patient (403 VIGIL_ERR_FORBIDDEN otherwise).',
      params: IdParams,
      response: { 201: DeviceCredential, ...errorResponses(404) }
    }
  }, async (request, reply) => {
    await authorize(request, request.params.id, 'credentials:issue')
    const credential = await devices.rotateCredential(request.params.id)
    // RFC 9111 §5.2.2.5: no cache along the way may keep the secret.
    reply.code(201).header('cache-control', 'no-store')
    return credential
  })

  app.delete('/devices/:id/credentials', {
    config: { permission: 'credentials:write' },
    schema: {
      tags: ['devices'],
      summary: 'Revoke the MQTT credential',
      description: 'Disconnects the device. 404 VIGIL_ERR_NOT_FOUND when it has no active credential. ' +
        'For an assigned device the caller must reach its current patient (403 VIGIL_ERR_FORBIDDEN otherwise).',
      params: IdParams,
      response: { 204: Type.Null({ description: 'Revoked' }), ...errorResponses(404) }
    }
  }, async (request, reply) => {
    const id = request.params.id
    await authorize(request, id, 'credentials:revoke')
    if (!await devices.revokeCredential(id)) throw new VigilError('VIGIL_ERR_NOT_FOUND', 'the device has no active credential')
    return await reply.code(204).send(null)
  })
}
