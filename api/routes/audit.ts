import type { Principal } from '../../access/auth.ts'
import { VigilError } from '../../errors/catalogue.ts'
import { AccessLogEntry, AuditQuery, AuditRow } from '../schemas/access.ts'
import { PageQuery, errorResponses, instantMs, page, pageOf } from '../schemas/common.ts'
import type { ApiInstance, RouteDeps } from './route-deps.ts'

/** The audit trail, and a signed-in patient's view of who read their record (issue 13 §4). */
export function auditRoutes (app: ApiInstance, deps: RouteDeps): void {
  const { tokens } = deps
  const { people, audit } = deps.access

  app.get('/audit', {
    config: { permission: 'audit:read' },
    schema: {
      tags: ['people'],
      summary: 'The audit trail, newest first',
      description: 'Every PHI read or write and every refusal. from inclusive, to exclusive.',
      querystring: AuditQuery,
      response: { 200: page(AuditRow), ...errorResponses() }
    }
  }, async (request) => {
    const { limit, cursor, patientId, actorId, outcome, action } = request.query
    if (cursor !== undefined && !/^[0-9]{1,18}$/.test(cursor)) throw new VigilError('VIGIL_ERR_BAD_CURSOR', 'cursor is not one this API returned')
    const from = request.query.from === undefined ? undefined : new Date(instantMs(request.query.from, 'querystring/from'))
    const to = request.query.to === undefined ? undefined : new Date(instantMs(request.query.to, 'querystring/to'))
    const rows = await audit.query({ patientId, actorId, outcome, action, from, to, beforeId: cursor, limit: limit + 1 })
    return pageOf(rows, limit, (last) => last.id)
  })

  app.get('/me/access-log', {
    config: { permission: 'patients:read' },
    schema: {
      tags: ['people'],
      summary: 'Who viewed my record (for a patient signed in), newest first',
      querystring: PageQuery,
      response: { 200: page(AccessLogEntry), ...errorResponses() }
    }
  }, async (request) => {
    const principal = request.principal as Principal
    if (principal.userId === null) throw new VigilError('VIGIL_ERR_FORBIDDEN', 'only a signed-in user has an access log')
    const { limit, cursor } = request.query
    if (cursor !== undefined && !/^[0-9]{1,18}$/.test(cursor)) throw new VigilError('VIGIL_ERR_BAD_CURSOR', 'cursor is not one this API returned')
    const rows = await audit.query({ patientId: principal.userId, outcome: 'allowed', beforeId: cursor, limit: limit + 1 })
    const { items, nextCursor } = pageOf(rows, limit, (last) => last.id)
    // Names, not bare ids (issue 13 §4): users by display name, API tokens by their name, roles by theirs.
    const actorIds = [...new Set(items.map((r) => r.actorId).filter((id): id is string => id !== null))]
    const userNames = await people.displayNames(actorIds)
    const tokenNames = await tokens.namesOf(items.filter((r) => r.actorKind === 'token').map((r) => r.actorId).filter((id): id is string => id !== null))
    const roleNames = new Map((await people.listRoles()).map((role) => [role.id, role.name]))
    const nameOf = (r: typeof items[number]): string | null => {
      if (r.actorId === null) return null
      return (r.actorKind === 'token' ? tokenNames.get(r.actorId) : userNames.get(r.actorId)) ?? null
    }
    return {
      items: items.map((r) => ({
        at: r.at,
        actorId: r.actorId,
        actorKind: r.actorKind,
        actorName: nameOf(r),
        role: r.role,
        roleNames: (r.role ?? '').split(',').filter((id) => id !== '').map((id) => roleNames.get(id) ?? id),
        action: r.action,
        fields: r.fields,
        breakGlass: r.breakGlassReason !== null
      })),
      nextCursor
    }
  })
}
