import type { FastifyRequest } from 'fastify'
import { DecryptionError, UnknownKeyError } from '../../crypto/field-encryption.ts'
import { RecordWriteConflictError } from '../../patients/patient-records.ts'
import type { PatientRecordStore, StoredRecord } from '../../patients/patient-records.ts'
import type { ApiInstance, RouteDeps } from './route-deps.ts'
import { VigilError } from '../../errors/catalogue.ts'
import { KeyUsage, LookupBody, LookupResult, PatientRecord, RecordBody, RecordPatch, recordFields, recordProblems } from '../../patients/record-schemas.ts'
import type { RecordPatch as RecordPatchType } from '../../patients/record-schemas.ts'
import { IdParams, errorResponses } from '../schemas/common.ts'
import { clinicalTextKeyUsage } from '../../crypto/clinical-text.ts'

export interface PatientRecordRouteDeps extends Pick<RouteDeps, 'patientAccess' | 'voiceNotes' | 'db'> {
  patientRecords: PatientRecordStore
  /** Today's date (UTC, YYYY-MM-DD) for "not in the future"; a parameter so tests control the clock. */
  today?: () => string
}

function toResponse ({ patientId, record, updatedAt }: StoredRecord) {
  return { patientId, ...record, updatedAt }
}

/** Semantic checks after the schema's: every problem at once, with paths, never the values. */
function validate (body: RecordPatchType, today: string): void {
  const problems = recordProblems(body, today)
  if (problems.length > 0) throw new VigilError('VIGIL_ERR_VALIDATION', 'the record is invalid', problems)
}

/**
 * Store failures that mean "cannot read what is stored" become 500s with their own codes, and
 * are logged by patient id and key id only.
 */
async function readable<T> (request: FastifyRequest, patientId: string | null, work: () => Promise<T>): Promise<T> {
  try {
    return await work()
  } catch (err) {
    if (err instanceof UnknownKeyError) {
      request.log.error({ patientId, keyId: err.keyId }, 'patient record is encrypted under a key that is not configured')
      throw new VigilError('VIGIL_ERR_KEY_UNAVAILABLE', 'this record is encrypted under a key the server does not have')
    }
    if (err instanceof DecryptionError) {
      request.log.error({ patientId, reason: err.reason }, 'patient record failed to decrypt')
      throw new VigilError('VIGIL_ERR_DECRYPTION_FAILED', 'this record could not be decrypted')
    }
    if (err instanceof RecordWriteConflictError) throw new VigilError('VIGIL_ERR_CONFLICT', err.message)
    throw err
  }
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

export function patientRecordRoutes (app: ApiInstance, deps: PatientRecordRouteDeps): void {
  const { patientAccess, patientRecords } = deps
  const today = deps.today ?? (() => new Date().toISOString().slice(0, 10))
  const notes = 'Dates are YYYY-MM-DD. Validation errors name each field in `details` and never repeat a submitted value.'

  app.get('/patients/:id/record', {
    config: { permission: 'phi:read' },
    schema: {
      tags: ['records'],
      summary: 'A patient\'s record (personal information and medical history)',
      description: 'Lists are always present (possibly empty); absent groups are left out. 404 VIGIL_ERR_NOT_FOUND when no record was written yet.',
      params: IdParams,
      response: { 200: PatientRecord, ...errorResponses(404) }
    }
  }, async (request) => {
    const patientId = request.params.id
    await patientAccess.require(request, patientId, { action: 'phi:read', fields: recordFields })
    const stored = await readable(request, patientId, () => patientRecords.get(patientId))
    if (stored === null) throw new VigilError('VIGIL_ERR_NOT_FOUND', 'this patient has no record yet')
    return toResponse(stored)
  })

  // Writes: the access decision (and its audit row) comes before the body is validated, so an
  // attempt on a patient the caller may not reach is refused and audited as such whatever it sent.
  const writeAccessFirst = async (request: FastifyRequest): Promise<void> => {
    const id = (request.params as { id?: unknown }).id
    if (typeof id === 'string' && UUID.test(id)) await patientAccess.require(request, id, { action: 'phi:write', fields: recordFields })
  }

  app.put('/patients/:id/record', {
    config: { permission: 'phi:write' },
    preValidation: writeAccessFirst,
    schema: {
      tags: ['records'],
      summary: 'Replace a patient\'s record',
      description: `Fields left out are cleared. ${notes}`,
      params: IdParams,
      body: RecordBody,
      response: { 200: PatientRecord, ...errorResponses(404, 409, 413) }
    }
  }, async (request) => {
    const patientId = request.params.id
    validate(request.body, today())
    return toResponse(await readable(request, patientId, () => patientRecords.put(patientId, request.body)))
  })

  app.patch('/patients/:id/record', {
    config: { permission: 'phi:write' },
    preValidation: writeAccessFirst,
    schema: {
      tags: ['records'],
      summary: 'Change some fields of a patient\'s record',
      description: `Each top-level field given replaces the stored one whole (medicalHistory too); null clears it. Creates the record when there is none. ${notes}`,
      params: IdParams,
      body: RecordPatch,
      response: { 200: PatientRecord, ...errorResponses(404, 409, 413) }
    }
  }, async (request) => {
    const patientId = request.params.id
    validate(request.body, today())
    // The answer is the whole record, so every field is disclosed, not only those written
    // (writeAccessFirst passes them all).
    return toResponse(await readable(request, patientId, () => patientRecords.patch(patientId, request.body)))
  })

  app.post('/patients/lookup', {
    config: { permission: 'phi:read' },
    schema: {
      tags: ['records'],
      summary: 'Find patients by medical card number',
      description: 'Exact match through a keyed blind index (spaces, dashes and case are ignored). A POST, so the number stays out of URLs and access logs.',
      body: LookupBody,
      response: { 200: LookupResult, ...errorResponses() }
    }
  }, async (request) => {
    const matches = await patientRecords.findByMedicalCardNumber(request.body.medicalCardNumber)
    const principal = request.principal!
    const visible = await patientAccess.visiblePatients(principal)
    const items: Array<{ patientId: string }> = []
    for (const patientId of matches) {
      if (visible !== null && !visible.has(patientId)) continue
      // A match discloses the patient's card number: an audited PHI read of that field. A
      // refusal (recorded by the policy) leaves the patient out, as if there were no match.
      try {
        await patientAccess.require(request, patientId, { action: 'phi:read', fields: ['medicalCard'] })
      } catch (err) {
        if (err instanceof VigilError && (err.code === 'VIGIL_ERR_FORBIDDEN' || err.code === 'VIGIL_ERR_UNKNOWN_PATIENT')) continue
        throw err
      }
      items.push({ patientId })
    }
    return { items }
  })

  app.get('/admin/keys', {
    config: { permission: 'users:admin' },
    schema: {
      tags: ['records'],
      summary: 'Patient records, voice note transcripts and clinical free text per encryption key',
      description: 'Retire a key (remove it from VIGIL_SECRET_KEY / the key file) only once its count is 0. Keys are configuration, never API input.',
      response: { 200: KeyUsage, ...errorResponses() }
    }
  }, async () => {
    const usage = new Map((await patientRecords.keyUsage()).map((u) => [u.keyId, u.records]))
    const notes = new Map((await deps.voiceNotes?.keyUsage() ?? []).map((u) => [u.keyId, u.voiceNotes]))
    const clinical = new Map((await clinicalTextKeyUsage(deps.db.pool)).map((u) => [u.keyId, u.clinicalText]))
    const ids = new Set([...patientRecords.configuredKeyIds, ...usage.keys(), ...notes.keys(), ...clinical.keys()])
    return {
      activeKeyId: patientRecords.activeKeyId,
      keys: [...ids].sort().map((keyId) => ({
        keyId,
        configured: patientRecords.configuredKeyIds.includes(keyId),
        active: keyId === patientRecords.activeKeyId,
        records: usage.get(keyId) ?? 0,
        voiceNotes: notes.get(keyId) ?? 0,
        clinicalText: clinical.get(keyId) ?? 0
      }))
    }
  })
}
