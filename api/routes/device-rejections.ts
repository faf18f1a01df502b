import type { ApiInstance, RouteDeps } from '../app.ts'
import { VigilError } from '../errors.ts'
import { IdParams, PageQuery, Rejection, decodeSerialCursor, errorResponses, page, pageOf } from '../schemas.ts'
import { auditActor } from '../access-policy.ts'

export function deviceRejectionRoutes (app: ApiInstance, { devices, rejections, access }: Pick<RouteDeps, 'devices' | 'rejections' | 'access'>): void {
  app.get('/devices/:id/rejections', {
    config: { permission: 'devices:read' },
    schema: {
      tags: ['devices'],
      summary: 'Payloads ingest refused from this device, newest first',
      description: 'Each with its reason; payload is the first 4096 bytes and may hold PHI, so this needs phi:read as well as devices:read.',
      params: IdParams,
      querystring: PageQuery,
      response: { 200: page(Rejection), ...errorResponses(404) }
    }
  }, async (request) => {
    // Payloads may hold PHI: device integrators (devices:read without phi:read) may not see them.
    if (request.principal?.permissions.has('phi:read') !== true) {
      throw new VigilError('VIGIL_ERR_FORBIDDEN', 'rejected payloads may hold PHI: this needs phi:read')
    }
    const id = request.params.id
    if (await devices.get(id) === null) throw new VigilError('VIGIL_ERR_UNKNOWN_DEVICE', 'no device with this id')
    const { limit, cursor } = request.query
    const rows = await rejections.list(id, { limit: limit + 1, beforeId: decodeSerialCursor(cursor) })
    // A payload may hold PHI of a patient no one has resolved: audited with no patient.
    if (rows.length > 0) {
      await access.audit.record({
        ...auditActor(request), patientId: null,
        action: 'rejections:read', fields: ['payload'], outcome: 'allowed'
      })
    }
    return pageOf(rows, limit, (last) => last.id)
  })
}
