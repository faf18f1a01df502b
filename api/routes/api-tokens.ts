import { Type } from '@fastify/type-provider-typebox'
import { actorOf, scopesOf } from '../../access/access-policy.ts'
import type { Principal } from '../../access/auth.ts'
import { VigilError } from '../../errors/catalogue.ts'
import { ApiToken, CreatedApiToken, NewApiToken } from '../schemas/access.ts'
import { IdParams, errorResponses } from '../schemas/common.ts'
import type { ApiInstance, RouteDeps } from './route-deps.ts'

/** Permissions that reach patient data: a token made by a non-admin may hold none of them. */
export const phiPermissions = new Set([
  'readings:read', 'patients:read', 'patients:write', 'phi:read', 'phi:write', 'audit:read', 'break-glass',
  'alerts:read', 'alerts:ack', 'overrides:write', 'jobs:read', 'jobs:write', 'voice-notes:read', 'voice-notes:write',
  'alerts:comment', 'clinical-notes:read', 'voice-notes:release', 'users:admin', 'roles:admin', 'care-teams:write'
])

function reachesEveryPatient (p: Principal): boolean {
  return p.patientScopes.has('all')
}

/** API tokens for machines, each bound to one role and never more than its creator holds. */
export function apiTokenRoutes (app: ApiInstance, deps: RouteDeps): void {
  const { tokens } = deps
  const { people } = deps.access

  app.post('/tokens', {
    config: { permission: 'tokens:write' },
    schema: {
      tags: ['people'],
      summary: 'Create an API token bound to a role (for machines)',
      description: 'A token never gets more than its creator holds. Creators who do not reach every patient (application ' +
        'developers) may only bind roles that reach no patient and hold no PHI permission.',
      body: NewApiToken,
      response: { 201: CreatedApiToken, ...errorResponses(404, 413) }
    }
  }, async (request, reply) => {
    const principal = request.principal as Principal
    const role = await people.getRole(request.body.role)
    if (role === null) throw new VigilError('VIGIL_ERR_UNKNOWN_ROLE', `no role ${request.body.role}`)
    const beyond = role.permissions.filter((p) => !principal.permissions.has(p as never))
    if (beyond.length > 0) throw new VigilError('VIGIL_ERR_FORBIDDEN', `the role holds permissions you do not: ${beyond.join(', ')}`)
    if (!reachesEveryPatient(principal) &&
      (scopesOf([role.category]).size > 0 || role.permissions.some((p) => phiPermissions.has(p)))) {
      throw new VigilError('VIGIL_ERR_FORBIDDEN', 'your tokens may only hold roles without patient data (non-PHI endpoints)')
    }
    const created = await tokens.create(request.body.name.trim(), role.id, actorOf(request))
    reply.code(201).header('cache-control', 'no-store')
    return { id: created.id, role: role.id, token: created.token }
  })

  app.get('/tokens', {
    config: { permission: 'tokens:write' },
    schema: {
      tags: ['people'],
      summary: 'Live API tokens (all for admins; your own otherwise)',
      response: { 200: Type.Object({ items: Type.Array(ApiToken) }), ...errorResponses() }
    }
  }, async (request) => {
    const principal = request.principal as Principal
    const all = await tokens.list()
    return { items: reachesEveryPatient(principal) ? all : all.filter((t) => t.createdBy === actorOf(request)) }
  })

  app.delete('/tokens/:id', {
    config: { permission: 'tokens:write' },
    schema: {
      tags: ['people'],
      summary: 'Revoke an API token (admins: any; others: their own)',
      params: IdParams,
      response: { 204: Type.Null({ description: 'Revoked' }), ...errorResponses(404) }
    }
  }, async (request, reply) => {
    const principal = request.principal as Principal
    const token = (await tokens.list()).find((t) => t.id === request.params.id)
    if (token === undefined || (!reachesEveryPatient(principal) && token.createdBy !== actorOf(request))) {
      throw new VigilError('VIGIL_ERR_NOT_FOUND', 'no live token with this id')
    }
    await tokens.revoke(token.id)
    return await reply.code(204).send(null)
  })
}
