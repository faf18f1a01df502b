import { randomUUID } from 'node:crypto'
import type pg from 'pg'

export interface Patient { id: string, displayName: string, createdAt: string }

function toPatient (row: Record<string, unknown>): Patient {
  return { id: row.id as string, displayName: row.display_name as string, createdAt: (row.created_at as Date).toISOString() }
}

export function createPatientStore (pool: pg.Pool) {
  return {
    async create (displayName: string): Promise<Patient> {
      const { rows } = await pool.query(
        'INSERT INTO patients (id, display_name) VALUES ($1, $2) RETURNING id, display_name, created_at',
        [randomUUID(), displayName])
      return toPatient(rows[0])
    },
    async get (id: string): Promise<Patient | null> {
      const { rows } = await pool.query('SELECT id, display_name, created_at FROM patients WHERE id = $1', [id])
      return rows[0] === undefined ? null : toPatient(rows[0])
    },
    /** `ids`: only these patients (what the caller may see); absent: every patient. */
    async list (options: { limit: number, afterId?: string, ids?: readonly string[] }): Promise<Patient[]> {
      const { rows } = await pool.query(
        `SELECT id, display_name, created_at FROM patients
          WHERE ($1::uuid IS NULL OR id > $1::uuid) AND ($3::uuid[] IS NULL OR id = ANY($3::uuid[])) ORDER BY id LIMIT $2`,
        [options.afterId ?? null, options.limit, options.ids === undefined ? null : [...options.ids]])
      return rows.map(toPatient)
    }
  }
}

export type PatientStore = ReturnType<typeof createPatientStore>
