import type { FastifyRequest } from 'fastify'
import { VigilError } from '../../errors/catalogue.ts'
import { deviceOf, flagOf, patientOf, searchsetOf } from '../../fhir/resources.ts'
import type { Resource } from '../../fhir/resources.ts'
import { countOf, invalidParameter, patientIdOf, refuseUnknown, searchParameters, single, tokensOf } from '../../fhir/search-params.ts'
import { URI_IDENTIFIER_SYSTEM } from '../../fhir/vital-signs.ts'
import { recordFields } from '../../patients/record-schemas.ts'
import { auditActor } from '../../access/access-policy.ts'
import { decodeIdCursor } from '../schemas/common.ts'
import { patientIdentityFilter } from './devices.ts'
import { fhirBase } from './fhir-context.ts'
import type { FhirRouteDeps } from './fhir-context.ts'
import type { ApiInstance } from './route-deps.ts'

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i
const DEFAULT_COUNT = 100
const MAX_COUNT = 1000

const idParam = (request: FastifyRequest): string => (request.params as { id: string }).id

/** A Vigil patient id from an identifier token: urn:ietf:rfc:3986|urn:uuid:{id}, urn:uuid:{id} or {id}. */
function vigilIdOf (system: string | undefined, code: string): string | null {
  if (system !== undefined && system !== URI_IDENTIFIER_SYSTEM) return null
  const id = code.startsWith('urn:uuid:') ? code.slice('urn:uuid:'.length) : code
  return UUID.test(id) ? id.toLowerCase() : null
}

export function fhirPatientRoutes (app: ApiInstance, deps: FhirRouteDeps): void {
  const { patients, patientAccess, patientRecords, devices, access } = deps

  /**
   * The Patient as this caller may see it: the name with patients:read, the record's fields with
   * phi:read too (one audit row either way, naming the fields disclosed). Throws the policy's 404.
   */
  async function readPatient (request: FastifyRequest, id: string): Promise<Resource> {
    const phi = request.principal!.permissions.has('phi:read') && patientRecords !== undefined
    await patientAccess.require(request, id, phi
      ? { action: 'phi:read', fields: ['displayName', ...recordFields] }
      : { action: 'patients:read', fields: ['displayName'] })
    const patient = await patients.get(id)
    if (patient === null) throw new VigilError('VIGIL_ERR_UNKNOWN_PATIENT', 'no patient with this id')
    const stored = phi ? await patientRecords.get(id) : null
    return patientOf(patient, stored?.record ?? null)
  }

  /** readPatient, or nothing where the policy refuses (a search matches no patient the caller cannot reach). */
  async function visiblePatient (request: FastifyRequest, id: string): Promise<Resource | null> {
    try {
      return await readPatient(request, id)
    } catch (err) {
      if (err instanceof VigilError && err.code === 'VIGIL_ERR_UNKNOWN_PATIENT') return null
      throw err
    }
  }

  app.get('/Patient/:id', {
    config: { permission: 'patients:read' },
    schema: { hide: true, summary: 'One Patient (record fields with phi:read)' }
  }, async (request) => await readPatient(request, idParam(request)))

  /**
   * Patients by `_id` and `identifier` (ANDed; comma-separated values ORed): Vigil ids, and with
   * `byCard` (POST _search, so the number never travels in a URL) medical card numbers.
   */
  async function patientsByIdentifier (request: FastifyRequest, idValue: string | undefined, identifierValue: string | undefined, byCard: boolean): Promise<Resource[]> {
    const byId = idValue === undefined
      ? null
      : new Set(tokensOf(idValue, '_id').flatMap((t) => t.system === undefined && UUID.test(t.code) ? [t.code.toLowerCase()] : []))
    let byIdentifier: Set<string> | null = null
    if (identifierValue !== undefined) {
      byIdentifier = new Set()
      for (const token of tokensOf(identifierValue, 'identifier')) {
        const id = vigilIdOf(token.system, token.code)
        if (id !== null) {
          byIdentifier.add(id)
        } else if (!byCard) {
          // A medical card number is PHI: it may not travel in a URL (logs, proxies, history).
          throw invalidParameter('identifier', `in a URL takes ${URI_IDENTIFIER_SYSTEM}|urn:uuid:{id} only; search by medical card number with POST Patient/_search (form body)`)
        } else if (request.principal!.permissions.has('phi:read') && patientRecords !== undefined) {
          for (const match of await patientRecords.findByMedicalCardNumber(token.code)) byIdentifier.add(match)
        }
      }
    }
    const wanted = byId === null ? [...byIdentifier!] : byIdentifier === null ? [...byId] : [...byId].filter((id) => byIdentifier.has(id))
    const found: Resource[] = []
    for (const id of wanted.slice(0, MAX_COUNT)) {
      const patient = await visiblePatient(request, id)
      if (patient !== null) found.push(patient)
    }
    return found
  }

  app.post('/Patient/_search', {
    // A read in a POST (the search stays out of URLs): no sync on the embedded default.
    config: { permission: 'patients:read', durable: false },
    schema: { hide: true, summary: 'Patients by Vigil id or medical card number (form body)' }
  }, async (request) => {
    const params = searchParameters(request.body)
    refuseUnknown(params, ['_id', 'identifier', '_format'])
    if (searchParameters(request.query).size > 0) throw invalidParameter('_search', 'takes its parameters in the form body only')
    const idValue = single(params, '_id')
    const identifierValue = single(params, 'identifier')
    if (idValue === undefined && identifierValue === undefined) throw invalidParameter('identifier', 'or _id is required')
    const base = fhirBase(request)
    // The self link names no identifier value: it may be a medical card number.
    return searchsetOf({ self: `${base}/Patient/_search`, base, resources: await patientsByIdentifier(request, idValue, identifierValue, true) })
  })

  app.get('/Patient', {
    config: { permission: 'patients:read' },
    schema: { hide: true, summary: 'Patients by Vigil identifier, or those the caller may see' }
  }, async (request) => {
    const params = searchParameters(request.query)
    refuseUnknown(params, ['_id', 'identifier', '_count', '_cursor', '_format'])
    const base = fhirBase(request)
    const idValue = single(params, '_id')
    const identifierValue = single(params, 'identifier')
    if (idValue !== undefined || identifierValue !== undefined) {
      const found = await patientsByIdentifier(request, idValue, identifierValue, false)
      const q = new URLSearchParams()
      if (idValue !== undefined) q.set('_id', idValue)
      if (identifierValue !== undefined) q.set('identifier', identifierValue)
      return searchsetOf({ self: `${base}/Patient?${q.toString()}`, base, resources: found })
    }

    // No filter: the caller's visible patients by name, as GET /v1/patients (the cursor is an id, never a name).
    const count = countOf(params, DEFAULT_COUNT, MAX_COUNT)
    const cursor = single(params, '_cursor')
    const afterId = decodeIdCursor(cursor)
    const visible = await patientAccess.visiblePatients(request.principal!)
    if (afterId !== undefined && visible !== null && !visible.has(afterId)) throw new VigilError('VIGIL_ERR_BAD_CURSOR', 'cursor is not one this API returned')
    const rows = visible !== null && visible.size === 0
      ? []
      : await patients.list({ limit: count + 1, afterId, ids: visible === null ? undefined : [...visible] })
    const more = rows.length > count
    const resources = rows.slice(0, count).map((p) => patientOf(p))
    // Names are PHI: one audit row per list read, as GET /v1/patients.
    if (resources.length > 0) {
      await access.audit.record({ ...auditActor(request), patientId: null, action: 'patients:list', fields: ['displayName'], outcome: 'allowed' })
    }
    const link = (extra: Record<string, string>) => `${base}/Patient?${new URLSearchParams({ _count: String(count), ...extra }).toString()}`
    return searchsetOf({
      self: link(cursor === undefined ? {} : { _cursor: cursor }),
      base,
      resources,
      ...(more ? { next: link({ _cursor: rows[count - 1]!.id }) } : {})
    })
  })

  app.get('/Device/:id', {
    config: { permission: 'devices:read' },
    schema: { hide: true, summary: 'One Device (its patient only when the caller may see them)' }
  }, async (request) => {
    const id = idParam(request)
    const device = UUID.test(id) ? await devices.get(id) : null
    if (device === null) throw new VigilError('VIGIL_ERR_UNKNOWN_DEVICE', 'no device with this id')
    const identify = await patientIdentityFilter(request, patientAccess)
    return deviceOf(identify(device))
  })

  app.get('/Device', {
    config: { permission: 'devices:read' },
    schema: { hide: true, summary: 'The devices assigned to a patient now' }
  }, async (request) => {
    const params = searchParameters(request.query)
    refuseUnknown(params, ['patient', '_count', '_cursor', '_format'])
    const reference = single(params, 'patient')
    if (reference === undefined) throw invalidParameter('patient', 'is required')
    const patientId = patientIdOf(reference, 'patient')
    const count = countOf(params, DEFAULT_COUNT, MAX_COUNT)
    const cursor = single(params, '_cursor')
    const afterId = decodeIdCursor(cursor)
    await patientAccess.require(request, patientId, { action: 'devices:read' })
    const rows = await devices.list({ limit: count + 1, afterId, patientId })
    const base = fhirBase(request)
    const link = (extra: Record<string, string>) => `${base}/Device?${new URLSearchParams({ patient: patientId, _count: String(count), ...extra }).toString()}`
    const more = rows.length > count
    return searchsetOf({
      self: link(cursor === undefined ? {} : { _cursor: cursor }),
      base,
      resources: rows.slice(0, count).map(deviceOf),
      ...(more ? { next: link({ _cursor: rows[count - 1]!.id }) } : {})
    })
  })

  const alerts = deps.alerts
  if (alerts === undefined) return

  app.get('/Flag/:id', {
    config: { permission: 'alerts:read' },
    schema: { hide: true, summary: 'One alert as a Flag' }
  }, async (request) => {
    const id = idParam(request)
    const alert = UUID.test(id) ? await alerts.store.get(id) : null
    if (alert === null) throw new VigilError('VIGIL_ERR_UNKNOWN_ALERT', 'no alert with this id')
    try {
      await patientAccess.require(request, alert.patientId, { action: 'alerts:read', details: { alertId: id } })
    } catch (err) {
      if (err instanceof VigilError && err.code === 'VIGIL_ERR_UNKNOWN_PATIENT') throw new VigilError('VIGIL_ERR_UNKNOWN_ALERT', 'no alert with this id')
      throw err
    }
    return flagOf(alert)
  })

  app.get('/Flag', {
    config: { permission: 'alerts:read' },
    schema: { hide: true, summary: 'A patient\'s unresolved alerts as Flags, newest first' }
  }, async (request) => {
    const params = searchParameters(request.query)
    refuseUnknown(params, ['patient', '_format'])
    const reference = single(params, 'patient')
    if (reference === undefined) throw invalidParameter('patient', 'is required')
    const patientId = patientIdOf(reference, 'patient')
    await patientAccess.require(request, patientId, { action: 'alerts:read' })
    const [open, acknowledged] = await Promise.all((['open', 'acknowledged'] as const).map((status) =>
      alerts.store.list({ status, patientId, patients: null, limit: MAX_COUNT })))
    const unresolved = [...open!, ...acknowledged!].sort((a, b) => Number(BigInt(b.seq) - BigInt(a.seq))).slice(0, MAX_COUNT)
    const base = fhirBase(request)
    return searchsetOf({ self: `${base}/Flag?patient=${patientId}`, base, resources: unresolved.map(flagOf) })
  })
}
