import { Type } from '@fastify/type-provider-typebox'
import type { ApiDeps, ApiInstance } from '../app.ts'
import { VigilError } from '../errors.ts'
import { DeviceCredential, IdParams, errorResponses } from '../schemas.ts'

export function deviceCredentialRoutes (app: ApiInstance, { devices }: Pick<ApiDeps, 'devices'>): void {
  app.post('/devices/:id/credentials', {
    config: { permission: 'credentials:write' },
    schema: {
      tags: ['devices'],
      summary: 'Issue a new MQTT credential',
      description: 'Revokes the previous credential and disconnects its sessions. The password is shown once.',
      params: IdParams,
      response: { 201: DeviceCredential, ...errorResponses(404) }
    }
  }, async (request, reply) => {
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
      description: 'Disconnects the device. 404 VIGIL_ERR_NOT_FOUND when it has no active credential.',
      params: IdParams,
      response: { 204: Type.Null({ description: 'Revoked' }), ...errorResponses(404) }
    }
  }, async (request, reply) => {
    const id = request.params.id
    if (await devices.get(id) === null) throw new VigilError('VIGIL_ERR_UNKNOWN_DEVICE', 'no device with this id')
    if (!await devices.revokeCredential(id)) throw new VigilError('VIGIL_ERR_NOT_FOUND', 'the device has no active credential')
    return await reply.code(204).send(null)
  })
}
