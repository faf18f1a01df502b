import type { ApiInstance, RouteDeps } from './route-deps.ts'
import { VigilError } from '../../errors/catalogue.ts'
import { IdParams, PageQuery, Rejection, decodeSerialCursor, errorResponses, page, pageOf } from '../schemas/common.ts'
import { auditActor } from '../../access/access-policy.ts'
import { REJECTION_GENERIC_MESSAGES } from '../../readings/reading.ts'

/**
 * Rejected payloads are PHI of the patient the device was assigned to when they arrived
 * (issue 11 §5). Everyone with devices:read gets each rejection's topic, reason, size and time,
 * which is what debugging a device needs; the payload and the recorded message (which may quote
 * it; others get the reason's generic message) go only to a caller with phi:read who reaches
 * that patient, and each such read is audited against the patient. A clinician who does not
 * reach the patient is audited as refused; roles that reach no patient (device integrators,
 * developers) read no PHI and leave no row.
 */
export function deviceRejectionRoutes (app: ApiInstance, { devices, rejections, access, patientAccess }: Pick<RouteDeps, 'devices' | 'rejections' | 'access' | 'patientAccess'>): void {
  app.get('/devices/:id/rejections', {
    config: { permission: 'devices:read' },
    schema: {
      tags: ['devices'],
      summary: 'Payloads ingest refused from this device, newest first',
      description: 'Each with its reason. payload (the first 4096 bytes) is the PHI of the patient the device was assigned to when it ' +
        'arrived: it is shown only to callers with phi:read who reach that patient (audited), else null with payloadRedacted: true, and message is then the reason\'s generic one.',
      params: IdParams,
      querystring: PageQuery,
      response: { 200: page(Rejection), ...errorResponses(404) }
    }
  }, async (request) => {
    const principal = request.principal!
    const id = request.params.id
    if (await devices.get(id) === null) throw new VigilError('VIGIL_ERR_UNKNOWN_DEVICE', 'no device with this id')
    const { limit, cursor } = request.query
    const { items, nextCursor } = pageOf(await rejections.list(id, { limit: limit + 1, beforeId: decodeSerialCursor(cursor) }), limit, (last) => last.id)

    const mayReadPhi = principal.permissions.has('phi:read') && principal.patientScopes.size > 0
    const revealed = new Set<string | null>()
    if (mayReadPhi) {
      for (const patientId of new Set(items.map((r) => r.patientId))) {
        if (patientId === null) {
          // Whose it is is unknown: only a principal reaching every patient, audited with no patient.
          if (!principal.patientScopes.has('all')) continue
          await access.audit.record({ ...auditActor(request), patientId: null, action: 'rejections:read', fields: ['payload'], outcome: 'allowed', details: { deviceId: id } })
          revealed.add(null)
          continue
        }
        try {
          await patientAccess.require(request, patientId, { action: 'rejections:read', fields: ['payload'], details: { deviceId: id } })
          revealed.add(patientId)
        } catch (err) {
          if (!(err instanceof VigilError && err.code === 'VIGIL_ERR_UNKNOWN_PATIENT')) throw err
        }
      }
    }
    return {
      items: items.map(({ patientId, payload, ...rest }) => revealed.has(patientId)
        ? { ...rest, payload, payloadRedacted: false }
        // The recorded message can quote the payload (a metric name, a unit): the reason's own instead.
        : { ...rest, message: REJECTION_GENERIC_MESSAGES[rest.reason], payload: null, payloadRedacted: true }),
      nextCursor
    }
  })
}
