import type pg from 'pg'
import { openClinicalText, sealClinicalText } from '../crypto/clinical-text.ts'
import type { Keyring } from '../crypto/field-encryption.ts'

/**
 * The audit trail of PHI access (issue 3). Rows are append-only: the table refuses UPDATE and
 * DELETE for the application's role. The people/PHI work owns the implementation
 * (createAuditLog); everything else records through this interface.
 */
export interface AuditEntry {
  /** Who: a user id, an API token id, or null for Vigil itself. */
  actorId: string | null
  actorKind: 'user' | 'token' | 'system'
  /** The actor's role(s) at the time, e.g. 'nurse' or 'admin'. */
  role: string | null
  patientId: string | null
  /** Named like a permission: 'readings:read', 'phi:write', 'alerts:ack' … */
  action: string
  /** PHI fields read or written, when known. */
  fields?: readonly string[]
  outcome: 'allowed' | 'denied'
  sourceAddress?: string | null
  requestId?: string | null
  /** Set when access came through break-glass. */
  breakGlassReason?: string | null
  /** For a call with an API token: who created the token (a user id or `token:<id>`). */
  tokenCreator?: string | null
  /** An X-Request-Id the client sent (requestId is always Vigil's own). */
  clientRequestId?: string | null
  /** Ids the action touched besides the patient (a device, the other patient of a reassignment). Never PHI values. */
  details?: Record<string, unknown> | null
}

export interface AuditLog {
  /** Appends one row; resolves once it is committed. */
  record (entry: AuditEntry): Promise<void>
}

export interface AuditRow extends Required<Omit<AuditEntry, 'fields'>> {
  id: string
  at: string
  fields: string[]
}

export interface AuditQuery {
  patientId?: string
  actorId?: string
  outcome?: 'allowed' | 'denied'
  action?: string
  /** Inclusive. */
  from?: Date
  /** Exclusive. */
  to?: Date
  /** Rows with a smaller id (newest first paging). */
  beforeId?: string
  limit: number
}

function toRow (keyring: Keyring, r: Record<string, unknown>): AuditRow {
  const reason = r.break_glass_reason as string | null
  return {
    id: String(r.id),
    at: (r.at as Date).toISOString(),
    actorId: r.actor_id as string | null,
    actorKind: r.actor_kind as AuditRow['actorKind'],
    role: r.role as string | null,
    patientId: r.patient_id as string | null,
    action: r.action as string,
    fields: r.fields as string[],
    outcome: r.outcome as AuditRow['outcome'],
    sourceAddress: r.source_address as string | null,
    requestId: r.request_id as string | null,
    breakGlassReason: reason === null
      ? null
      : openClinicalText(keyring, reason, r.key_id as string | null, { table: 'audit_log', column: 'break_glass_reason', rowId: String(r.id) }),
    tokenCreator: r.token_creator as string | null,
    clientRequestId: r.client_request_id as string | null,
    details: r.details as Record<string, unknown> | null
  }
}

/**
 * The audit log in Postgres (table audit_log, migrations 003 and 008). A break-glass reason is
 * clinical free text: encrypted at insert, bound to the row's id (taken from the sequence
 * first, as the row is never updated after).
 */
export function createAuditLog (pool: pg.Pool, keyring: Keyring) {
  return {
    async record (entry: AuditEntry): Promise<void> {
      const reason = entry.breakGlassReason ?? null
      const values = [entry.actorId, entry.actorKind, entry.role, entry.patientId, entry.action, [...(entry.fields ?? [])], entry.outcome,
        entry.sourceAddress ?? null, entry.requestId ?? null,
        entry.tokenCreator ?? null, entry.clientRequestId ?? null, entry.details === undefined || entry.details === null ? null : JSON.stringify(entry.details)]
      if (reason === null) {
        await pool.query(
          `INSERT INTO audit_log (actor_id, actor_kind, role, patient_id, action, fields, outcome, source_address, request_id,
                                  token_creator, client_request_id, details)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)`, values)
        return
      }
      const { rows: [next] } = await pool.query("SELECT nextval(pg_get_serial_sequence('audit_log', 'id'))::text AS id")
      const id = next.id as string
      await pool.query(
        `INSERT INTO audit_log (actor_id, actor_kind, role, patient_id, action, fields, outcome, source_address, request_id,
                                token_creator, client_request_id, details, id, break_glass_reason, key_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)`,
        [...values, id, sealClinicalText(keyring, reason, { table: 'audit_log', column: 'break_glass_reason', rowId: id }), keyring.activeKeyId])
    },

    /** Newest first. */
    async query (q: AuditQuery): Promise<AuditRow[]> {
      const { rows } = await pool.query(
        `SELECT * FROM audit_log
          WHERE ($1::uuid IS NULL OR patient_id = $1::uuid)
            AND ($2::text IS NULL OR actor_id = $2::text OR token_creator = $2::text)
            AND ($3::text IS NULL OR outcome = $3::text)
            AND ($4::timestamptz IS NULL OR at >= $4::timestamptz)
            AND ($5::timestamptz IS NULL OR at < $5::timestamptz)
            AND ($6::bigint IS NULL OR id < $6::bigint)
            AND ($8::text IS NULL OR action = $8::text)
          ORDER BY id DESC LIMIT $7`,
        [q.patientId ?? null, q.actorId ?? null, q.outcome ?? null, q.from ?? null, q.to ?? null, q.beforeId ?? null, q.limit, q.action ?? null])
      return rows.map((r) => toRow(keyring, r))
    }
  }
}

export type AuditLogStore = ReturnType<typeof createAuditLog>
