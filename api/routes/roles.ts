import { Type } from '@fastify/type-provider-typebox'
import { actorOf } from '../../access/access-policy.ts'
import { VigilError } from '../../errors/catalogue.ts'
import { NewRole, RoleDefinition, User, UserRoleParams } from '../schemas/access.ts'
import { errorResponses, invalid } from '../schemas/common.ts'
import type { ApiInstance, RouteDeps } from './route-deps.ts'

/** Role definitions, and granting and revoking roles (issue 3 §7). */
export function roleRoutes (app: ApiInstance, deps: RouteDeps): void {
  const { people } = deps.access

  app.get('/roles', {
    config: { permission: 'roles:admin' },
    schema: { tags: ['people'], summary: 'Role definitions', response: { 200: Type.Object({ items: Type.Array(RoleDefinition) }), ...errorResponses() } }
  }, async () => ({ items: await people.listRoles() }))

  app.post('/roles', {
    config: { permission: 'roles:admin' },
    schema: {
      tags: ['people'],
      summary: 'Create a custom role',
      description: 'category decides which patients holders reach (admin: all; clinician: care team + break-glass; patient: self; developer, integrator, research: none).',
      body: NewRole,
      response: { 201: RoleDefinition, ...errorResponses(413) }
    }
  }, async (request, reply) => {
    const { name, category, permissions } = request.body
    if (category === 'patient') throw invalid('body/category', 'the patient category is the builtin patient role only')
    reply.code(201)
    return await people.createRole({ name: name.trim(), category: category as 'admin', permissions })
  })

  app.put('/users/:id/roles/:roleId', {
    config: { permission: 'roles:admin' },
    schema: { tags: ['people'], summary: 'Grant a role', params: UserRoleParams, response: { 200: User, ...errorResponses(404) } }
  }, async (request) => {
    await people.grantRole(request.params.id, request.params.roleId, actorOf(request))
    request.log.info({ userId: request.params.id, roleId: request.params.roleId, by: actorOf(request) }, 'role granted')
    return (await people.getUser(request.params.id))!
  })

  app.delete('/users/:id/roles/:roleId', {
    config: { permission: 'roles:admin' },
    schema: {
      tags: ['people'],
      summary: 'Revoke a role',
      description: '404 VIGIL_ERR_NOT_FOUND when the user does not hold it.',
      params: UserRoleParams,
      response: { 204: Type.Null({ description: 'Revoked' }), ...errorResponses(404) }
    }
  }, async (request, reply) => {
    if (!await people.revokeRole(request.params.id, request.params.roleId)) throw new VigilError('VIGIL_ERR_NOT_FOUND', 'the user does not hold this role')
    request.log.info({ userId: request.params.id, roleId: request.params.roleId, by: actorOf(request) }, 'role revoked')
    return await reply.code(204).send(null)
  })
}
