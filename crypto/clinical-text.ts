import type pg from 'pg'
import { decryptField, encryptField, type FieldLocation, type Keyring } from './field-encryption.ts'

/**
 * Clinical free text (issue 11 item 8): alert comments and resolve reasons, break-glass
 * reasons (the grant and every audit row written through it), rule-override and NEWS2
 * SpO2-scale reasons. Each value is a field envelope (crypto/field-encryption.ts) bound to its
 * table, column and row; the row's key column names the key it was written under. A NULL key
 * column beside a non-NULL value marks text written before migration 008: it is read as is
 * and encrypted by the start-up pass (crypto/reencryption.ts) or `npm run rekey`.
 */
export interface ClinicalTextColumn {
  table: string
  /** The column (for alert_events, the body's field: `body.text`). */
  column: string
  /** SQL reading the text. */
  value: string
  keyColumn: string
  /** SQL giving the row id bound into the envelope. */
  rowId: string
}

// Catalogue of every column that holds clinical free text: key usage and rotation read it.
export const clinicalTextColumns: readonly ClinicalTextColumn[] = [
  { table: 'break_glass_grants', column: 'reason', value: 'reason', keyColumn: 'reason_key_id', rowId: 'id::text' },
  { table: 'audit_log', column: 'break_glass_reason', value: 'break_glass_reason', keyColumn: 'key_id', rowId: 'id::text' },
  { table: 'patient_rule_overrides', column: 'reason', value: 'reason', keyColumn: 'reason_key_id', rowId: "patient_id::text || '/' || rule_id" },
  { table: 'patient_news2_scale', column: 'reason', value: 'reason', keyColumn: 'reason_key_id', rowId: 'patient_id::text' },
  { table: 'alert_events', column: 'body.text', value: "body->>'text'", keyColumn: 'key_id', rowId: 'id::text' },
  { table: 'alert_events', column: 'body.reason', value: "body->>'reason'", keyColumn: 'key_id', rowId: 'id::text' }
]

export function sealClinicalText (keyring: Keyring, text: string, at: FieldLocation): string {
  return encryptField(keyring, text, at)
}

/** The text: decrypted when `keyId` is set, as stored when it is NULL (written before migration 008). */
export function openClinicalText (keyring: Keyring, stored: string, keyId: string | null, at: FieldLocation): string {
  return keyId === null ? stored : decryptField(keyring, stored, at)
}

/** Values per key id over every clinical text column; `plaintext` counts values not yet encrypted. */
export async function clinicalTextKeyUsage (pool: pg.Pool): Promise<Array<{ keyId: string, clinicalText: number }>> {
  const counts = new Map<string, number>()
  for (const c of clinicalTextColumns) {
    const { rows } = await pool.query(
      `SELECT coalesce(${c.keyColumn}, 'plaintext') AS key_id, count(*)::int AS n FROM ${c.table} WHERE ${c.value} IS NOT NULL GROUP BY 1`)
    for (const r of rows) counts.set(r.key_id as string, (counts.get(r.key_id as string) ?? 0) + (r.n as number))
  }
  return [...counts].sort(([a], [b]) => a.localeCompare(b)).map(([keyId, clinicalText]) => ({ keyId, clinicalText }))
}

/**
 * Encrypts every clinical text value under the active key: values under another key and
 * values not yet encrypted. A row changed meanwhile is left for the next pass (the UPDATE
 * matches the value it read). audit_log is append-only: its trigger lets this one change
 * through (migration 008), inside a transaction that sets vigil.audit_reencryption.
 */
export async function reencryptClinicalText (pool: pg.Pool, keyring: Keyring, options: { batchSize?: number, shouldStop?: () => boolean } = {}): Promise<{ done: number, failed: number }> {
  const batchSize = options.batchSize ?? 200
  let done = 0
  let failed = 0
  // A row counted as failed keeps its key: skip past it by row id so the loop ends.
  for (const c of clinicalTextColumns) {
    let after = ''
    for (;;) {
      if (options.shouldStop?.() === true) return { done, failed }
      const { rows } = await pool.query(
        `SELECT ${c.rowId} AS row_id, ${c.value} AS value, ${c.keyColumn} AS key_id FROM ${c.table}
          WHERE ${c.value} IS NOT NULL AND ${c.keyColumn} IS DISTINCT FROM $1 AND ${c.rowId} > $2
          ORDER BY ${c.rowId} LIMIT $3`, [keyring.activeKeyId, after, batchSize])
      if (rows.length === 0) break
      for (const r of rows) {
        after = r.row_id as string
        const at = { table: c.table, column: c.column, rowId: r.row_id as string }
        let sealed: string
        try {
          sealed = sealClinicalText(keyring, openClinicalText(keyring, r.value as string, r.key_id as string | null, at), at)
        } catch {
          failed++
          continue
        }
        const client = await pool.connect()
        try {
          await client.query('BEGIN')
          if (c.table === 'audit_log') await client.query("SET LOCAL vigil.audit_reencryption = 'on'")
          const field = c.column.startsWith('body.') ? c.column.slice('body.'.length) : null
          const set = field === null ? `${c.value} = $1` : `body = jsonb_set(body, '{${field}}', to_jsonb($1::text))`
          const res = await client.query(
            `UPDATE ${c.table} SET ${set}, ${c.keyColumn} = $2 WHERE ${c.rowId} = $3 AND ${c.value} = $4 AND ${c.keyColumn} IS NOT DISTINCT FROM $5`,
            [sealed, keyring.activeKeyId, r.row_id, r.value, r.key_id])
          await client.query('COMMIT')
          if (res.rowCount === 1) done++
        } catch {
          // Refused (audit_log where Vigil's role lacks UPDATE, migration 003's REVOKE) or a
          // lost connection: counted, left for the next pass or an owner's `npm run rekey`.
          await client.query('ROLLBACK').catch(() => {})
          failed++
        } finally {
          client.release()
        }
      }
    }
  }
  return { done, failed }
}
