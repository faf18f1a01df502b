import { Type } from '@fastify/type-provider-typebox'
import type { ApiInstance, RouteDeps } from './route-deps.ts'
import { VigilError } from '../../errors/catalogue.ts'
import { IdParams, errorResponses } from '../schemas/common.ts'

/** Kept payloads looked at per request; a device with more is replayed by calling again. */
const REPLAY_BATCH = 500

const ReplayResult = Type.Object({
  replayedMessages: Type.Integer({ description: 'Kept payloads whose every reading is now stored (marked: not replayed again)' }),
  storedReadings: Type.Integer({ description: 'Readings written (rewriting one already stored changes nothing)' }),
  stillUnassigned: Type.Integer({ description: 'Readings still outside every assignment: their payloads stay kept' })
})

/**
 * POST /v1/devices/{id}/rejections/replay: stores the readings of the device's kept
 * device_unassigned payloads that today's assignments cover (issue 12). Idempotent: readings
 * are keyed by patient, device, metric and time, and fully replayed payloads are marked.
 */
export function deviceRejectionReplayRoutes (app: ApiInstance, { devices, rejections, patientAccess, keptReplay }: Pick<RouteDeps, 'devices' | 'rejections' | 'patientAccess' | 'keptReplay'>): void {
  if (keptReplay === undefined) return
  app.post('/devices/:id/rejections/replay', {
    config: { permission: 'devices:write' },
    schema: {
      tags: ['devices'],
      summary: 'Store kept device_unassigned payloads under today\'s assignments',
      description: `Looks at up to ${REPLAY_BATCH} kept payloads, oldest first. The caller must be able to see the device's current ` +
        'patient and every patient a replayed reading belongs to (404 VIGIL_ERR_UNKNOWN_PATIENT otherwise, nothing stored); ' +
        'each is audited as rejections:replay. Correct the assignment first (PATCH /v1/devices/{id}/assignment or PUT). ' +
        'Refused with 503 while storage is low, like every write.',
      params: IdParams,
      response: { 200: ReplayResult, ...errorResponses(404) }
    }
  }, async (request) => {
    const device = await devices.get(request.params.id)
    if (device === null) throw new VigilError('VIGIL_ERR_UNKNOWN_DEVICE', 'no device with this id')
    const kept = await rejections.keptUnassigned(device.id, REPLAY_BATCH)
    const resolved = []
    for (const k of kept) resolved.push({ id: k.id, ...await keptReplay.resolveKept(device.id, k.topic, k.payload, k.receivedAt) })
    // Access to every patient first: a refusal stores nothing.
    const patients = new Set<string>(device.patientId === null ? [] : [device.patientId])
    for (const r of resolved) for (const reading of r.readings) patients.add(reading.patientId)
    for (const patientId of patients) await patientAccess.require(request, patientId, { action: 'rejections:replay' })

    let storedReadings = 0
    let stillUnassigned = 0
    const done: string[] = []
    for (const r of resolved) {
      await keptReplay.storeKept(r.readings)
      storedReadings += r.readings.length
      stillUnassigned += r.unassigned
      if (r.unassigned === 0 && r.readings.length > 0) done.push(r.id)
    }
    await rejections.markReplayed(done)
    request.log.info({ deviceId: device.id, replayedMessages: done.length, storedReadings, stillUnassigned }, 'kept payloads replayed')
    return { replayedMessages: done.length, storedReadings, stillUnassigned }
  })
}
