import { Type } from '@fastify/type-provider-typebox'
import type { FastifyRequest } from 'fastify'
import { hashPassword, passwordWeakness } from '../../access/passwords.ts'
import type { Access } from '../../access/access.ts'
import { auditActor, scopesOf } from '../../access/access-policy.ts'
import {
  AccessLogEntry, ApiToken, AuditQuery, AuditRow, BreakGlassGrant, BreakGlassQuery, BreakGlassRequest, CareTeamAssignment,
  CreatedApiToken, NewApiToken, NewCareTeamAssignment, NewRole, NewUser, RoleDefinition, SerialParams, User, UserPatch,
  UserRoleParams, UsersQuery
} from '../schemas/access.ts'
import type { ApiInstance, RouteDeps } from './route-deps.ts'
import type { Principal } from '../../access/auth.ts'
import { VigilError } from '../../errors/catalogue.ts'
import { IdParams, PageQuery, decodeIdCursor, errorResponses, instantMs, invalid, page, pageOf } from '../schemas/common.ts'

/** Permissions that reach patient data: a token made by a non-admin may hold none of them. */
export const phiPermissions = new Set([
  'readings:read', 'patients:read', 'patients:write', 'phi:read', 'phi:write', 'audit:read', 'break-glass',
  'alerts:read', 'alerts:ack', 'overrides:write', 'jobs:read', 'jobs:write', 'voice-notes:read', 'voice-notes:write',
  'alerts:comment', 'clinical-notes:read', 'voice-notes:release', 'users:admin', 'roles:admin', 'care-teams:write'
])

function checkPassword (password: string, path: string): void {
  const weakness = passwordWeakness(password)
  if (weakness !== null) throw invalid(path, weakness)
}

/** Who did it, for granted_by / created_by / assigned_by columns: a user id or `token:<id>`. */
function actorOf (request: FastifyRequest): string {
  const p = request.principal as Principal
  return p.userId ?? `token:${p.tokenId}`
}

const MIN_REASON_LENGTH = 10

// Characters that show nothing: controls, format characters (zero-width space/joiners, word
// joiner, BOM, soft hyphen, bidi marks; \p{Cf}), line/paragraph separators, and the fillers
// and blanks Unicode classes as letters or symbols (Hangul fillers, braille blank, Mongolian
// vowel separator, combining grapheme joiner), and every Default_Ignorable_Code_Point
// (Unicode 15 DerivedCoreProperties: variation selectors, Khmer inherent vowels, Mongolian
// free variation selectors …; security pass F2).
const INVISIBLE = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Default_Ignorable_Code_Point}\u034f\u115f\u1160\u180e\u2800\u3164\uffa0]/gu
// What makes a reason readable: letters and digits. Lone combining marks, symbols such as
// U+FFFC or U+1D159 and punctuation show little or nothing, so they do not count.
const LETTER_OR_DIGIT = /[\p{L}\p{N}]/gu

/** A break-glass reason as it is checked and kept: invisible characters gone, spaces collapsed, trimmed (issue 11 §9). */
export function normalizeReason (text: string): string {
  return text.normalize('NFC').replace(/[\t\n\r\v\f]/g, ' ').replace(INVISIBLE, '').replace(/\s+/gu, ' ').trim()
}

function reachesEveryPatient (p: Principal): boolean {
  return p.patientScopes.has('all')
}

/**
 * Users, roles and grants, care teams, break-glass, the audit trail and API tokens
 * (issue 3 §7). Login, refresh and logout are public: see sessionRoutes.
 */
export function accessRoutes (app: ApiInstance, deps: RouteDeps & { access: Access }): void {
  const { access, patients, patientAccess, tokens } = deps
  const { people, audit } = access

  // ---- users -----------------------------------------------------------------------------

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

  // ---- roles -----------------------------------------------------------------------------

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

  // ---- care teams ------------------------------------------------------------------------

  app.post('/care-teams', {
    config: { permission: 'care-teams:write' },
    schema: {
      tags: ['people'],
      summary: 'Put a clinician on a patient\'s care team for a period',
      description: 'The clinician must hold a clinician-category role (nurse, doctor or a custom one).',
      body: NewCareTeamAssignment,
      response: { 201: CareTeamAssignment, ...errorResponses(404, 413) }
    }
  }, async (request, reply) => {
    const { clinicianId, patientId } = request.body
    const validFrom = request.body.validFrom === undefined ? access.now() : new Date(instantMs(request.body.validFrom, 'body/validFrom'))
    const validTo = request.body.validTo === undefined || request.body.validTo === null ? null : new Date(instantMs(request.body.validTo, 'body/validTo'))
    if (validTo !== null && validTo.getTime() <= validFrom.getTime()) throw invalid('body/validTo', 'must be after validFrom')
    const clinician = await people.getUser(clinicianId)
    if (clinician === null) throw new VigilError('VIGIL_ERR_UNKNOWN_USER', 'no user with this id')
    const roles = (await people.listRoles()).filter((r) => clinician.roles.includes(r.id))
    if (!roles.some((r) => r.category === 'clinician')) throw invalid('body/clinicianId', 'must be a user holding a clinician role (nurse, doctor …)')
    if (await patients.get(patientId) === null) throw new VigilError('VIGIL_ERR_UNKNOWN_PATIENT', 'no patient with this id')
    reply.code(201)
    return await people.assignCareTeam({ clinicianId, patientId, validFrom, validTo, assignedBy: actorOf(request) })
  })

  app.delete('/care-teams/:id', {
    config: { permission: 'care-teams:write' },
    schema: {
      tags: ['people'],
      summary: 'End a care-team assignment now',
      description: 'The row is kept (history); its validTo becomes now unless it ended earlier.',
      params: SerialParams,
      response: { 200: CareTeamAssignment, ...errorResponses(404) }
    }
  }, async (request) => {
    const ended = await people.endCareTeam(request.params.id, access.now())
    if (ended === null) throw new VigilError('VIGIL_ERR_NOT_FOUND', 'no care-team assignment with this id')
    return ended
  })

  app.get('/patients/:id/care-team', {
    config: { permission: 'patients:read' },
    schema: {
      tags: ['people'],
      summary: 'A patient\'s care-team assignments, current and past',
      params: IdParams,
      response: { 200: Type.Object({ items: Type.Array(CareTeamAssignment) }), ...errorResponses(404) }
    }
  }, async (request) => {
    await patientAccess.require(request, request.params.id, { action: 'care-team:read' })
    return { items: await people.careTeamOf(request.params.id) }
  })

  // ---- break-glass -----------------------------------------------------------------------

  app.post('/patients/:id/break-glass', {
    config: { permission: 'break-glass' },
    schema: {
      tags: ['people'],
      summary: 'Open a patient outside your care team, stating why',
      description: `Grants access for ${access.settings.breakGlassMinutes} minutes; the grant and every access through it are audited with the reason and listed for review (GET /v1/break-glass).`,
      params: IdParams,
      body: BreakGlassRequest,
      response: { 201: BreakGlassGrant, ...errorResponses(404, 413) }
    }
  }, async (request, reply) => {
    const principal = request.principal as Principal
    if (principal.userId === null || !principal.patientScopes.has('care-team')) {
      throw new VigilError('VIGIL_ERR_FORBIDDEN', 'break-glass is for clinicians signed in as themselves')
    }
    const patientId = request.params.id
    const reason = normalizeReason(request.body.reason)
    if ((reason.match(LETTER_OR_DIGIT)?.length ?? 0) < MIN_REASON_LENGTH) {
      throw invalid('body/reason', `must have at least ${MIN_REASON_LENGTH} letters or digits`)
    }
    const at = access.now()
    if (await patients.get(patientId) === null) {
      await audit.record({ ...auditActor(request), patientId, action: 'break-glass', fields: [], outcome: 'denied', breakGlassReason: reason, details: null })
      throw new VigilError('VIGIL_ERR_UNKNOWN_PATIENT', 'no patient with this id')
    }
    const limit = access.settings.breakGlassGrantsPerHour
    const result = await people.grantBreakGlassWithinLimit({
      userId: principal.userId, patientId, reason, at, expiresAt: new Date(at.getTime() + access.settings.breakGlassMinutes * 60_000)
    }, new Date(at.getTime() - 3_600_000), limit)
    await audit.record({
      ...auditActor(request), patientId, action: 'break-glass', fields: [],
      outcome: 'grant' in result ? 'allowed' : 'denied', breakGlassReason: reason, details: 'grant' in result ? null : { refused: 'grants-per-hour' }
    })
    if ('refused' in result) {
      const retryAfterMs = (result.refused.oldest?.getTime() ?? at.getTime()) + 3_600_000 - at.getTime()
      reply.header('retry-after', String(Math.max(1, Math.ceil(retryAfterMs / 1000))))
      request.log.warn({ userId: principal.userId, limit }, 'break-glass refused: grants per hour')
      throw new VigilError('VIGIL_ERR_BREAK_GLASS_LIMIT', `at most ${limit} break-glass grants an hour`)
    }
    const grant = result.grant
    request.log.warn({ userId: principal.userId, grantId: grant.id }, 'break-glass access granted')
    reply.code(201)
    return grant
  })

  app.get('/break-glass', {
    config: { permission: 'audit:read' },
    schema: {
      tags: ['people'],
      summary: 'Break-glass grants for review, newest first',
      querystring: BreakGlassQuery,
      response: { 200: Type.Object({ items: Type.Array(BreakGlassGrant) }), ...errorResponses() }
    }
  }, async (request) => {
    const { limit, patientId } = request.query
    const from = request.query.from === undefined ? undefined : new Date(instantMs(request.query.from, 'querystring/from'))
    const to = request.query.to === undefined ? undefined : new Date(instantMs(request.query.to, 'querystring/to'))
    return { items: await people.listBreakGlass({ limit, patientId, from, to }) }
  })

  // ---- audit -----------------------------------------------------------------------------

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
    const { limit, cursor, patientId, actorId, outcome } = request.query
    if (cursor !== undefined && !/^[0-9]{1,18}$/.test(cursor)) throw new VigilError('VIGIL_ERR_BAD_CURSOR', 'cursor is not one this API returned')
    const from = request.query.from === undefined ? undefined : new Date(instantMs(request.query.from, 'querystring/from'))
    const to = request.query.to === undefined ? undefined : new Date(instantMs(request.query.to, 'querystring/to'))
    const rows = await audit.query({ patientId, actorId, outcome, from, to, beforeId: cursor, limit: limit + 1 })
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

  // ---- API tokens ------------------------------------------------------------------------

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
