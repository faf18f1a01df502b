import type pg from 'pg'
import type { RejectionReason } from '../readings/reading.ts'

/** Enough of a refused payload to debug a device; bounded so a hostile device cannot fill the database. */
export const REJECTED_PAYLOAD_KEEP_BYTES = 4096

/**
 * Reasons whose payload holds valid readings that can be recovered later (assign the device
 * for that period, replay the payload): kept whole — the broker's packet cap bounds them.
 */
const keepWhole: ReadonlySet<RejectionReason> = new Set(['device_unassigned'])

/** Postgres text cannot hold NUL; other control characters make logs and UIs lie. */
function printable (text: string): string {
  return text.replace(/[\u0000-\u001f\u007f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)
}

export interface Rejection {
  id: string
  topic: string
  reason: RejectionReason
  message: string
  /** As UTF-8 text (invalid bytes replaced): whole for device_unassigned, else the first REJECTED_PAYLOAD_KEEP_BYTES bytes. */
  payload: string
  payloadBytes: number
  receivedAt: string
  /**
   * Whose payload it is: the device's patient when it arrived, else (a device unassigned then)
   * its current one; null when neither. The payload is that patient's PHI.
   */
  patientId: string | null
}

/** A kept device_unassigned payload not yet replayed. */
export interface KeptPayload { id: string, topic: string, payload: Buffer, receivedAt: Date }

export function createRejectionLog (pool: pg.Pool) {
  return {
    async record (deviceId: string, topic: string, reason: RejectionReason, message: string, payload: Buffer): Promise<void> {
      await pool.query(
        'INSERT INTO rejections (device_id, topic, reason, message, payload, payload_bytes) VALUES ($1, $2, $3, $4, $5, $6)',
        [deviceId, topic, reason, printable(message), keepWhole.has(reason) ? payload : payload.subarray(0, REJECTED_PAYLOAD_KEEP_BYTES), payload.length])
    },

    /** The device's device_unassigned payloads not yet replayed, oldest first. */
    async keptUnassigned (deviceId: string, limit: number): Promise<KeptPayload[]> {
      const { rows } = await pool.query(
        `SELECT id, topic, payload, received_at FROM rejections
         WHERE device_id = $1 AND reason = 'device_unassigned' AND replayed_at IS NULL ORDER BY id LIMIT $2`,
        [deviceId, limit])
      return rows.map((r) => ({ id: String(r.id), topic: r.topic, payload: r.payload as Buffer, receivedAt: r.received_at as Date }))
    },

    /** Marks payloads whose every reading is now stored; a later replay skips them. */
    async markReplayed (ids: readonly string[]): Promise<void> {
      if (ids.length === 0) return
      await pool.query('UPDATE rejections SET replayed_at = now() WHERE id = ANY($1::bigint[]) AND replayed_at IS NULL', [ids])
    },

    /** Newest first. */
    async list (deviceId: string, options: { limit: number, beforeId?: string }): Promise<Rejection[]> {
      const { rows } = await pool.query(
        `SELECT r.id, r.topic, r.reason, r.message, r.payload, r.payload_bytes, r.received_at,
                coalesce(
                  (SELECT a.patient_id FROM device_assignments a WHERE a.device_id = r.device_id
                      AND a.valid_from <= r.received_at AND (a.valid_to IS NULL OR a.valid_to > r.received_at) LIMIT 1),
                  (SELECT a.patient_id FROM device_assignments a WHERE a.device_id = r.device_id AND a.valid_to IS NULL)) AS patient_id
           FROM rejections r
          WHERE r.device_id = $1 AND ($2::bigint IS NULL OR r.id < $2::bigint) ORDER BY r.id DESC LIMIT $3`,
        [deviceId, options.beforeId ?? null, options.limit])
      return rows.map((r) => ({
        id: String(r.id),
        topic: r.topic,
        reason: r.reason,
        message: r.message,
        payload: (r.payload as Buffer).toString('utf8'),
        payloadBytes: r.payload_bytes,
        receivedAt: (r.received_at as Date).toISOString(),
        patientId: r.patient_id as string | null
      }))
    }
  }
}

export type RejectionLog = ReturnType<typeof createRejectionLog>
