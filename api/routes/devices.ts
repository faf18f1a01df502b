import type { FastifyRequest } from 'fastify'
import type { ApiInstance, RouteDeps } from './route-deps.ts'
import type { PatientStore } from '../../patients/patients.ts'
import type { Access } from '../../access/access.ts'
import type { PatientAccessPolicy } from '../../access/patient-access.ts'
import { VigilError } from '../../errors/catalogue.ts'
import {
  Device, DeviceDetail, DevicePatch, IdParams, NewDevice, PageQuery,
  decodeIdCursor, errorResponses, normalizeMac, page, pageOf, parseDateOrDateTime
} from '../schemas/common.ts'

// Clocks of the caller and the server disagree a little; "today, now" must not be refused.
const FUTURE_SKEW_MS = 5 * 60_000

/**
 * "Device data without the patient's identity" (issue 3 §4): a caller without
 * patients:read (device integrators, developers) sees devices, versions and assignment
 * periods, but not which patient an assignment names; a clinician sees the ids of the
 * patients it reaches (care team, break-glass) only. An owner (ownerUserId) who is a patient
 * is blanked the same way (security pass F6); `owners` are the items' owners, looked up once.
 * Returns the filter for one request.
 */
export async function patientIdentityFilter (request: FastifyRequest, patientAccess: PatientAccessPolicy,
  owners?: { patients: PatientStore, ids: Iterable<string | null> }): Promise<<T extends { patientId: string | null, ownerUserId?: string | null }>(item: T) => T> {
  const principal = request.principal
  const visible = principal !== null && principal.permissions.has('patients:read') ? await patientAccess.visiblePatients(principal) : new Set<string>()
  const hiddenOwners = new Set<string>()
  if (visible !== null && owners !== undefined) {
    for (const id of new Set(owners.ids)) {
      if (id !== null && !visible.has(id) && await owners.patients.get(id) !== null) hiddenOwners.add(id)
    }
  }
  return (item) => {
    let out = item
    if (visible !== null && (item.patientId === null || !visible.has(item.patientId))) out = { ...out, patientId: null }
    if (item.ownerUserId !== undefined && item.ownerUserId !== null && hiddenOwners.has(item.ownerUserId)) out = { ...out, ownerUserId: null }
    return out
  }
}

/** An owner must be an existing, active user (security pass F6): 404 VIGIL_ERR_UNKNOWN_USER otherwise. */
async function requireOwner (people: Access['people'], ownerUserId: string | null | undefined): Promise<void> {
  if (ownerUserId === undefined || ownerUserId === null) return
  const user = await people.getUser(ownerUserId)
  if (user === null || !user.active) throw new VigilError('VIGIL_ERR_UNKNOWN_USER', 'body/ownerUserId: no active user with this id')
}

export function deviceRoutes (app: ApiInstance, { devices, patientAccess, patients, access }: Pick<RouteDeps, 'devices' | 'patientAccess' | 'patients' | 'access'>): void {
  app.post('/devices', {
    config: { permission: 'devices:write' },
    schema: {
      tags: ['devices'],
      summary: 'Register a device',
      description: 'The MAC is stored lower-case and colon-separated; a MAC registered already gives 409 VIGIL_ERR_DUPLICATE_MAC; ownerUserId must be an active user (404 VIGIL_ERR_UNKNOWN_USER).',
      body: NewDevice,
      response: { 201: Device, ...errorResponses(404, 409, 413) }
    }
  }, async (request, reply) => {
    const body = request.body
    const mac = normalizeMac(body.mac)
    if (mac === null) {
      throw new VigilError('VIGIL_ERR_VALIDATION', 'body/mac is not a MAC address', [{
        path: 'body/mac',
        message: 'must be 6 or 8 hex octets: AA:BB:CC:DD:EE:FF, aa-bb-cc-dd-ee-ff, aabb.ccdd.eeff or aabbccddeeff'
      }])
    }
    const startedAt = parseDateOrDateTime(body.startedAt)
    if (startedAt === null) {
      throw new VigilError('VIGIL_ERR_VALIDATION', 'body/startedAt is not a date', [{
        path: 'body/startedAt', message: 'must be an ISO 8601 date (2025-11-01) or an RFC 3339 date-time with offset'
      }])
    }
    if (startedAt > Date.now() + FUTURE_SKEW_MS) {
      throw new VigilError('VIGIL_ERR_VALIDATION', 'body/startedAt is in the future', [{
        path: 'body/startedAt', message: 'must not be in the future'
      }])
    }
    await requireOwner(access.people, body.ownerUserId)
    // Actor ids are user ids; API tokens are not users yet, so changes are recorded without one.
    const device = await devices.create({
      name: body.name.trim(),
      mac,
      firmwareVersion: body.firmwareVersion,
      softwareVersion: body.softwareVersion,
      startedAt: new Date(startedAt).toISOString(),
      ownerUserId: body.ownerUserId ?? null
    }, null)
    reply.code(201)
    return device
  })

  app.get('/devices', {
    config: { permission: 'devices:read' },
    schema: {
      tags: ['devices'],
      summary: 'List devices (ordered by id)',
      querystring: PageQuery,
      response: { 200: page(Device), ...errorResponses() }
    }
  }, async (request) => {
    const { limit, cursor } = request.query
    const rows = await devices.list({ limit: limit + 1, afterId: decodeIdCursor(cursor) })
    const identify = await patientIdentityFilter(request, patientAccess, { patients, ids: rows.map((d) => d.ownerUserId) })
    return pageOf(rows.map(identify), limit, (last) => last.id)
  })

  app.get('/devices/:id', {
    config: { permission: 'devices:read' },
    schema: {
      tags: ['devices'],
      summary: 'One device, with its version and assignment history',
      params: IdParams,
      response: { 200: DeviceDetail, ...errorResponses(404) }
    }
  }, async (request) => {
    const id = request.params.id
    const [device, versions, assignments] = await Promise.all([devices.get(id), devices.versions(id), devices.assignments(id)])
    if (device === null) throw new VigilError('VIGIL_ERR_UNKNOWN_DEVICE', 'no device with this id')
    const identify = await patientIdentityFilter(request, patientAccess, { patients, ids: [device.ownerUserId] })
    return { ...identify(device), versions, assignments: assignments.map(identify) }
  })

  app.patch('/devices/:id', {
    config: { permission: 'devices:write' },
    schema: {
      tags: ['devices'],
      summary: 'Change a device',
      description: 'At least one field. A firmware or software change is added to the version history.',
      params: IdParams,
      body: DevicePatch,
      response: { 200: Device, ...errorResponses(404, 413) }
    }
  }, async (request) => {
    const { name, ...rest } = request.body
    await requireOwner(access.people, rest.ownerUserId)
    const device = await devices.update(request.params.id, name === undefined ? rest : { ...rest, name: name.trim() }, null)
    return (await patientIdentityFilter(request, patientAccess, { patients, ids: [device.ownerUserId] }))(device)
  })
}
