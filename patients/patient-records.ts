import type pg from 'pg'
import type { Logger } from 'pino'
import type { RecordBody, RecordPatch } from './record-schemas.ts'
import { blindIndex, decryptField, encryptField } from '../crypto/field-encryption.ts'
import type { Keyring } from '../crypto/field-encryption.ts'
import type { ReencryptionProgress } from '../crypto/reencryption.ts'

/**
 * Patients' structured records (004_patient_records.sql). Every sensitive group is encrypted
 * here, before it leaves the process, and decrypted here after it comes back: the database,
 * its dumps and its backups only ever hold envelopes. A row's envelopes all use one key (the
 * active one when the row was last written), so `key_id` tells rotation what is left to do.
 */

const TABLE = 'patient_records'

/** Record part → the column holding its envelope (also the AAD's column name). */
const encryptedColumns = {
  dateOfBirth: 'date_of_birth_enc',
  addresses: 'addresses_enc',
  primaryCareProvider: 'primary_care_provider_enc',
  billing: 'billing_enc',
  insurance: 'insurance_enc',
  medicalCard: 'medical_card_enc',
  familyMembers: 'family_members_enc',
  emergencyContacts: 'emergency_contacts_enc',
  gender: 'gender_enc',
  medications: 'medications_enc',
  allergies: 'allergies_enc'
} as const
type EncryptedPart = keyof typeof encryptedColumns
const parts = Object.keys(encryptedColumns) as EncryptedPart[]
const columnList = [...parts.map((p) => encryptedColumns[p]), 'height_cm', 'weight_kg', 'medical_card_index']
const selectList = `patient_id, key_id, revision, updated_at, ${columnList.join(', ')}`

/** The blind index's purpose label: one derived key per indexed field. */
const MEDICAL_CARD_INDEX = 'patient_records.medical_card.number'

export interface StoredRecord {
  patientId: string
  record: RecordBody
  updatedAt: string
}

export interface KeyUsageRow { keyId: string, records: number }

export type { ReencryptionProgress } from '../crypto/reencryption.ts'

/** Another writer changed the record between this write's read and its update, five times running. */
export class RecordWriteConflictError extends Error {
  constructor () {
    super('the record changed while it was being written; retry')
    this.name = 'RecordWriteConflictError'
  }
}

interface Row {
  patient_id: string
  key_id: string
  revision: number
  updated_at: Date
  [column: string]: unknown
}

/** Empty lists and absent groups are stored as NULL and read back as [] / absent. */
function flatten (record: RecordBody): Partial<Record<EncryptedPart, unknown>> & { heightCm?: number, weightKg?: number } {
  const history = record.medicalHistory ?? {}
  const nonEmpty = <T>(list: T[] | undefined): T[] | undefined => (list === undefined || list.length === 0 ? undefined : list)
  return {
    dateOfBirth: record.dateOfBirth,
    addresses: nonEmpty(record.addresses),
    primaryCareProvider: record.primaryCareProvider,
    billing: record.billing,
    insurance: nonEmpty(record.insurance),
    medicalCard: record.medicalCard,
    familyMembers: nonEmpty(record.familyMembers),
    emergencyContacts: nonEmpty(record.emergencyContacts),
    gender: history.gender,
    medications: nonEmpty(history.medications),
    allergies: nonEmpty(history.allergies),
    heightCm: history.heightCm,
    weightKg: history.weightKg
  }
}

/** The record as the API shows it: lists always present, absent groups left out. */
export function normalizeRecord (record: RecordBody): RecordBody {
  const flat = flatten(record)
  const out: Record<string, unknown> = {}
  for (const key of ['dateOfBirth', 'primaryCareProvider', 'billing', 'medicalCard'] as const) {
    if (flat[key] !== undefined) out[key] = flat[key]
  }
  out.addresses = flat.addresses ?? []
  out.insurance = flat.insurance ?? []
  out.familyMembers = flat.familyMembers ?? []
  out.emergencyContacts = flat.emergencyContacts ?? []
  const history: Record<string, unknown> = {}
  if (flat.heightCm !== undefined) history.heightCm = flat.heightCm
  if (flat.weightKg !== undefined) history.weightKg = flat.weightKg
  if (flat.gender !== undefined) history.gender = flat.gender
  history.medications = flat.medications ?? []
  history.allergies = flat.allergies ?? []
  out.medicalHistory = history
  // Key order as in the schema, so responses read the same every time.
  return Object.fromEntries(
    ['dateOfBirth', 'addresses', 'primaryCareProvider', 'billing', 'insurance', 'medicalCard', 'familyMembers', 'emergencyContacts', 'medicalHistory']
      .filter((k) => out[k] !== undefined).map((k) => [k, out[k]])
  ) as RecordBody
}

/** PATCH semantics: each top-level field given replaces the stored one; null clears it. */
export function mergeRecord (current: RecordBody, patch: RecordPatch): RecordBody {
  const merged: Record<string, unknown> = { ...current }
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete merged[key]
    else if (value !== undefined) merged[key] = value
  }
  return normalizeRecord(merged as RecordBody)
}

export function createPatientRecordStore (pool: pg.Pool, keyring: Keyring, log: Logger) {
  const at = (patientId: string, part: EncryptedPart) => ({ table: TABLE, column: encryptedColumns[part], rowId: patientId })

  function encryptRow (patientId: string, record: RecordBody): unknown[] {
    const flat = flatten(record)
    const values: unknown[] = parts.map((part) => {
      const value = flat[part]
      return value === undefined ? null : encryptField(keyring, JSON.stringify(value), at(patientId, part))
    })
    const card = record.medicalCard?.number
    values.push(flat.heightCm ?? null, flat.weightKg ?? null, card === undefined ? null : blindIndex(keyring, MEDICAL_CARD_INDEX, card))
    return values
  }

  /** Throws UnknownKeyError / DecryptionError (typed, without data) when a value cannot be read. */
  function decryptRow (row: Row): RecordBody {
    const value = (part: EncryptedPart): any => {
      const envelope = row[encryptedColumns[part]] as string | null
      return envelope === null ? undefined : JSON.parse(decryptField(keyring, envelope, at(row.patient_id, part)))
    }
    const history: Record<string, unknown> = {
      heightCm: row.height_cm ?? undefined,
      weightKg: row.weight_kg ?? undefined,
      gender: value('gender'),
      medications: value('medications'),
      allergies: value('allergies')
    }
    return normalizeRecord({
      dateOfBirth: value('dateOfBirth'),
      addresses: value('addresses'),
      primaryCareProvider: value('primaryCareProvider'),
      billing: value('billing'),
      insurance: value('insurance'),
      medicalCard: value('medicalCard'),
      familyMembers: value('familyMembers'),
      emergencyContacts: value('emergencyContacts'),
      medicalHistory: history as RecordBody['medicalHistory']
    })
  }

  async function read (patientId: string): Promise<Row | null> {
    const { rows } = await pool.query(`SELECT ${selectList} FROM ${TABLE} WHERE patient_id = $1`, [patientId])
    return (rows[0] as Row | undefined) ?? null
  }

  /** Writes `record` under the active key if the row is still at `revision` (null: does not exist yet). */
  async function writeIf (patientId: string, record: RecordBody, revision: number | null): Promise<Date | null> {
    const values = encryptRow(patientId, record)
    if (revision === null) {
      const placeholders = columnList.map((_, i) => `$${i + 3}`).join(', ')
      const { rows } = await pool.query(
        `INSERT INTO ${TABLE} (patient_id, key_id, ${columnList.join(', ')}) VALUES ($1, $2, ${placeholders}) ` +
        'ON CONFLICT (patient_id) DO NOTHING RETURNING updated_at',
        [patientId, keyring.activeKeyId, ...values])
      return (rows[0]?.updated_at as Date | undefined) ?? null
    }
    const assignments = columnList.map((c, i) => `${c} = $${i + 4}`).join(', ')
    const { rows } = await pool.query(
      `UPDATE ${TABLE} SET key_id = $3, ${assignments}, revision = revision + 1, updated_at = now() ` +
      'WHERE patient_id = $1 AND revision = $2 RETURNING updated_at',
      [patientId, revision, keyring.activeKeyId, ...values])
    return (rows[0]?.updated_at as Date | undefined) ?? null
  }

  /** Read, change, write; retried when another writer got in between. */
  async function update (patientId: string, change: (current: RecordBody) => RecordBody): Promise<StoredRecord> {
    for (let attempt = 0; attempt < 5; attempt++) {
      const row = await read(patientId)
      const next = normalizeRecord(change(row === null ? normalizeRecord({}) : decryptRow(row)))
      const updatedAt = await writeIf(patientId, next, row?.revision ?? null)
      if (updatedAt !== null) return { patientId, record: next, updatedAt: updatedAt.toISOString() }
    }
    throw new RecordWriteConflictError()
  }

  /** Re-encrypts one row under the active key unless it changed meanwhile; true when it did. */
  async function reencrypt (row: Row): Promise<boolean> {
    return await writeIf(row.patient_id, decryptRow(row), row.revision) !== null
  }

  return {
    /** New writes use this key. */
    activeKeyId: keyring.activeKeyId,
    /** Every key id the keyring holds. */
    configuredKeyIds: [...keyring.keys.keys()],

    async get (patientId: string): Promise<StoredRecord | null> {
      const row = await read(patientId)
      if (row === null) return null
      const record = decryptRow(row)
      if (row.key_id !== keyring.activeKeyId) {
        // Lazy rotation: a record read under a retired key is rewritten under the active one.
        // A failure here costs nothing but a later retry, so the read still succeeds.
        await reencrypt(row).catch((err: unknown) => log.warn({ err, patientId }, 'lazy re-encryption of a patient record failed'))
      }
      return { patientId, record, updatedAt: row.updated_at.toISOString() }
    },

    /** Replaces the whole record (PUT). */
    async put (patientId: string, record: RecordBody): Promise<StoredRecord> {
      return await update(patientId, () => record)
    },

    /** Replaces the given top-level fields (PATCH); creates the record when there is none. */
    async patch (patientId: string, patch: RecordPatch): Promise<StoredRecord> {
      return await update(patientId, (current) => mergeRecord(current, patch))
    },

    /** Patients whose medical card number matches (after normalization), through the blind index. */
    async findByMedicalCardNumber (number: string): Promise<string[]> {
      const { rows } = await pool.query(
        `SELECT patient_id FROM ${TABLE} WHERE medical_card_index = $1 ORDER BY patient_id LIMIT 100`,
        [blindIndex(keyring, MEDICAL_CARD_INDEX, number)])
      return rows.map((r) => r.patient_id as string)
    },

    /** Records per key id, for the operator retiring a key. */
    async keyUsage (): Promise<KeyUsageRow[]> {
      const { rows } = await pool.query(`SELECT key_id, count(*)::int AS records FROM ${TABLE} GROUP BY key_id ORDER BY key_id`)
      return rows.map((r) => ({ keyId: r.key_id as string, records: r.records as number }))
    },

    /**
     * Re-encrypts every record not under the active key, in batches, in patient id order.
     * Rows that cannot be decrypted (a key missing from the configuration) are counted as
     * failed, logged by id and key id, and left as they are. `shouldStop` is asked between batches.
     */
    async reencryptAll (options: { batchSize?: number, onProgress?: (p: ReencryptionProgress) => void, shouldStop?: () => boolean } = {}): Promise<ReencryptionProgress> {
      const batchSize = options.batchSize ?? 200
      const { rows: [counted] } = await pool.query(`SELECT count(*)::int AS total FROM ${TABLE} WHERE key_id <> $1`, [keyring.activeKeyId])
      const progress: ReencryptionProgress = { done: 0, total: counted.total as number, failed: 0 }
      let after = '00000000-0000-0000-0000-000000000000'
      while (options.shouldStop?.() !== true) {
        const { rows } = await pool.query(
          `SELECT ${selectList} FROM ${TABLE} WHERE key_id <> $1 AND patient_id > $2 ORDER BY patient_id LIMIT $3`,
          [keyring.activeKeyId, after, batchSize])
        if (rows.length === 0) break
        for (const row of rows as Row[]) {
          after = row.patient_id
          try {
            // False: a concurrent write got there first, which re-encrypted it too.
            await reencrypt(row)
            progress.done++
          } catch (err) {
            progress.failed++
            log.error({ patientId: row.patient_id, keyId: row.key_id, err: { type: (err as Error).name, message: (err as Error).message } }, 'patient record could not be re-encrypted')
          }
        }
        options.onProgress?.({ ...progress })
      }
      return progress
    }
  }
}

export type PatientRecordStore = ReturnType<typeof createPatientRecordStore>
