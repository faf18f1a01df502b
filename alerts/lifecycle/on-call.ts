import type pg from 'pg'

/** Someone on call for a patient's care team in a role (an escalation tier's notify name) over [from, to). */
export interface OnCallShift {
  id: string
  patientId: string
  userId: string
  role: string
  from: string
  to: string
  setBy: string | null
}

function toShift (r: Record<string, unknown>): OnCallShift {
  return {
    id: String(r.id), patientId: r.patient_id as string, userId: r.user_id as string, role: r.role as string,
    from: (r.valid_from as Date).toISOString(), to: (r.valid_to as Date).toISOString(), setBy: r.set_by as string | null
  }
}

/**
 * The on-call roster (migration 008): who the alert tiers reach besides the care team's role
 * holders (alerts/lifecycle/alert-store.ts resolves them). Pure storage; admins set it through the API.
 */
export function createOnCallStore (pool: pg.Pool) {
  return {
    async add (shift: { patientId: string, userId: string, role: string, from: Date, to: Date, setBy: string | null }): Promise<OnCallShift> {
      const { rows } = await pool.query(
        'INSERT INTO on_call (patient_id, user_id, role, valid_from, valid_to, set_by) VALUES ($1, $2, $3, $4, $5, $6) RETURNING *',
        [shift.patientId, shift.userId, shift.role, shift.from, shift.to, shift.setBy])
      return toShift(rows[0])
    },

    /** Shifts of a patient's care team that have not ended by `at`, soonest first. */
    async of (patientId: string, at: Date): Promise<OnCallShift[]> {
      const { rows } = await pool.query('SELECT * FROM on_call WHERE patient_id = $1 AND valid_to > $2 ORDER BY valid_from, id', [patientId, at])
      return rows.map(toShift)
    },

    /** Removes a shift; null when there is none with this id. */
    async remove (id: string): Promise<OnCallShift | null> {
      const { rows } = await pool.query('DELETE FROM on_call WHERE id = $1 RETURNING *', [id])
      return rows[0] === undefined ? null : toShift(rows[0])
    }
  }
}

export type OnCallStore = ReturnType<typeof createOnCallStore>
