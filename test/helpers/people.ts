import type { FastifyInstance } from 'fastify'

/** Creates a user with a login through the API (as `admin`) and logs in; returns id and bearer headers. */
export async function userWithLogin (app: FastifyInstance, admin: Record<string, string>, roles: string[], email: string): Promise<{ id: string, headers: Record<string, string> }> {
  const password = 'correct horse 42'
  const created = await app.inject({ method: 'POST', url: '/v1/users', headers: admin, payload: { email, displayName: `User ${email}`, password, roles } })
  if (created.statusCode !== 201) throw new Error(`create user ${email}: ${created.statusCode} ${created.body}`)
  return { id: created.json().id, headers: await loginHeaders(app, email, password) }
}

/** Gives an existing patient a login (PATCH /v1/users/{id}) and logs in. */
export async function patientWithLogin (app: FastifyInstance, admin: Record<string, string>, patientId: string, email: string): Promise<Record<string, string>> {
  const password = 'correct horse 42'
  const res = await app.inject({ method: 'PATCH', url: `/v1/users/${patientId}`, headers: admin, payload: { email, password } })
  if (res.statusCode !== 200) throw new Error(`patient login ${email}: ${res.statusCode} ${res.body}`)
  return await loginHeaders(app, email, password)
}

async function loginHeaders (app: FastifyInstance, email: string, password: string): Promise<Record<string, string>> {
  const res = await app.inject({ method: 'POST', url: '/v1/auth/login', payload: { email, password } })
  if (res.statusCode !== 200) throw new Error(`login ${email}: ${res.statusCode} ${res.body}`)
  return { authorization: `Bearer ${res.json().accessToken}` }
}

export async function newPatient (app: FastifyInstance, admin: Record<string, string>, displayName: string): Promise<string> {
  const res = await app.inject({ method: 'POST', url: '/v1/patients', headers: admin, payload: { displayName } })
  if (res.statusCode !== 201) throw new Error(`create patient: ${res.statusCode} ${res.body}`)
  return res.json().id
}

export async function onCareTeam (app: FastifyInstance, admin: Record<string, string>, clinicianId: string, patientId: string): Promise<void> {
  const res = await app.inject({ method: 'POST', url: '/v1/care-teams', headers: admin, payload: { clinicianId, patientId } })
  if (res.statusCode !== 201) throw new Error(`care team: ${res.statusCode} ${res.body}`)
}
