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
    /**
     * By name (case-insensitive), then id. `afterId`: the last patient of the previous page
     * (its name is looked up, so cursors carry no name). `ids`: only these patients (what the
     * caller may see); absent: every patient. `nameContains`: a case-insensitive substring.
     */
    async list (options: { limit: number, afterId?: string, ids?: readonly string[], nameContains?: string }): Promise<Patient[]> {
      const pattern = options.nameContains === undefined ? null : `%${options.nameContains.replace(/[\\%_]/g, (c) => `\\${c}`)}%`
      const { rows } = await pool.query(
        `SELECT id, display_name, created_at FROM patients
          WHERE ($1::uuid IS NULL OR (lower(display_name), id) > (SELECT lower(display_name), id FROM patients WHERE id = $1::uuid))
            AND ($3::uuid[] IS NULL OR id = ANY($3::uuid[]))
            AND ($4::text IS NULL OR display_name ILIKE $4::text)
          ORDER BY lower(display_name), id LIMIT $2`,
        [options.afterId ?? null, options.limit, options.ids === undefined ? null : [...options.ids], pattern])
      return rows.map(toPatient)
    }
  }
}

export type PatientStore = ReturnType<typeof createPatientStore>
