import type { FastifyReply, FastifyRequest } from 'fastify'
import { auditActor } from '../../access/access-policy.ts'
import type { Permission } from '../../access/auth.ts'
import { VigilError } from '../../errors/catalogue.ts'
import { BULK_EXPORT_JOB, bulkTypes, type BulkExport, type BulkExports, type BulkRequest, type BulkType } from '../../fhir/bulk/bulk-exports.ts'
import { invalidParameter, refuseUnknown, searchParameters, single } from '../../fhir/search-params.ts'
import { createJobQueue, type Job } from '../../jobs/job-queue.ts'
import { inTransaction } from '../../store/database.ts'
import { fhirBase, keepContentType } from './fhir-context.ts'
import type { FhirRouteDeps } from './fhir-context.ts'
import type { ApiInstance } from './route-deps.ts'

// FHIR Bulk Data Access v2 (https://hl7.org/fhir/uv/bulkdata/export.html): kick-off, status,
// manifest, file download and delete. The URLs carry only the export's random id, a type name
// and the Group id (a clinician's user id): never a patient id or anything a patient told us.

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i
// Bulk Data v2 §kick-off: _outputFormat "application/fhir+ndjson"; servers SHALL accept the
// abbreviations "application/ndjson" and "ndjson" as the same format.
const NDJSON_FORMATS = ['application/fhir+ndjson', 'application/ndjson', 'ndjson']
// FHIR instant (R4 §2.24.0.1): a time zone is required.
const INSTANT = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/
/** What a type needs besides patients:read (the route's permission). */
const typePermission: Record<BulkType, Permission> = { Patient: 'patients:read', Device: 'devices:read', Observation: 'readings:read', Flag: 'alerts:read' }
const RETRY_AFTER_SECONDS = 2

export function fhirBulkExportRoutes (app: ApiInstance, deps: FhirRouteDeps & { bulkExports: BulkExports }): void {
  const jobs = deps.jobs ?? createJobQueue({ pool: deps.db.pool })
  const { bulkExports: exports, access, patientAccess } = deps
  const pool = deps.db.pool
  const notFound = (): VigilError => new VigilError('VIGIL_ERR_NOT_FOUND', 'no export with this id')
  /** The user across session refreshes; a token by its id. */
  const ownerOf = (request: FastifyRequest): string => {
    const p = request.principal!
    return p.userId === null ? `token:${p.tokenId}` : `user:${p.userId}`
  }

  /** The caller's own export and its job; anyone else's, a deleted or a missing one: 404. */
  async function ownExport (request: FastifyRequest): Promise<{ job: Job, exp: BulkExport }> {
    const id = (request.params as { id: string }).id
    if (!UUID.test(id)) throw notFound()
    // The job first: its completion and the export's output commit together, so an export read
    // after a succeeded job always has its output (read the other way round, it can lag).
    const job = await jobs.get(id)
    if (job === null) throw notFound()
    const exp = await exports.get(id)
    if (exp === null || exp.owner !== ownerOf(request) || exp.deletedAt !== null) throw notFound()
    return { job, exp }
  }

  /** Which types to export: `_type` (checked against the caller's permissions), else every type the caller may read. */
  function typesOf (request: FastifyRequest, value: string | undefined): BulkType[] {
    const allowed = (t: BulkType) => request.principal!.permissions.has(typePermission[t])
    if (value === undefined) return bulkTypes.filter(allowed)
    const asked = [...new Set(value.split(',').map((v) => v.trim()))]
    const types: BulkType[] = []
    for (const name of asked) {
      if (!(bulkTypes as readonly string[]).includes(name)) throw invalidParameter('_type', `lists a type this server does not export (supported: ${bulkTypes.join(', ')})`)
      if (!allowed(name as BulkType)) throw new VigilError('VIGIL_ERR_FORBIDDEN', `the caller may not read ${name} resources`)
      types.push(name as BulkType)
    }
    return bulkTypes.filter((t) => types.includes(t))
  }

  /** Patients of a Group: the clinician's care team now (assignments and active on-call shifts). */
  async function groupMembers (clinicianId: string): Promise<string[] | null> {
    const { rows: [user] } = await pool.query('SELECT 1 FROM users WHERE id = $1', [clinicianId])
    if (user === undefined) return null
    const { rows } = await pool.query(
      `SELECT patient_id FROM care_team WHERE clinician_id = $1 AND valid_from <= $2 AND (valid_to IS NULL OR valid_to > $2)
       UNION SELECT patient_id FROM on_call WHERE user_id = $1 AND valid_from <= $2 AND valid_to > $2 ORDER BY 1`, [clinicianId, new Date()])
    return rows.map((r) => r.patient_id as string)
  }

  async function kickOff (request: FastifyRequest, reply: FastifyReply, level: BulkRequest['level']): Promise<FastifyReply> {
    const principal = request.principal!
    // Bulk Data v2: Prefer: respond-async is required of the client.
    const prefer = String(request.headers.prefer ?? '')
    if (!/(^|[,;\s])respond-async($|[,;\s])/i.test(prefer)) throw new VigilError('VIGIL_ERR_VALIDATION', 'the Prefer header must include respond-async (Bulk Data kick-off)')
    const params = searchParameters(request.query)
    refuseUnknown(params, ['_type', '_since', '_outputFormat'])
    const format = single(params, '_outputFormat')
    if (format !== undefined && !NDJSON_FORMATS.includes(format)) throw invalidParameter('_outputFormat', 'must be application/fhir+ndjson (the only format served)')
    const since = single(params, '_since')
    if (since !== undefined && (!INSTANT.test(since) || Number.isNaN(Date.parse(since)))) throw invalidParameter('_since', 'must be a FHIR instant with a time zone, e.g. 2026-01-01T00:00:00Z')
    const types = typesOf(request, single(params, '_type'))
    if (types.length === 0) throw new VigilError('VIGIL_ERR_FORBIDDEN', 'the caller may read none of the exported types')

    // Reach: the same patients the FHIR search routes would show this caller. A role that reaches
    // no patient (ML scientist, developer, integrator) gets no identified data here at all.
    if (principal.patientScopes.size === 0) throw new VigilError('VIGIL_ERR_FORBIDDEN', 'this role reaches no patient: identified exports are for care teams, patients (their own data) and admins')
    const visible = await patientAccess.visiblePatients(principal)
    let group: string | null = null
    let patientIds: string[] | null
    if (level === 'group') {
      group = (request.params as { id: string }).id.toLowerCase()
      if (!UUID.test(group)) throw new VigilError('VIGIL_ERR_NOT_FOUND', 'no Group with this id')
      // A Group is a clinician's care team: that clinician's own, or any for a caller who reaches every patient.
      const members = visible === null || principal.userId === group ? await groupMembers(group) : null
      if (members === null) throw new VigilError('VIGIL_ERR_NOT_FOUND', 'no Group with this id')
      patientIds = visible === null ? members : members.filter((id) => visible.has(id))
    } else {
      patientIds = visible === null ? null : [...visible].sort()
    }

    // Each patient reached through a relationship gets its own audit row (break-glass reasons
    // included); a caller who reaches every patient gets the summary row below.
    if (patientIds !== null) {
      for (const id of patientIds) await patientAccess.require(request, id, { action: 'export:fhir-bulk', details: { level, types } })
    }
    const phi = principal.permissions.has('phi:read') && deps.patientRecords !== undefined
    const path = request.url.startsWith('/fhir/R4') ? request.url.slice('/fhir/R4'.length) : request.url
    const bulkRequest: BulkRequest = { level, group, types, since: since === undefined ? null : new Date(since).toISOString(), phi, request: path }
    const job = await inTransaction(pool, async (client) => {
      const created = await jobs.enqueue({ type: BULK_EXPORT_JOB, payload: {}, maxAttempts: 1, createdBy: principal.tokenId }, client)
      await exports.register(client, created.id, ownerOf(request), principal.userId ?? principal.tokenId, bulkRequest, patientIds)
      return created
    })
    // Committed: wake the runner before anything else can throw (an idle embedded runner sleeps up to a minute).
    jobs.announce(job)
    await access.audit.record({
      ...auditActor(request), patientId: null, action: 'export:fhir-bulk', fields: phi ? ['displayName', 'record'] : ['displayName'], outcome: 'allowed',
      details: { jobId: job.id, stage: 'requested', level, group, types, since: bulkRequest.since, patients: patientIds === null ? 'all' : patientIds.length }
    })
    return await reply.code(202).header('content-location', `${fhirBase(request)}/bulk-status/${job.id}`).send()
  }

  const kickOffSchema = (summary: string) => ({ hide: true, summary })
  // The kick-off is a GET (FHIR Bulk Data) that commits a job: synced like a write on the embedded default.
  app.get('/$export', { config: { permission: 'patients:read', durable: true }, schema: kickOffSchema('Bulk export of everything the caller reaches') },
    async (request, reply) => await kickOff(request, reply, 'system'))
  app.get('/Patient/$export', { config: { permission: 'patients:read', durable: true }, schema: kickOffSchema('Bulk export of the patients the caller reaches') },
    async (request, reply) => await kickOff(request, reply, 'patient'))
  app.get('/Group/:id/$export', { config: { permission: 'patients:read', durable: true }, schema: kickOffSchema('Bulk export of a care team (Group = a clinician\'s care team)') },
    async (request, reply) => await kickOff(request, reply, 'group'))

  app.get('/bulk-status/:id', { config: { permission: 'patients:read' }, schema: { hide: true, summary: 'A bulk export\'s progress, then its manifest' } }, async (request, reply) => {
    const { job, exp } = await ownExport(request)
    if (job.state === 'queued' || job.state === 'running') {
      return await reply.code(202).header('x-progress', exp.progress ?? 'queued').header('retry-after', String(RETRY_AFTER_SECONDS)).send()
    }
    if (job.state === 'failed') throw new VigilError('VIGIL_ERR_EXPORT_FAILED', 'the export failed; start a new one')
    if (job.state === 'cancelled' || !exports.available(exp)) throw new VigilError('VIGIL_ERR_NOT_FOUND', 'no export with this id (cancelled, expired or deleted)')
    const base = fhirBase(request)
    const url = (file: string) => `${base}/bulk-files/${exp.jobId}/${file}`
    const output = exp.output!
    keepContentType(reply)
    void reply.type('application/json').header('expires', new Date(exp.expiresAt!).toUTCString()).header('cache-control', 'no-store')
    return {
      transactionTime: exp.transactionTime,
      request: `${base}${exp.request.request}`,
      requiresAccessToken: true,
      output: output.filter((o) => o.type !== 'OperationOutcome').map((o) => ({ type: o.type, url: url(o.file), count: o.count })),
      error: output.filter((o) => o.type === 'OperationOutcome').map((o) => ({ type: o.type, url: url(o.file), count: o.count }))
    }
  })

  app.get('/bulk-files/:id/:file', { config: { permission: 'patients:read' }, schema: { hide: true, summary: 'One NDJSON file of a finished bulk export' } }, async (request, reply) => {
    const { job, exp } = await ownExport(request)
    const file = (request.params as { file: string }).file
    const stream = job.state === 'succeeded' ? await exports.openFile(exp, file) : null
    if (stream === null) throw new VigilError('VIGIL_ERR_NOT_FOUND', 'no such file (not finished, expired or deleted)')
    await access.audit.record({
      ...auditActor(request), patientId: null, action: 'export:fhir-bulk', fields: [], outcome: 'allowed',
      details: { jobId: exp.jobId, stage: 'downloaded', file }
    })
    keepContentType(reply)
    void reply.type('application/fhir+ndjson').header('cache-control', 'no-store')
    return await reply.send(stream)
  })

  app.delete('/bulk-status/:id', { config: { permission: 'patients:read' }, schema: { hide: true, summary: 'Cancel a bulk export, or delete its files' } }, async (request, reply) => {
    const { job } = await ownExport(request)
    // A running export stops at its next chunk; its files are deleted when it does (onFinal).
    // One that ended meanwhile (cancel returns it unchanged) has its files deleted now.
    const now = job.state === 'queued' || job.state === 'running' ? await jobs.cancel(job.id) : job
    const finished = now === null || now.state !== 'running'
    await exports.markDeleted(job.id, finished)
    await access.audit.record({ ...auditActor(request), patientId: null, action: 'export:fhir-bulk', fields: [], outcome: 'allowed', details: { jobId: job.id, stage: 'deleted' } })
    return await reply.code(202).send()
  })
}
