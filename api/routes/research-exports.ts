import { createReadStream } from 'node:fs'
import { Type } from '@fastify/type-provider-typebox'
import { auditActor } from '../../access/access-policy.ts'
import { VigilError } from '../../errors/catalogue.ts'
import { createJobQueue, type Job } from '../../jobs/job-queue.ts'
import { DEIDENTIFIED_EXPORT_JOB, exportView, type Cohort, type ResearchExport, type ResearchExports } from '../../research/exports.ts'
import { inTransaction } from '../../store/database.ts'
import { IdParams, Uuid, errorResponses } from '../schemas/common.ts'
import type { ApiInstance, RouteDeps } from './route-deps.ts'

const CohortBody = Type.Object({
  metrics: Type.Array(Type.String({ minLength: 1, maxLength: 64 }), { minItems: 1, maxItems: 50, description: 'vitals-catalogue metric names' }),
  from: Type.String({ format: 'date-time', description: 'inclusive' }),
  to: Type.String({ format: 'date-time', description: 'exclusive' }),
  alertRule: Type.Optional(Type.String({ minLength: 1, maxLength: 100, description: 'only patients who had an alert of this rule opened in the period' })),
  news2Band: Type.Optional(Type.Union([Type.Literal('medium'), Type.Literal('high')], { description: 'only patients whose NEWS2 total reached 5 (medium) or 7 (high) in the period' }))
}, { additionalProperties: false })

const ExportView = Type.Object({
  id: Uuid,
  state: Type.String(),
  progress: Type.Number(),
  error: Type.Union([Type.String(), Type.Null()]),
  cohort: Type.Any(),
  subjects: Type.Union([Type.Integer(), Type.Null()]),
  files: Type.Array(Type.Object({ name: Type.String(), bytes: Type.Integer(), sha256: Type.String(), url: Type.String() })),
  expiresAt: Type.Union([Type.String(), Type.Null()]),
  deleted: Type.Boolean(),
  createdAt: Type.String(),
  finishedAt: Type.Union([Type.String(), Type.Null()])
})

const FileParams = Type.Object({ id: Uuid, name: Type.String({ pattern: '^[a-z0-9-]+\\.(ndjson|json)$' }) }, { additionalProperties: false })

/**
 * De-identified datasets for ML scientists (export:deidentified; docs/research-export.md). An
 * export is seen, downloaded and cancelled only by whoever started it: anyone else gets 404.
 */
export function researchExportRoutes (app: ApiInstance, deps: RouteDeps & { researchExports: ResearchExports }): void {
  const jobs = deps.jobs ?? createJobQueue({ pool: deps.db.pool })
  const { researchExports: exports, access } = deps
  const notFound = (): VigilError => new VigilError('VIGIL_ERR_NOT_FOUND', 'no export with this id')
  type Request = Parameters<typeof auditActor>[0]
  /** The user across session refreshes; a token by its id. */
  const ownerOf = (request: Request): string => {
    const p = request.principal!
    return p.userId === null ? `token:${p.tokenId}` : `user:${p.userId}`
  }

  async function ownExport (request: Request, id: string): Promise<{ job: Job, exp: ResearchExport }> {
    // The job first: its completion commits the export's file list in the same transaction, so
    // an export read after a succeeded job has its files. Read the other way round, a completion
    // committed between the two reads answered "succeeded" with no files (seen once in CI).
    const job = await jobs.get(id)
    if (job === null) throw notFound()
    const exp = await exports.get(id)
    if (exp === null || exp.owner !== ownerOf(request)) throw notFound()
    return { job, exp }
  }

  app.post('/exports/deidentified', {
    config: { permission: 'export:deidentified' },
    schema: {
      tags: ['research'],
      summary: 'Start a de-identified export of a cohort',
      description: 'Queues a job; 202 with Location: the status URL. The files (NDJSON + manifest.json) are served only to the caller and deleted when they expire.',
      body: CohortBody,
      response: { 202: ExportView, ...errorResponses(400) }
    }
  }, async (request, reply) => {
    const cohort = request.body as Cohort
    const problem = exports.validate(cohort)
    if (problem !== null) throw new VigilError('VIGIL_ERR_VALIDATION', problem)
    const principal = request.principal!
    const job = await inTransaction(deps.db.pool, async (client) => {
      const created = await jobs.enqueue({ type: DEIDENTIFIED_EXPORT_JOB, payload: {}, maxAttempts: 1, createdBy: principal.tokenId }, client)
      await exports.register(client, created.id, ownerOf(request), principal.userId, cohort)
      return created
    })
    jobs.announce(job)
    await access.audit.record({
      ...auditActor(request), patientId: null, action: 'export:deidentified', fields: [], outcome: 'allowed',
      details: { jobId: job.id, stage: 'requested', cohort: cohort as unknown as Record<string, unknown> }
    })
    const exp = (await exports.get(job.id))!
    void reply.code(202).header('location', `/v1/exports/deidentified/${job.id}`)
    return exportView(job, exp)
  })

  app.get('/exports/deidentified/:id', {
    config: { permission: 'export:deidentified' },
    schema: {
      tags: ['research'],
      summary: 'An export\'s state, progress and files',
      params: IdParams,
      response: { 200: ExportView, ...errorResponses(404) }
    }
  }, async (request) => {
    const { job, exp } = await ownExport(request, request.params.id)
    return exportView(job, exp)
  })

  app.get('/exports/deidentified/:id/files/:name', {
    config: { permission: 'export:deidentified' },
    schema: {
      tags: ['research'],
      summary: 'One file of a finished export (NDJSON or manifest.json)',
      params: FileParams,
      response: { ...errorResponses(404) }
    }
  }, async (request, reply) => {
    const { job, exp } = await ownExport(request, request.params.id)
    const file = job.state === 'succeeded' ? exports.filePath(exp, request.params.name) : null
    if (file === null) throw new VigilError('VIGIL_ERR_NOT_FOUND', 'no such file (not finished, expired or deleted)')
    await access.audit.record({
      ...auditActor(request), patientId: null, action: 'export:deidentified', fields: [], outcome: 'allowed',
      details: { jobId: job.id, stage: 'downloaded', file: request.params.name }
    })
    void reply.header('content-type', request.params.name.endsWith('.ndjson') ? 'application/x-ndjson' : 'application/json')
      .header('cache-control', 'no-store')
    return await reply.send(createReadStream(file))
  })

  app.delete('/exports/deidentified/:id', {
    config: { permission: 'export:deidentified' },
    schema: {
      tags: ['research'],
      summary: 'Cancel an export, or delete its files now',
      params: IdParams,
      response: { 200: ExportView, ...errorResponses(404) }
    }
  }, async (request) => {
    const { job, exp } = await ownExport(request, request.params.id)
    let now = job
    if (job.state === 'queued' || job.state === 'running') {
      now = (await jobs.cancel(job.id, async (client) => { await client.query('UPDATE research_exports SET files_deleted_at = now() WHERE job_id = $1', [job.id]) })) ?? job
      // A running export stops within a heartbeat; its files are deleted when it does (onFinal).
    } else {
      await exports.deleteFiles(job.id)
    }
    return exportView(now, (await exports.get(job.id)) ?? exp)
  })
}
