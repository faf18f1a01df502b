import type { FastifyRequest } from 'fastify'
import type { Principal } from './auth.ts'

/** What a route does to a patient's data, for the access decision and the audit log. */
export interface PatientAccessRequest {
  /** The action, named like a permission: 'readings:read', 'alerts:ack', 'voice-notes:write' … */
  action: string
  /** PHI fields read or written, when the route knows them (audit log). */
  fields?: readonly string[]
  /** Ids the action touches besides the patient, for the audit row (never PHI values). */
  details?: Record<string, unknown>
}

/**
 * Who may see which patient. Every route that reads or writes one patient's data calls
 * `require` before touching it; list routes and streams filter with `visiblePatients` /
 * `canSee`. The route's permission (config.permission) is checked before, by the auth hook;
 * this adds the relationship (self, care team, break-glass) and the audit trail.
 */
export interface PatientAccessPolicy {
  /**
   * Resolves when the request's principal may act on this patient's data. Otherwise throws
   * VigilError VIGIL_ERR_UNKNOWN_PATIENT (404: the same answer as for a patient that does not
   * exist, so ids cannot be probed) or VIGIL_ERR_FORBIDDEN. Implementations record each PHI
   * access and each refusal in the audit log.
   */
  require (request: FastifyRequest, patientId: string, access: PatientAccessRequest): Promise<void>
  /**
   * `require`, then `read`, with one round trip fewer: once the principal is allowed, `read`
   * runs while the audit row is written, and this resolves with what it read only when both
   * are done, so nothing is answered without its row (a failed write fails the request). A
   * refused request reads nothing. For reads only: a write must not happen before its row.
   */
  requireAnd<T> (request: FastifyRequest, patientId: string, access: PatientAccessRequest, read: () => Promise<T>): Promise<T>
  /** The patients `principal` may see; null means every patient. */
  visiblePatients (principal: Principal): Promise<ReadonlySet<string> | null>
  /** The decision `require` makes, without a request and without an audit row (MQTT, stream fan-out). */
  canSee (principal: Principal, patientId: string): Promise<boolean>
}
