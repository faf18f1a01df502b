import { Type } from '@fastify/type-provider-typebox'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { ServerResponse } from 'node:http'
import type { Alert, AlertEvent, Actor, CommittedEvent } from '../../alerts/lifecycle/alert-store.ts'
import { notificationPayload } from '../../alerts/lifecycle/alert-store.ts'
import type { AlertingApi } from '../../alerts/lifecycle/alerting.ts'
import type { ApiInstance, RouteDeps } from './route-deps.ts'
import { credentialOf } from '../../access/auth.ts'
import type { Principal } from '../../access/auth.ts'
import { VigilError } from '../../errors/catalogue.ts'
import { IdParams, PageLimit, Uuid, decodeSerialCursor, errorResponses, instantMs, invalid, page, pageOf } from '../schemas/common.ts'

const Severity = Type.Union([Type.Literal('low'), Type.Literal('medium'), Type.Literal('high'), Type.Literal('critical')])
const Status = Type.Union([Type.Literal('open'), Type.Literal('acknowledged'), Type.Literal('resolved')])
const Instant = Type.String({ format: 'date-time' })
const NullableInstant = Type.Union([Instant, Type.Null()])
const NullableString = Type.Union([Type.String(), Type.Null()])

const AlertBody = Type.Object({
  id: Uuid,
  patientId: Uuid,
  ruleId: Type.String(),
  kind: Type.String(),
  severity: Severity,
  status: Status,
  summary: Type.String({ description: 'PHI-free: metric, value, bound' }),
  details: Type.Object({}, { additionalProperties: true, description: 'Facts from the rule: metric, value, threshold, no-data cause …' }),
  openedAt: Instant,
  lastFiredAt: Instant,
  lastChangedAt: Instant,
  occurrences: Type.Integer({ description: 'Firings folded into this alert' }),
  acknowledgedBy: NullableString,
  acknowledgedAt: NullableInstant,
  assignedTo: NullableString,
  resolvedBy: NullableString,
  resolvedAt: NullableInstant,
  resolution: Type.Union([Type.Literal('auto'), Type.Literal('manual'), Type.Null()]),
  escalationPolicy: NullableString,
  escalationTier: Type.Integer(),
  nextEscalationAt: NullableInstant
})

const AlertEventBody = Type.Object({
  id: Type.String({ description: 'Also the SSE event id' }),
  alertId: Uuid,
  type: Type.String({ description: 'opened, updated, severity_raised, acknowledged, assigned, commented, escalated, resolved' }),
  actorKind: Type.String(),
  actor: NullableString,
  at: Instant,
  body: Type.Object({}, { additionalProperties: true, description: 'commented: {text} (a clinical note); opened/escalated: {tier, notify, notified (user ids reached), reopenedFrom?}; updated: {from, to}; resolved: {resolution, reason?}' }),
  notifiedPeople: Type.Optional(Type.Array(Type.Object({ userId: Uuid, displayName: NullableString }), { description: 'opened/escalated: the people body.notified names, with their display names' }))
})
const Person = Type.Object({ userId: Uuid, displayName: NullableString })

const AlertListQuery = Type.Object({
  status: Type.Optional(Status),
  patientId: Type.Optional(Uuid),
  ruleId: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
  severity: Type.Optional(Severity),
  from: Type.Optional(Type.String({ format: 'date-time', description: 'opened at or after (inclusive)' })),
  to: Type.Optional(Type.String({ format: 'date-time', description: 'opened before (exclusive)' })),
  limit: PageLimit,
  cursor: Type.Optional(Type.String({ maxLength: 64, description: 'nextCursor of the previous page' }))
}, { additionalProperties: false })

const MyAlertBody = Type.Object({
  ...AlertBody.properties,
  notifiedAs: Type.Object({
    tier: Type.Integer({ description: 'Escalation tier that reached me last' }),
    role: Type.String({ description: "The tier's notify name I was reached as" }),
    via: Type.Union([Type.Literal('care_team'), Type.Literal('on_call')]),
    at: Instant
  })
})

const MyAlertsQuery = Type.Object({
  status: Type.Optional(Status),
  all: Type.Optional(Type.Boolean({ description: 'Resolved ones too' })),
  limit: PageLimit,
  cursor: Type.Optional(Type.String({ maxLength: 64, description: 'nextCursor of the previous page' }))
}, { additionalProperties: false })

const BurdenQuery = Type.Object({
  from: Type.Optional(Type.String({ format: 'date-time', description: 'Default: 7 days before `to`' })),
  to: Type.Optional(Type.String({ format: 'date-time', description: 'Default: now' }))
}, { additionalProperties: false })

const Burden = Type.Object({
  from: Instant,
  to: Instant,
  rules: Type.Array(Type.Object({
    ruleId: Type.String(),
    alerts: Type.Integer(),
    patients: Type.Integer(),
    alertsPerPatientDay: Type.Union([Type.Number(), Type.Null()], { description: 'Alerts opened per monitored patient-day (device assignments in the window)' }),
    acknowledged: Type.Integer(),
    medianSecondsToAcknowledge: Type.Union([Type.Number(), Type.Null()]),
    p90SecondsToAcknowledge: Type.Union([Type.Number(), Type.Null()])
  }))
})

const AssignBody = Type.Object({ userId: Uuid }, { additionalProperties: false })
const CommentBody = Type.Object({ text: Type.String({ minLength: 1, maxLength: 4000 }) }, { additionalProperties: false })
const ResolveBody = Type.Object({ reason: Type.Optional(Type.String({ minLength: 1, maxLength: 1000 })) }, { additionalProperties: false })

const DAY_MS = 86_400_000
// A clinician's browser tab keeps one stream; a stream that cannot keep up (1 MiB unsent) is
// closed and resumes with Last-Event-ID instead of growing without bound.
const MAX_UNSENT_BYTES = 1024 * 1024
const HEARTBEAT_MS = 15_000
const BACKLOG_PAGE = 500
const BACKLOG_MAX = 10_000

function actorOf (principal: Principal): Actor {
  return principal.userId !== null ? { kind: 'user', id: principal.userId } : { kind: 'token', id: principal.tokenId }
}

/** Alert routes under /v1 (tag alerts). Every route touching one alert checks its patient. */
export function alertRoutes (app: ApiInstance, deps: Pick<RouteDeps, 'patientAccess' | 'access'> & Partial<Pick<RouteDeps, 'authenticate'>> & { alerts: AlertingApi }): void {
  const { patientAccess } = deps
  const { store, notifier } = deps.alerts

  /** The alert, once the principal may `action` its patient; one answer (404) for missing and hidden. */
  async function alertFor (request: FastifyRequest, id: string, action: string): Promise<Alert> {
    const alert = await store.get(id)
    if (alert === null) throw new VigilError('VIGIL_ERR_UNKNOWN_ALERT', 'no alert with this id')
    try {
      await patientAccess.require(request, alert.patientId, { action })
    } catch (err) {
      if (err instanceof VigilError && err.code === 'VIGIL_ERR_UNKNOWN_PATIENT') throw new VigilError('VIGIL_ERR_UNKNOWN_ALERT', 'no alert with this id')
      throw err
    }
    return alert
  }

  app.get('/alerts', {
    config: { permission: 'alerts:read' },
    schema: {
      tags: ['alerts'],
      summary: 'List alerts, newest first (only patients visible to the caller)',
      querystring: AlertListQuery,
      response: { 200: page(AlertBody), ...errorResponses(404) }
    }
  }, async (request) => {
    const q = request.query
    const from = q.from === undefined ? undefined : instantMs(q.from, 'querystring/from')
    const to = q.to === undefined ? undefined : instantMs(q.to, 'querystring/to')
    if (from !== undefined && to !== undefined && from >= to) throw invalid('querystring/to', 'must be after from')
    let patients = await patientAccess.visiblePatients(request.principal!)
    if (q.patientId !== undefined) {
      await patientAccess.require(request, q.patientId, { action: 'alerts:read' })
      patients = null
    }
    const rows = await store.list({
      status: q.status, patientId: q.patientId, ruleId: q.ruleId, severity: q.severity, from, to, patients,
      limit: q.limit + 1, beforeSeq: decodeSerialCursor(q.cursor)
    })
    const { items, nextCursor } = pageOf(rows, q.limit, (last) => last.seq)
    // Only patients the caller may see now (removed from the care team, a shift over: gone);
    // filtered after paging, so the cursor stays right and a page may hold fewer items.
    const visible = await patientAccess.visiblePatients(request.principal!)
    return { items: items.filter((a) => visible === null || visible.has(a.patientId)).map(({ seq: _seq, ...alert }) => alert), nextCursor }
  })

  app.get('/alerts/burden', {
    config: { permission: 'rules:read' },
    schema: {
      tags: ['alerts'],
      summary: 'Alert burden per rule: alerts per patient-day, time to acknowledge',
      description: 'Alerts opened in [from, to), all patients (aggregates only, no patient ids).',
      querystring: BurdenQuery,
      response: { 200: Burden, ...errorResponses() }
    }
  }, async (request) => {
    const to = request.query.to === undefined ? Date.now() : instantMs(request.query.to, 'querystring/to')
    const from = request.query.from === undefined ? to - 7 * DAY_MS : instantMs(request.query.from, 'querystring/from')
    if (from >= to) throw invalid('querystring/to', 'must be after from')
    if (to - from > 366 * DAY_MS) throw invalid('querystring/from', 'the window may span at most 366 days')
    return { from: new Date(from).toISOString(), to: new Date(to).toISOString(), rules: await store.burden(from, to) }
  })

  app.get('/alerts/stream', {
    config: { permission: 'alerts:read' },
    schema: {
      tags: ['alerts'],
      summary: 'Server-sent events: alert events for the patients visible to the caller',
      description: 'text/event-stream. Each event: `id:` (the alert event id) and `data:` JSON ' +
        '{eventId, type, at, alert: {id, patientId, ruleId, severity, status, summary}, tier?, notify?, notified?, reopenedFrom?, assignedTo?}. ' +
        'A `: heartbeat` comment every 15 s. Reconnect with Last-Event-ID to receive what was missed.',
      headers: Type.Object({ 'last-event-id': Type.Optional(Type.String({ pattern: '^[0-9]{1,18}$' })) }),
      response: { ...errorResponses() }
    }
  }, async (request, reply) => { await openStream(request, reply, null) })

  /**
   * Answers with an SSE stream. recipient null: every event of the patients visible to the
   * caller; a user id: the events of that person's alerts (those an escalation tier reached them
   * with), of the patients visible to them now (an on-call shift counts as care team).
   */
  async function openStream (request: FastifyRequest, reply: FastifyReply, recipient: string | null): Promise<void> {
    const principal = request.principal!
    let visible = await patientAccess.visiblePatients(principal)
    const lastEventId = request.headers['last-event-id']
    reply.hijack()
    const res = reply.raw
    const headers = reply.getHeaders() as Record<string, string>
    res.writeHead(200, {
      ...headers,
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      connection: 'keep-alive',
      // Reverse proxies (nginx) must not buffer the stream.
      'x-accel-buffering': 'no'
    })
    res.write('retry: 5000\n\n')
    // At each heartbeat the caller's token is checked again (logout, revocation, expiry end the
    // stream; a reconnect then gets 401) and the visible patients are recomputed (care teams change).
    // The bearer token, or the web app's session cookie.
    const bearer = credentialOf(request)?.secret
    await streamAlerts(request, res, principal, typeof lastEventId === 'string' ? lastEventId : null, recipient,
      () => visible, async () => {
        const current = deps.authenticate === undefined || bearer === undefined ? principal : await deps.authenticate(bearer)
        if (current === null || !current.permissions.has('alerts:read')) {
          request.log.info({ tokenId: principal.tokenId }, 'alert stream ended: the token is no longer valid')
          res.end()
          return
        }
        visible = await patientAccess.visiblePatients(current)
      })
  }

  // Each open stream and what ends it (its heartbeat, its subscription).
  const streams = new Map<ServerResponse, () => void>()
  // Streams never end on their own: close them before the server waits for its connections.
  app.addHook('preClose', async () => {
    for (const [res, cleanup] of streams) {
      res.end()
      cleanup()
    }
  })

  async function streamAlerts (request: FastifyRequest, res: ServerResponse, principal: Principal, lastEventId: string | null, recipient: string | null,
    visible: () => ReadonlySet<string> | null, refreshVisible: () => Promise<void>): Promise<void> {
    const resumeAfter = lastEventId === null ? null : BigInt(lastEventId)
    let replaying = lastEventId !== null
    // Events the backlog wrote: the same events may also come live (buffered while the backlog
    // was read, or late from another process). Live events are not held to id order: ids are
    // taken at insert and committed in any order, within one process and across several, so
    // "not above the last id sent" would drop events committed late.
    const replayed = new Set<string>()
    const buffered: CommittedEvent[] = []

    function send (committed: CommittedEvent): void {
      const { event, alert } = committed
      if (resumeAfter !== null && BigInt(event.id) <= resumeAfter) return
      if (replayed.has(event.id)) return
      if (recipient !== null && !committed.recipients.includes(recipient)) return
      // Comments are clinical notes: not even their type and time without clinical-notes:read (as /alerts/{id}/events).
      if (event.type === 'commented' && !principal.permissions.has('clinical-notes:read')) return
      const seen = visible()
      if (seen !== null && !seen.has(alert.patientId)) return
      if (res.destroyed || res.writableEnded) return
      if (replaying) replayed.add(event.id)
      res.write(`id: ${event.id}\ndata: ${JSON.stringify(notificationPayload(event, alert))}\n\n`)
      notifier.recordDelivery({ eventId: event.id, alertId: alert.id, channel: 'sse', target: principal.tokenId, attempt: 1, status: 'delivered' })
      if (res.writableLength > MAX_UNSENT_BYTES) {
        request.log.warn({ tokenId: principal.tokenId }, 'alert stream not keeping up: closed (client resumes with Last-Event-ID)')
        res.destroy()
      }
    }

    const unsubscribe = notifier.subscribe((committed) => {
      if (replaying) buffered.push(committed)
      else send(committed)
    })
    // The heartbeat follows the refresh: events after it were filtered with the refreshed patients.
    const heartbeat = setInterval(() => {
      refreshVisible().catch((err: Error) => request.log.warn({ err }, 'alert stream could not refresh visible patients')).finally(() => {
        if (!res.writableEnded && !res.destroyed) res.write(': heartbeat\n\n')
      })
    }, deps.alerts.streamHeartbeatMs ?? HEARTBEAT_MS)
    // The connection holds the process open while it lasts; the heartbeat alone never does.
    heartbeat.unref()
    const cleanup = (): void => {
      clearInterval(heartbeat)
      unsubscribe()
      streams.delete(res)
    }
    streams.set(res, cleanup)
    res.on('close', cleanup)
    // The client may have left while the route looked up its patients: 'close' has then been
    // emitted already, and the heartbeat would run on for ever.
    if (res.destroyed || res.socket === null || res.socket.destroyed) {
      cleanup()
      return
    }

    if (lastEventId !== null) {
      try {
        let after = lastEventId
        for (let total = 0; total < BACKLOG_MAX && !res.destroyed;) {
          const rows = await store.eventsAfter(after, BACKLOG_PAGE, recipient ?? undefined)
          for (const row of rows) send(row)
          total += rows.length
          if (rows.length < BACKLOG_PAGE) break
          after = rows[rows.length - 1]!.event.id
        }
      } catch (err) {
        request.log.error({ err }, 'alert stream backlog failed')
        res.destroy()
        return
      }
      replaying = false
      for (const committed of buffered.splice(0)) send(committed)
    }
  }

  // ---- my alerts: what the escalation tiers sent to the caller ---------------------------

  function personOf (request: FastifyRequest): string {
    const userId = request.principal!.userId
    if (userId === null) throw new VigilError('VIGIL_ERR_FORBIDDEN', 'only a person (a login session) has alerts of their own')
    return userId
  }

  app.get('/me/alerts', {
    config: { permission: 'alerts:read' },
    schema: {
      tags: ['alerts'],
      summary: 'My alerts: those an escalation tier notified me of (by role on the care team, or on call), newest first',
      description: 'Default: unresolved alerts only (status=resolved, or all=true, for the others).',
      querystring: MyAlertsQuery,
      response: { 200: page(MyAlertBody), ...errorResponses() }
    }
  }, async (request) => {
    const userId = personOf(request)
    const q = request.query
    const rows = await store.listForRecipient(userId, {
      status: q.status, unresolved: q.status === undefined && q.all !== true, limit: q.limit + 1, beforeSeq: decodeSerialCursor(q.cursor)
    })
    const { items, nextCursor } = pageOf(rows, q.limit, (last) => last.seq)
    // Only patients the caller may see now (removed from the care team, a shift over: gone);
    // filtered after paging, so the cursor stays right and a page may hold fewer items.
    const visible = await patientAccess.visiblePatients(request.principal!)
    return { items: items.filter((a) => visible === null || visible.has(a.patientId)).map(({ seq: _seq, ...alert }) => alert), nextCursor }
  })

  app.get('/me/alerts/stream', {
    config: { permission: 'alerts:read' },
    schema: {
      tags: ['alerts'],
      summary: 'Server-sent events: the events of my alerts only',
      description: 'As /v1/alerts/stream, filtered to alerts an escalation tier notified the caller of: the tier event that ' +
        'reached them (opened or escalated, with `notified` user ids) and every later event of those alerts. MQTT: users/{userId}/alerts.',
      headers: Type.Object({ 'last-event-id': Type.Optional(Type.String({ pattern: '^[0-9]{1,18}$' })) }),
      response: { ...errorResponses() }
    }
  }, async (request, reply) => { await openStream(request, reply, personOf(request)) })

  app.get('/alerts/:id', {
    config: { permission: 'alerts:read' },
    schema: { tags: ['alerts'], summary: 'One alert', params: IdParams, response: { 200: AlertBody, ...errorResponses(404) } }
  }, async (request) => await alertFor(request, request.params.id, 'alerts:read'))

  app.get('/alerts/:id/events', {
    config: { permission: 'alerts:read' },
    schema: {
      tags: ['alerts'],
      summary: "An alert's history, oldest first (comments are clinical notes)",
      description: 'Callers without clinical-notes:read (patients) get the history without comments and resolve reasons.',
      params: IdParams,
      response: { 200: Type.Object({ items: Type.Array(AlertEventBody) }), ...errorResponses(404) }
    }
  }, async (request) => {
    const alert = await alertFor(request, request.params.id, 'alerts:read')
    const events: AlertEvent[] = await store.events(alert.id)
    // Who each tier reached, by name (the screen shows people, not a count of ids): one query.
    const notifiedOf = (e: Pick<AlertEvent, 'body'>): string[] => Array.isArray(e.body.notified) ? (e.body.notified as unknown[]).filter((id): id is string => typeof id === 'string') : []
    const names = await deps.access.people.displayNames([...new Set(events.flatMap(notifiedOf))])
    const items = events.map(({ patientId: _p, ...e }) => Array.isArray(e.body.notified)
      ? { ...e, notifiedPeople: notifiedOf(e).map((userId) => ({ userId, displayName: names.get(userId) ?? null })) }
      : e)
    // Issue 13 §4: comments and resolve reasons are clinicians' notes, not shown to patients.
    if (request.principal!.permissions.has('clinical-notes:read')) return { items }
    return {
      items: items.filter((e) => e.type !== 'commented').map((e) => {
        if (e.type !== 'resolved' || !('reason' in e.body)) return e
        const { reason: _r, ...body } = e.body as Record<string, unknown>
        return { ...e, body }
      })
    }
  })

  app.post('/alerts/:id/acknowledge', {
    config: { permission: 'alerts:ack' },
    schema: {
      tags: ['alerts'],
      summary: 'Acknowledge an open alert (stops its escalation)',
      params: IdParams,
      response: { 200: AlertBody, ...errorResponses(404, 409) }
    }
  }, async (request) => {
    await alertFor(request, request.params.id, 'alerts:ack')
    return await store.acknowledge(request.params.id, actorOf(request.principal!))
  })

  app.get('/alerts/:id/assignees', {
    config: { permission: 'alerts:write' },
    schema: {
      tags: ['alerts'],
      summary: 'Who an alert can be assigned to: the clinicians who reach its patient now, by name',
      description: 'Care team, on-call shift or break-glass; the same test POST /v1/alerts/{id}/assign applies.',
      params: IdParams,
      response: { 200: Type.Object({ items: Type.Array(Person) }), ...errorResponses(404) }
    }
  }, async (request) => {
    const alert = await alertFor(request, request.params.id, 'alerts:write')
    const candidates = await deps.access.people.cliniciansOf(alert.patientId, deps.access.now())
    const eligible: string[] = []
    for (const userId of candidates) {
      const person = await deps.access.principalOfUser(userId)
      if (person !== null && person.patientScopes.has('care-team') && person.permissions.has('alerts:read')) eligible.push(userId)
    }
    const names = await deps.access.people.displayNames(eligible)
    const items = eligible.map((userId) => ({ userId, displayName: names.get(userId) ?? null }))
    return { items: items.sort((a, b) => (a.displayName ?? '').localeCompare(b.displayName ?? '')) }
  })

  app.post('/alerts/:id/assign', {
    config: { permission: 'alerts:write' },
    schema: {
      tags: ['alerts'],
      summary: 'Assign an unresolved alert to a clinician who reaches its patient (422 VIGIL_ERR_INVALID_ASSIGNEE otherwise)',
      params: IdParams,
      body: AssignBody,
      response: { 200: AlertBody, ...errorResponses(404, 409, 413, 422) }
    }
  }, async (request) => {
    const alert = await alertFor(request, request.params.id, 'alerts:write')
    // Only to an active clinician who reaches the alert's patient (issue 11): an alert assigned
    // to someone who cannot open the patient, or to a device integrator, is an alert no one answers.
    const assignee = await deps.access.principalOfUser(request.body.userId)
    if (assignee === null) throw new VigilError('VIGIL_ERR_UNKNOWN_USER', 'no active user with this id')
    // The care-team scope is the clinician category's (access/access-policy.ts); the assignee's
    // reach is decided on the people data itself (care team, break-glass), as at their sign-in.
    if (!assignee.patientScopes.has('care-team') || !assignee.permissions.has('alerts:read') || !await deps.access.patientAccess.canSee(assignee, alert.patientId)) {
      throw new VigilError('VIGIL_ERR_INVALID_ASSIGNEE', 'alerts are assigned to clinicians who reach the patient (care team or break-glass)')
    }
    return await store.assign(request.params.id, request.body.userId, actorOf(request.principal!))
  })

  app.post('/alerts/:id/comments', {
    config: { permission: 'alerts:comment' },
    schema: {
      tags: ['alerts'],
      summary: 'Comment on an alert (a clinical note: never logged, never sent to webhooks or MQTT)',
      params: IdParams,
      body: CommentBody,
      response: { 201: AlertEventBody, ...errorResponses(404, 413) }
    }
  }, async (request, reply) => {
    await alertFor(request, request.params.id, 'alerts:comment')
    const { patientId: _p, ...event } = await store.comment(request.params.id, request.body.text, actorOf(request.principal!))
    reply.code(201)
    return event
  })

  app.post('/alerts/:id/resolve', {
    config: { permission: 'alerts:write' },
    schema: {
      tags: ['alerts'],
      summary: 'Resolve an alert by hand',
      params: IdParams,
      body: Type.Optional(ResolveBody),
      response: { 200: AlertBody, ...errorResponses(404, 409, 413) }
    }
  }, async (request) => {
    await alertFor(request, request.params.id, 'alerts:write')
    return await store.resolve(request.params.id, request.body?.reason ?? null, actorOf(request.principal!))
  })
}
