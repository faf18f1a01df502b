import { Type } from '@fastify/type-provider-typebox'
import type { OnCallStore } from '../../alerts/lifecycle/on-call.ts'
import type { ApiInstance, RouteDeps } from './route-deps.ts'
import { VigilError } from '../../errors/catalogue.ts'
import { IdParams, Uuid, errorResponses, instantMs, invalid } from '../schemas/common.ts'

const Instant = Type.String({ format: 'date-time' })
// An escalation tier's notify name (alerts/engine/rule-set.ts NAME_PATTERN): a role id such as nurse,
// doctor, or a team with no role of its own, such as rapid_response.
const TierRole = Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$', description: "An escalation tier's notify name: nurse, doctor, rapid_response …" })
const MAX_SHIFT_MS = 31 * 86_400_000

const OnCallShift = Type.Object({
  id: Type.String(),
  patientId: Uuid,
  userId: Uuid,
  role: Type.String(),
  from: Instant,
  to: Instant,
  setBy: Type.Union([Type.String(), Type.Null()])
})

const NewOnCallShift = Type.Object({
  userId: Uuid,
  role: TierRole,
  from: Type.Optional(Type.String({ format: 'date-time', description: 'Default: now' })),
  to: Type.String({ format: 'date-time', description: 'End of the shift (exclusive); at most 31 days after from' })
}, { additionalProperties: false })

/**
 * The on-call roster of a patient's care team: admins set who is on call in which role and
 * when; escalation tiers naming that role reach them (docs/alerts.md).
 */
export function onCallRoutes (app: ApiInstance, deps: Pick<RouteDeps, 'patientAccess' | 'patients' | 'access'> & { onCall: OnCallStore }): void {
  const { onCall, patientAccess } = deps

  app.post('/patients/:id/on-call', {
    config: { permission: 'care-teams:write' },
    schema: {
      tags: ['people'],
      summary: "Put someone on call for a patient's care team in a role, for a time window",
      params: IdParams,
      body: NewOnCallShift,
      response: { 201: OnCallShift, ...errorResponses(404, 413) }
    }
  }, async (request, reply) => {
    await patientAccess.require(request, request.params.id, { action: 'on-call:write' })
    const from = request.body.from === undefined ? Date.now() : instantMs(request.body.from, 'body/from')
    const to = instantMs(request.body.to, 'body/to')
    if (to <= from) throw invalid('body/to', 'must be after from')
    if (to - from > MAX_SHIFT_MS) throw invalid('body/to', 'a shift may last at most 31 days')
    const user = await deps.access.people.getUser(request.body.userId)
    if (user === null || !user.active) throw new VigilError('VIGIL_ERR_UNKNOWN_USER', 'no active user with this id')
    const principal = request.principal!
    reply.code(201)
    return await onCall.add({
      patientId: request.params.id, userId: user.id, role: request.body.role, from: new Date(from), to: new Date(to), setBy: principal.userId ?? `token:${principal.tokenId}`
    })
  })

  app.get('/patients/:id/on-call', {
    config: { permission: 'alerts:read' },
    schema: {
      tags: ['people'],
      summary: "The on-call roster of a patient's care team: shifts not yet ended",
      params: IdParams,
      response: { 200: Type.Object({ items: Type.Array(OnCallShift) }), ...errorResponses(404) }
    }
  }, async (request) => {
    await patientAccess.require(request, request.params.id, { action: 'on-call:read' })
    return { items: await onCall.of(request.params.id, new Date()) }
  })

  app.delete('/on-call/:id', {
    config: { permission: 'care-teams:write' },
    schema: {
      tags: ['people'],
      summary: 'Remove an on-call shift',
      params: Type.Object({ id: Type.String({ pattern: '^[0-9]{1,18}$' }) }, { additionalProperties: false }),
      response: { 200: OnCallShift, ...errorResponses(404) }
    }
  }, async (request) => {
    const removed = await onCall.remove(request.params.id)
    if (removed === null) throw new VigilError('VIGIL_ERR_NOT_FOUND', 'no on-call shift with this id')
    return removed
  })
}
