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
}

export interface AuditLog {
  /** Appends one row; resolves once it is committed. */
  record (entry: AuditEntry): Promise<void>
}
