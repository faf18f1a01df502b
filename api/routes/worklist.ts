import { Type } from '@fastify/type-provider-typebox'
import { auditActor } from '../../access/access-policy.ts'
import type { Alert } from '../../alerts/lifecycle/alert-store.ts'
import type { AlertingApi } from '../../alerts/lifecycle/alerting.ts'
import { compareUrgency, news2BandOf, severityRank } from '../../web/src/urgency.ts'
import type { Severity } from '../../web/src/urgency.ts'
import { Uuid, errorResponses } from '../schemas/common.ts'
import type { ApiInstance, RouteDeps } from './route-deps.ts'

// A worklist is a screen, not an export: an admin (who sees every patient) gets the first ones by urgency.
export const WORKLIST_MAX_PATIENTS = 1000
const NEWS2_METRIC = 'news2_score'

const Instant = Type.String({ format: 'date-time' })
const NullableInstant = Type.Union([Instant, Type.Null()])

const WorklistRow = Type.Object({
  patientId: Uuid,
  displayName: Type.String(),
  reach: Type.Union([Type.Literal('care-team'), Type.Literal('break-glass'), Type.Literal('self'), Type.Literal('all')]),
  alerts: Type.Array(Type.Object({
    id: Uuid,
    ruleId: Type.String(),
    severity: Type.String(),
    status: Type.String(),
    summary: Type.String(),
    openedAt: Instant,
    escalationTier: Type.Integer(),
    assignedTo: Type.Union([Type.String(), Type.Null()])
  }), { description: 'Open and acknowledged alerts, most severe first' }),
  news2: Type.Union([Type.Object({
    total: Type.Number(),
    band: Type.String({ description: 'low, medium or high from the total (RCP 2017 chart 2)' }),
    at: Instant,
    previous: Type.Union([Type.Number(), Type.Null()], { description: 'The score before, for the trend' })
  }), Type.Null()]),
  vitals: Type.Array(Type.Object({ metric: Type.String(), value: Type.Number(), unit: Type.String(), ts: Instant })),
  devices: Type.Array(Type.Object({
    id: Uuid,
    name: Type.String(),
    connected: Type.Boolean(),
    since: NullableInstant,
    lastReadingAt: NullableInstant,
    batteryPercent: Type.Union([Type.Number(), Type.Null()])
  }))
})

/**
 * GET /v1/worklist: one row per patient the caller reaches (care team, on-call, break-glass; a
 * patient: themselves; an admin: everyone), sorted by urgency (web/src/urgency.ts), with what
 * the web app's worklist shows. Parts the caller's permissions do not cover are left empty.
 */
export function worklistRoutes (app: ApiInstance, deps: Pick<RouteDeps, 'patientAccess' | 'patients' | 'readings' | 'devices' | 'access'> & { alerts?: AlertingApi }): void {
  const { patientAccess, patients, readings, devices, access } = deps

  app.get('/worklist', {
    config: { permission: 'patients:read' },
    schema: {
      tags: ['patients'],
      summary: 'The caller\'s patients by urgency, with alerts, NEWS2, latest vitals and devices',
      description: `Sorted by open alert severity, then NEWS2 total, then acknowledged alerts, then name. At most ${WORKLIST_MAX_PATIENTS} patients. ` +
        'One audit row per read (patientId null), as GET /v1/patients.',
      response: { 200: Type.Object({ items: Type.Array(WorklistRow), truncated: Type.Boolean() }), ...errorResponses() }
    }
  }, async (request) => {
    const principal = request.principal!
    const visible = await patientAccess.visiblePatients(principal)
    const people = visible !== null && visible.size === 0
      ? []
      : await patients.list({ limit: WORKLIST_MAX_PATIENTS + 1, ids: visible === null ? undefined : [...visible] })
    const truncated = people.length > WORKLIST_MAX_PATIENTS
    const shown = people.slice(0, WORKLIST_MAX_PATIENTS)
    const ids = shown.map((p) => p.id)
    const can = (permission: Parameters<typeof principal.permissions.has>[0]): boolean => principal.permissions.has(permission)

    const alertsByPatient = new Map<string, Alert[]>()
    if (deps.alerts !== undefined && can('alerts:read') && ids.length > 0) {
      for (const status of ['open', 'acknowledged'] as const) {
        const rows = await deps.alerts.store.list({ status, patients: new Set(ids), limit: 10_000 })
        for (const alert of rows) alertsByPatient.set(alert.patientId, [...(alertsByPatient.get(alert.patientId) ?? []), alert])
      }
    }
    const devicesByPatient = new Map<string, Awaited<ReturnType<typeof devices.currentForPatients>>>()
    if (can('devices:read')) {
      for (const device of await devices.currentForPatients(ids)) {
        if (device.patientId !== null) devicesByPatient.set(device.patientId, [...(devicesByPatient.get(device.patientId) ?? []), device])
      }
    }
    const now = access.now()
    // One query each for every shown patient (not one per patient): latest readings, the last
    // two NEWS2 scores, and which patients the caller reaches only through break-glass.
    const [latestByPatient, news2ByPatient, breakGlassOnly] = await Promise.all([
      can('readings:read') ? readings.latestForPatients(ids) : new Map<string, never[]>(),
      can('readings:read') ? readings.recentForPatients(ids, NEWS2_METRIC, 2) : new Map<string, never[]>(),
      visible !== null && principal.userId !== null ? access.people.breakGlassOnly(principal.userId, ids, now) : new Set<string>()
    ])
    const rows = shown.map((patient) => {
      const latest = latestByPatient.get(patient.id) ?? []
      const news2Readings = news2ByPatient.get(patient.id) ?? []
      const alerts = (alertsByPatient.get(patient.id) ?? [])
        .sort((a, b) => severityRank[b.severity as Severity] - severityRank[a.severity as Severity] || b.openedAt.localeCompare(a.openedAt))
      let reach: 'care-team' | 'break-glass' | 'self' | 'all' = visible === null ? 'all' : principal.userId === patient.id ? 'self' : 'care-team'
      if (reach === 'care-team' && breakGlassOnly.has(patient.id)) reach = 'break-glass'
      const [newest, before] = news2Readings
      return {
        patientId: patient.id,
        displayName: patient.displayName,
        reach,
        alerts: alerts.map((a) => ({
          id: a.id, ruleId: a.ruleId, severity: a.severity, status: a.status, summary: a.summary,
          openedAt: a.openedAt, escalationTier: a.escalationTier, assignedTo: a.assignedTo
        })),
        news2: newest === undefined
          ? null
          : { total: newest.value, band: news2BandOf(newest.value), at: new Date(newest.ts).toISOString(), previous: before?.value ?? null },
        vitals: latest.filter((r) => r.metric !== NEWS2_METRIC)
          .map((r) => ({ metric: r.metric, value: r.value, unit: r.unit, ts: new Date(r.ts).toISOString() })),
        devices: (devicesByPatient.get(patient.id) ?? []).map((d) => ({
          id: d.id, name: d.name, connected: d.presence.connected, since: d.presence.since,
          lastReadingAt: d.presence.lastReadingAt, batteryPercent: d.presence.batteryPercent
        }))
      }
    })
    const facts = (row: typeof rows[number]) => ({
      openSeverity: (row.alerts.find((a) => a.status === 'open')?.severity ?? null) as Severity | null,
      acknowledgedSeverity: (row.alerts.find((a) => a.status === 'acknowledged')?.severity ?? null) as Severity | null,
      news2Total: row.news2?.total ?? null,
      name: row.displayName
    })
    rows.sort((a, b) => compareUrgency(facts(a), facts(b)))
    if (rows.length > 0) {
      // Names and vitals are PHI: one audit row per worklist read, with no single patient (as GET /v1/patients).
      await access.audit.record({
        ...auditActor(request), patientId: null,
        action: 'worklist:read', fields: ['displayName', 'readings'], outcome: 'allowed'
      })
    }
    return { items: rows, truncated }
  })
}
