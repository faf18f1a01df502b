import { randomUUID } from 'node:crypto'
import type pg from 'pg'
import { openClinicalText, sealClinicalText } from '../crypto/clinical-text.ts'
import { inTransaction as runInTransaction } from '../store/database.ts'
import { VigilError } from '../errors/catalogue.ts'
import type { Keyring } from '../crypto/field-encryption.ts'

export interface User {
  id: string
  email: string | null
  displayName: string | null
  active: boolean
  roles: string[]
  /** Whether the user can log in (has a password). */
  canLogIn: boolean
  lockedUntil: string | null
  createdAt: string
  updatedAt: string
}

export type RoleCategory = 'patient' | 'clinician' | 'admin' | 'developer' | 'integrator' | 'research'

export interface RoleDefinition {
  id: string
  name: string
  category: RoleCategory
  permissions: string[]
  builtin: boolean
}

export interface CareTeamAssignment {
  id: string
  clinicianId: string
  patientId: string
  validFrom: string
  validTo: string | null
}

export interface BreakGlassGrant {
  id: string
  userId: string
  patientId: string
  reason: string
  grantedAt: string
  expiresAt: string
}

// Refusals carry their code from the one catalogue (errors/catalogue.ts).
export class DuplicateEmailError extends VigilError {
  constructor () {
    super('VIGIL_ERR_DUPLICATE_EMAIL', 'a user with this email exists')
    this.name = 'DuplicateEmailError'
  }
}
export class UnknownUserError extends VigilError {
  constructor () {
    super('VIGIL_ERR_UNKNOWN_USER', 'no user with this id')
    this.name = 'UnknownUserError'
  }
}
/** Also for the builtin patient role, which is granted only by creating a patient. */
export class UnknownRoleError extends VigilError {
  constructor (readonly roleId: string) {
    super('VIGIL_ERR_UNKNOWN_ROLE', `no role ${roleId} (the patient role is granted by creating a patient)`)
    this.name = 'UnknownRoleError'
  }
}

const iso = (d: unknown): string => (d as Date).toISOString()
const isoOrNull = (d: unknown): string | null => d === null || d === undefined ? null : iso(d)

const USER_COLUMNS = `u.id, u.email, u.display_name, u.active, u.password_hash IS NOT NULL AS can_log_in, u.locked_until,
  u.created_at, u.updated_at, coalesce((SELECT array_agg(r.role_id ORDER BY r.role_id) FROM roles r WHERE r.user_id = u.id), '{}') AS roles`

function toUser (r: Record<string, unknown>): User {
  return {
    id: r.id as string,
    email: r.email as string | null,
    displayName: r.display_name as string | null,
    active: r.active as boolean,
    roles: r.roles as string[],
    canLogIn: r.can_log_in as boolean,
    lockedUntil: isoOrNull(r.locked_until),
    createdAt: iso(r.created_at),
    updatedAt: iso(r.updated_at)
  }
}

function toRole (r: Record<string, unknown>): RoleDefinition {
  return { id: r.id as string, name: r.name as string, category: r.category as RoleCategory, permissions: r.permissions as string[], builtin: r.builtin as boolean }
}

function toCareTeam (r: Record<string, unknown>): CareTeamAssignment {
  return { id: String(r.id), clinicianId: r.clinician_id as string, patientId: r.patient_id as string, validFrom: iso(r.valid_from), validTo: isoOrNull(r.valid_to) }
}

/** The reason is clinical free text, encrypted bound to its grant (crypto/clinical-text.ts). */
function toGrant (keyring: Keyring, r: Record<string, unknown>): BreakGlassGrant {
  const reason = openClinicalText(keyring, r.reason as string, r.reason_key_id as string | null, { table: 'break_glass_grants', column: 'reason', rowId: r.id as string })
  return {
    id: r.id as string, userId: r.user_id as string, patientId: r.patient_id as string, reason,
    grantedAt: iso(r.granted_at), expiresAt: iso(r.expires_at)
  }
}

// PostgreSQL Appendix A: 23505 unique_violation, 23503 foreign_key_violation.
function isUniqueViolation (err: unknown): boolean { return (err as { code?: string }).code === '23505' }
function isForeignKeyViolation (err: unknown): boolean { return (err as { code?: string }).code === '23503' }

/**
 * Users, role definitions and grants, care teams and break-glass grants (migration 003).
 * Pure storage: who may call what is decided in api/ (permissions, access policy).
 */
export function createPeopleStore (pool: pg.Pool, keyring: Keyring) {
  const inTransaction = async <T>(work: (client: pg.PoolClient) => Promise<T>): Promise<T> => await runInTransaction(pool, work)

  async function getUser (id: string, q: pg.Pool | pg.PoolClient = pool): Promise<User | null> {
    const { rows } = await q.query(`SELECT ${USER_COLUMNS} FROM users u WHERE u.id = $1`, [id])
    return rows[0] === undefined ? null : toUser(rows[0])
  }

  return {
    getUser: (id: string) => getUser(id),

    /** Display names of these users (ids that are not users are left out). */
    async displayNames (ids: readonly string[]): Promise<Map<string, string | null>> {
      const uuids = ids.filter((id) => /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(id))
      if (uuids.length === 0) return new Map()
      const { rows } = await pool.query('SELECT id, display_name FROM users WHERE id = ANY($1::uuid[])', [uuids])
      return new Map(rows.map((r) => [r.id as string, (r.display_name as string | null) ?? null]))
    },

    async createUser (input: { email: string, displayName: string, passwordHash: string, roles: readonly string[], grantedBy: string }): Promise<User> {
      const id = randomUUID()
      return await inTransaction(async (client) => {
        // Checked first so the common case raises no database error: on embedded PGlite
        // (pglite-socket 0.2.17) the query after any error loses its connection.
        await refuseTakenEmail(client, input.email, null)
        try {
          await client.query('INSERT INTO users (id, email, display_name, password_hash) VALUES ($1, $2, $3, $4)',
            [id, input.email, input.displayName, input.passwordHash])
        } catch (err) {
          if (isUniqueViolation(err)) throw new DuplicateEmailError()
          throw err
        }
        for (const role of input.roles) await grant(client, id, role, input.grantedBy)
        return (await getUser(id, client))!
      })
    },

    async listUsers (options: { limit: number, afterId?: string, roleId?: string }): Promise<User[]> {
      const { rows } = await pool.query(
        `SELECT ${USER_COLUMNS} FROM users u
          WHERE ($1::uuid IS NULL OR u.id > $1::uuid)
            AND ($2::text IS NULL OR EXISTS (SELECT 1 FROM roles r WHERE r.user_id = u.id AND r.role_id = $2))
          ORDER BY u.id LIMIT $3`,
        [options.afterId ?? null, options.roleId ?? null, options.limit])
      return rows.map(toUser)
    },

    /** Changes a user; deactivating one also revokes every session it holds. */
    async updateUser (id: string, patch: { email?: string, displayName?: string, passwordHash?: string, active?: boolean }): Promise<User> {
      return await inTransaction(async (client) => {
        if (patch.email !== undefined) await refuseTakenEmail(client, patch.email, id)
        const sets: string[] = []
        const values: unknown[] = [id]
        const set = (column: string, value: unknown): void => { values.push(value); sets.push(`${column} = $${values.length}`) }
        if (patch.email !== undefined) set('email', patch.email)
        if (patch.displayName !== undefined) set('display_name', patch.displayName)
        if (patch.passwordHash !== undefined) {
          set('password_hash', patch.passwordHash)
          // A new password set by an admin also clears a lockout.
          sets.push('failed_login_count = 0', 'locked_until = NULL')
        }
        if (patch.active !== undefined) set('active', patch.active)
        sets.push('updated_at = now()')
        let updated
        try {
          updated = await client.query(`UPDATE users SET ${sets.join(', ')} WHERE id = $1`, values)
        } catch (err) {
          if (isUniqueViolation(err)) throw new DuplicateEmailError()
          throw err
        }
        if (updated.rowCount === 0) throw new UnknownUserError()
        if (patch.active === false || patch.passwordHash !== undefined) {
          await client.query("UPDATE sessions SET revoked_at = now(), revoked_reason = $2 WHERE user_id = $1 AND revoked_at IS NULL",
            [id, patch.active === false ? 'user deactivated' : 'password changed'])
        }
        return (await getUser(id, client))!
      })
    },

    /**
     * The roles an active user holds now; null when the user is unknown or deactivated. An API
     * token's permissions are bounded by its creator's, read here at each request.
     */
    async currentGrants (userId: string): Promise<Array<Pick<RoleDefinition, 'id' | 'category' | 'permissions'>> | null> {
      if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(userId)) return null
      const { rows } = await pool.query(
        `SELECT d.id, d.category, d.permissions FROM users u LEFT JOIN roles r ON r.user_id = u.id LEFT JOIN role_definitions d ON d.id = r.role_id
          WHERE u.id = $1 AND u.active`, [userId])
      if (rows.length === 0) return null
      return rows.filter((r) => r.id !== null).map((r) => ({ id: r.id as string, category: r.category as RoleCategory, permissions: r.permissions as string[] }))
    },

    async listRoles (): Promise<RoleDefinition[]> {
      const { rows } = await pool.query('SELECT * FROM role_definitions ORDER BY builtin DESC, id')
      return rows.map(toRole)
    },

    async getRole (id: string): Promise<RoleDefinition | null> {
      const { rows } = await pool.query('SELECT * FROM role_definitions WHERE id = $1', [id])
      return rows[0] === undefined ? null : toRole(rows[0])
    },

    async createRole (input: { name: string, category: RoleCategory, permissions: readonly string[] }): Promise<RoleDefinition> {
      const { rows } = await pool.query(
        'INSERT INTO role_definitions (id, name, category, permissions, builtin) VALUES ($1, $2, $3, $4, false) RETURNING *',
        [randomUUID(), input.name, input.category, [...input.permissions]])
      return toRole(rows[0])
    },

    async grantRole (userId: string, roleId: string, grantedBy: string): Promise<void> {
      await grant(pool, userId, roleId, grantedBy)
    },

    async revokeRole (userId: string, roleId: string): Promise<boolean> {
      const { rowCount } = await pool.query('DELETE FROM roles WHERE user_id = $1 AND role_id = $2', [userId, roleId])
      return (rowCount ?? 0) > 0
    },

    async assignCareTeam (input: { clinicianId: string, patientId: string, validFrom: Date, validTo: Date | null, assignedBy: string }): Promise<CareTeamAssignment> {
      try {
        const { rows } = await pool.query(
          `INSERT INTO care_team (clinician_id, patient_id, valid_from, valid_to, assigned_by) VALUES ($1, $2, $3, $4, $5) RETURNING *`,
          [input.clinicianId, input.patientId, input.validFrom, input.validTo, input.assignedBy])
        return toCareTeam(rows[0])
      } catch (err) {
        if (isForeignKeyViolation(err)) throw new UnknownUserError()
        throw err
      }
    },

    /** Ends an assignment at `at` (or keeps an earlier end). False when there is none. */
    async endCareTeam (id: string, at: Date): Promise<CareTeamAssignment | null> {
      const { rows } = await pool.query(
        `UPDATE care_team SET valid_to = greatest(valid_from + interval '1 millisecond', least(coalesce(valid_to, $2), $2))
          WHERE id = $1 RETURNING *`, [id, at])
      return rows[0] === undefined ? null : toCareTeam(rows[0])
    },

    async careTeamOf (patientId: string): Promise<CareTeamAssignment[]> {
      const { rows } = await pool.query('SELECT * FROM care_team WHERE patient_id = $1 ORDER BY valid_from DESC, id DESC', [patientId])
      return rows.map(toCareTeam)
    },

    /** A clinician's care-team assignments, current and past, newest first. */
    async careTeamsOfClinician (clinicianId: string): Promise<CareTeamAssignment[]> {
      const { rows } = await pool.query('SELECT * FROM care_team WHERE clinician_id = $1 ORDER BY valid_from DESC, id DESC', [clinicianId])
      return rows.map(toCareTeam)
    },

    /** Users who reach the patient at `at` as clinicians: care team, on-call shift or unexpired break-glass. */
    async cliniciansOf (patientId: string, at: Date): Promise<string[]> {
      const { rows } = await pool.query(
        `SELECT clinician_id AS user_id FROM care_team WHERE patient_id = $1 AND valid_from <= $2 AND (valid_to IS NULL OR valid_to > $2)
         UNION SELECT user_id FROM on_call WHERE patient_id = $1 AND valid_from <= $2 AND valid_to > $2
         UNION SELECT user_id FROM break_glass_grants WHERE patient_id = $1 AND granted_at <= $2 AND expires_at > $2`,
        [patientId, at])
      return rows.map((r) => r.user_id as string)
    },

    /** The user's unexpired break-glass grants at `at`: patient and expiry only (the reason stays sealed). */
    async activeBreakGlass (userId: string, at: Date): Promise<Array<{ patientId: string, expiresAt: string }>> {
      const { rows } = await pool.query(
        `SELECT patient_id, max(expires_at) AS expires_at FROM break_glass_grants
          WHERE user_id = $1 AND granted_at <= $2 AND expires_at > $2 GROUP BY patient_id ORDER BY patient_id`, [userId, at])
      return rows.map((r) => ({ patientId: r.patient_id as string, expiresAt: iso(r.expires_at) }))
    },

    /** Of these patients, those the clinician reaches at `at` only through break-glass (one query for a whole worklist). */
    async breakGlassOnly (clinicianId: string, patientIds: readonly string[], at: Date): Promise<Set<string>> {
      if (patientIds.length === 0) return new Set()
      const { rows } = await pool.query(
        `SELECT DISTINCT g.patient_id FROM break_glass_grants g
          WHERE g.user_id = $1 AND g.patient_id = ANY($2::uuid[]) AND g.granted_at <= $3 AND g.expires_at > $3
            AND NOT EXISTS (SELECT 1 FROM care_team c WHERE c.clinician_id = $1 AND c.patient_id = g.patient_id AND c.valid_from <= $3 AND (c.valid_to IS NULL OR c.valid_to > $3))
            AND NOT EXISTS (SELECT 1 FROM on_call o WHERE o.user_id = $1 AND o.patient_id = g.patient_id AND o.valid_from <= $3 AND o.valid_to > $3)`,
        [clinicianId, patientIds, at])
      return new Set(rows.map((r) => r.patient_id as string))
    },

    /** Patients the clinician may see at `at`: care team (an active on-call shift counts), or unexpired break-glass. */
    async patientsOf (clinicianId: string, at: Date): Promise<Set<string>> {
      const { rows } = await pool.query(
        `SELECT patient_id FROM care_team WHERE clinician_id = $1 AND valid_from <= $2 AND (valid_to IS NULL OR valid_to > $2)
         UNION SELECT patient_id FROM on_call WHERE user_id = $1 AND valid_from <= $2 AND valid_to > $2
         UNION SELECT patient_id FROM break_glass_grants WHERE user_id = $1 AND granted_at <= $2 AND expires_at > $2`,
        [clinicianId, at])
      return new Set(rows.map((r) => r.patient_id as string))
    },

    /** How the clinician reaches this patient at `at`, if at all (careTeam: an assignment or an active on-call shift). */
    async relationship (clinicianId: string, patientId: string, at: Date): Promise<{ careTeam: boolean, breakGlassReason: string | null }> {
      const { rows } = await pool.query(
        `SELECT (EXISTS (SELECT 1 FROM care_team WHERE clinician_id = $1 AND patient_id = $2 AND valid_from <= $3 AND (valid_to IS NULL OR valid_to > $3))
                 OR EXISTS (SELECT 1 FROM on_call WHERE user_id = $1 AND patient_id = $2 AND valid_from <= $3 AND valid_to > $3)) AS care_team,
                g.id, g.reason, g.reason_key_id
           FROM (SELECT 1) AS one
           LEFT JOIN LATERAL (SELECT id, reason, reason_key_id FROM break_glass_grants
                               WHERE user_id = $1 AND patient_id = $2 AND granted_at <= $3 AND expires_at > $3
                               ORDER BY expires_at DESC LIMIT 1) AS g ON true`,
        [clinicianId, patientId, at])
      const r = rows[0]
      const breakGlassReason = r.id === null
        ? null
        : openClinicalText(keyring, r.reason as string, r.reason_key_id as string | null, { table: 'break_glass_grants', column: 'reason', rowId: r.id as string })
      return { careTeam: r.care_team as boolean, breakGlassReason }
    },

    async grantBreakGlass (input: { userId: string, patientId: string, reason: string, at: Date, expiresAt: Date }): Promise<BreakGlassGrant> {
      const id = randomUUID()
      const reason = sealClinicalText(keyring, input.reason, { table: 'break_glass_grants', column: 'reason', rowId: id })
      const { rows } = await pool.query(
        'INSERT INTO break_glass_grants (id, user_id, patient_id, reason, reason_key_id, granted_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *',
        [id, input.userId, input.patientId, reason, keyring.activeKeyId, input.at, input.expiresAt])
      return toGrant(keyring, rows[0])
    },

    /**
     * grantBreakGlass, unless the user already took `limit` grants in (since, at]: then nothing
     * is stored and the count and oldest grant are returned. Counted and inserted in one
     * transaction holding the user's row lock, so parallel requests cannot all see the same
     * count (security pass F1); works the same on Postgres and PGlite.
     */
    async grantBreakGlassWithinLimit (input: { userId: string, patientId: string, reason: string, at: Date, expiresAt: Date }, since: Date, limit: number):
    Promise<{ grant: BreakGlassGrant } | { refused: { count: number, oldest: Date | null } }> {
      const id = randomUUID()
      const reason = sealClinicalText(keyring, input.reason, { table: 'break_glass_grants', column: 'reason', rowId: id })
      return await inTransaction(async (client) => {
        await client.query('SELECT 1 FROM users WHERE id = $1 FOR UPDATE', [input.userId])
        const recent = await client.query(
          'SELECT count(*)::int AS n, min(granted_at) AS oldest FROM break_glass_grants WHERE user_id = $1 AND granted_at > $2 AND granted_at <= $3',
          [input.userId, since, input.at])
        const count = recent.rows[0].n as number
        if (count >= limit) return { refused: { count, oldest: recent.rows[0].oldest as Date | null } }
        const { rows } = await client.query(
          'INSERT INTO break_glass_grants (id, user_id, patient_id, reason, reason_key_id, granted_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *',
          [id, input.userId, input.patientId, reason, keyring.activeKeyId, input.at, input.expiresAt])
        return { grant: toGrant(keyring, rows[0]) }
      })
    },

    /** Grants for review, newest first. */
    async listBreakGlass (options: { from?: Date, to?: Date, patientId?: string, limit: number, beforeGrantedAt?: Date }): Promise<BreakGlassGrant[]> {
      const { rows } = await pool.query(
        `SELECT * FROM break_glass_grants
          WHERE ($1::timestamptz IS NULL OR granted_at >= $1) AND ($2::timestamptz IS NULL OR granted_at < $2)
            AND ($3::uuid IS NULL OR patient_id = $3) AND ($4::timestamptz IS NULL OR granted_at < $4)
          ORDER BY granted_at DESC, id LIMIT $5`,
        [options.from ?? null, options.to ?? null, options.patientId ?? null, options.beforeGrantedAt ?? null, options.limit])
      return rows.map((r) => toGrant(keyring, r))
    }
  }

  async function refuseTakenEmail (q: pg.PoolClient, email: string, exceptId: string | null): Promise<void> {
    const { rowCount } = await q.query('SELECT 1 FROM users WHERE lower(email) = lower($1) AND ($2::uuid IS NULL OR id <> $2::uuid)', [email, exceptId])
    if ((rowCount ?? 0) > 0) throw new DuplicateEmailError()
  }

  async function grant (q: pg.Pool | pg.PoolClient, userId: string, roleId: string, grantedBy: string): Promise<void> {
    const role = await q.query('SELECT category FROM role_definitions WHERE id = $1', [roleId])
    if (role.rowCount === 0) throw new UnknownRoleError(roleId)
    const user = await q.query('SELECT id FROM users WHERE id = $1', [userId])
    if (user.rowCount === 0) throw new UnknownUserError()
    // The patient role means "this user is that patient": only a patient row makes one.
    if (role.rows[0].category === 'patient') {
      const patient = await q.query('SELECT id FROM patients WHERE id = $1', [userId])
      if (patient.rowCount === 0) throw new UnknownRoleError(roleId)
    }
    await q.query('INSERT INTO roles (user_id, role_id, granted_by) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING', [userId, roleId, grantedBy])
  }
}

export type PeopleStore = ReturnType<typeof createPeopleStore>
