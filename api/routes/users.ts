import { Type } from '@fastify/type-provider-typebox'
import { hashPassword, passwordWeakness } from '../../access/passwords.ts'
import { actorOf } from '../../access/access-policy.ts'
import { VigilError } from '../../errors/catalogue.ts'
import { NewUser, User, UserPatch, UsersQuery } from '../schemas/access.ts'
import { IdParams, decodeIdCursor, errorResponses, invalid, page, pageOf } from '../schemas/common.ts'
import type { ApiInstance, RouteDeps } from './route-deps.ts'

function checkPassword (password: string, path: string): void {
  const weakness = passwordWeakness(password)
  if (weakness !== null) throw invalid(path, weakness)
}

/** Users: people who log in with email + password (issue 3 §7). Grants: roles.ts. */
export function userRoutes (app: ApiInstance, deps: RouteDeps): void {
  const { access } = deps
  const { people } = access

  app.post('/users', {
    config: { permission: 'users:admin' },
    schema: {
      tags: ['people'],
      summary: 'Create a user who logs in with email + password',
      description: 'Patients are created with POST /v1/patients (they are users with the patient role); give one a login with PATCH /v1/users/{id}.',
      body: NewUser,
      response: { 201: User, ...errorResponses(404, 409, 413) }
    }
  }, async (request, reply) => {
    const { email, displayName, password, roles = [] } = request.body
    checkPassword(password, 'body/password')
    const passwordHash = await hashPassword(password, access.passwordCost)
    const user = await people.createUser({ email, displayName: displayName.trim(), passwordHash, roles, grantedBy: actorOf(request) })
    request.log.info({ userId: user.id, roles: user.roles, by: actorOf(request) }, 'user created')
    reply.code(201)
    return user
  })

  app.get('/users', {
    config: { permission: 'users:admin' },
    schema: { tags: ['people'], summary: 'List users (ordered by id)', querystring: UsersQuery, response: { 200: page(User), ...errorResponses() } }
  }, async (request) => {
    const { limit, cursor, role } = request.query
    const rows = await people.listUsers({ limit: limit + 1, afterId: decodeIdCursor(cursor), roleId: role })
    return pageOf(rows, limit, (last) => last.id)
  })

  app.get('/users/:id', {
    config: { permission: 'users:admin' },
    schema: { tags: ['people'], summary: 'One user', params: IdParams, response: { 200: User, ...errorResponses(404) } }
  }, async (request) => {
    const user = await people.getUser(request.params.id)
    if (user === null) throw new VigilError('VIGIL_ERR_UNKNOWN_USER', 'no user with this id')
    return user
  })

  app.patch('/users/:id', {
    config: { permission: 'users:admin' },
    schema: {
      tags: ['people'],
      summary: 'Change a user',
      description: 'active=false deactivates (every session ends); a new password also ends sessions and clears a lockout.',
      params: IdParams,
      body: UserPatch,
      response: { 200: User, ...errorResponses(404, 409, 413) }
    }
  }, async (request) => {
    const { password, displayName, ...rest } = request.body
    if (password !== undefined) checkPassword(password, 'body/password')
    const passwordHash = password === undefined ? undefined : await hashPassword(password, access.passwordCost)
    return await people.updateUser(request.params.id, { ...rest, displayName: displayName?.trim(), passwordHash })
  })

  app.delete('/users/:id', {
    config: { permission: 'users:admin' },
    schema: {
      tags: ['people'],
      summary: 'Deactivate a user',
      description: 'Users are never deleted (the audit trail names them): the user can no longer log in and every session ends.',
      params: IdParams,
      response: { 204: Type.Null({ description: 'Deactivated' }), ...errorResponses(404) }
    }
  }, async (request, reply) => {
    await people.updateUser(request.params.id, { active: false })
    request.log.info({ userId: request.params.id, by: actorOf(request) }, 'user deactivated')
    return await reply.code(204).send(null)
  })
}
