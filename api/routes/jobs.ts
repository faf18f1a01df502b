import { createJobQueue, type Job } from '../../jobs/job-queue.ts'
import type { ApiInstance, RouteDeps } from './route-deps.ts'
import { VigilError } from '../../errors/catalogue.ts'
import { JobListQuery, JobView, decodeTimeCursor, encodeTimeCursor } from '../schemas/jobs.ts'
import { IdParams, errorResponses, page, pageOf } from '../schemas/common.ts'
import { TRANSCRIPTION_JOB } from '../../jobs/voice-notes.ts'
import { releasedView } from './voice-notes.ts'

/** The API's view of a job: no payload, lock or completion counter. */
function view (job: Job) {
  return {
    id: job.id, type: job.type, state: job.state, patientId: job.patientId, progress: job.progress,
    attempts: job.attempts, maxAttempts: job.maxAttempts, cancelRequested: job.cancelRequested, result: job.result,
    error: job.error, runAfter: job.runAfter, createdAt: job.createdAt, startedAt: job.startedAt,
    finishedAt: job.finishedAt, updatedAt: job.updatedAt
  }
}

/**
 * Background jobs: status, list, cancel. A job that belongs to a patient is visible only to
 * whoever may see that patient (the same 404 as for a job that does not exist).
 */
export function jobRoutes (app: ApiInstance, deps: RouteDeps): void {
  const jobs = deps.jobs ?? createJobQueue({ pool: deps.db.pool })
  const { patientAccess } = deps
  const notFound = (): VigilError => new VigilError('VIGIL_ERR_NOT_FOUND', 'no job with this id')

  type Request = Parameters<RouteDeps['patientAccess']['require']>[0]

  /**
   * A reader without clinical-notes:read (a patient) sees a transcription job only when she
   * sees its voice note: her own message, or a dictation a clinician released (issue 13 §4).
   */
  async function hiddenNote (request: Request, job: Job): Promise<boolean> {
    const view = releasedView(request)
    if (view === undefined || job.type !== TRANSCRIPTION_JOB) return false
    const voiceNoteId = job.payload.voiceNoteId
    if (deps.voiceNotes === undefined || typeof voiceNoteId !== 'string') return true
    return await deps.voiceNotes.get(voiceNoteId, view) === null
  }

  async function visibleJob (request: Request, id: string, action: string): Promise<Job> {
    const job = await jobs.get(id)
    if (job === null) throw notFound()
    if (job.patientId !== null) {
      try {
        await patientAccess.require(request, job.patientId, { action })
      } catch (err) {
        if (err instanceof VigilError && err.code === 'VIGIL_ERR_UNKNOWN_PATIENT') throw notFound()
        throw err
      }
    }
    if (await hiddenNote(request, job)) throw notFound()
    return job
  }

  app.get('/jobs/:id', {
    config: { permission: 'jobs:read' },
    schema: {
      tags: ['jobs'],
      summary: 'A job\'s state, progress, result and error',
      params: IdParams,
      response: { 200: JobView, ...errorResponses(404) }
    }
  }, async (request) => view(await visibleJob(request, request.params.id, 'jobs:read')))

  app.get('/jobs', {
    config: { permission: 'jobs:read' },
    schema: {
      tags: ['jobs'],
      summary: 'Jobs, newest first, optionally of one type and state',
      querystring: JobListQuery,
      response: { 200: page(JobView), ...errorResponses() }
    }
  }, async (request) => {
    const { type, state, limit, cursor } = request.query
    const before = decodeTimeCursor(cursor)
    const visible = await patientAccess.visiblePatients(request.principal!)
    const rows = await jobs.list({ type, state, limit: limit + 1, before, patientIds: visible === null ? null : [...visible] })
    const { items, nextCursor } = pageOf(rows, limit, encodeTimeCursor)
    // A page may come back shorter than `limit` for a patient (unreleased dictations left out); nextCursor still pages on.
    const shown: Job[] = []
    for (const job of items) if (!await hiddenNote(request, job)) shown.push(job)
    return { items: shown.map(view), nextCursor }
  })

  app.delete('/jobs/:id', {
    config: { permission: 'jobs:write' },
    schema: {
      tags: ['jobs'],
      summary: 'Cancel a job',
      description: 'A queued job is cancelled at once; a running one gets cancelRequested and stops within about a second ' +
        '(its recognizer is killed). 409 VIGIL_ERR_CONFLICT when the job has already ended.',
      params: IdParams,
      response: { 200: JobView, ...errorResponses(404, 409) }
    }
  }, async (request) => {
    const job = await visibleJob(request, request.params.id, 'jobs:write')
    if (job.state !== 'queued' && job.state !== 'running') throw new VigilError('VIGIL_ERR_CONFLICT', `the job has already ended (${job.state})`)
    // A cancelled job's input (a voice note's audio) is deleted with it.
    const cancelled = await jobs.cancel(job.id, async (client) => {
      await client.query('DELETE FROM voice_note_audio a USING voice_notes v WHERE a.voice_note_id = v.id AND v.job_id = $1', [job.id])
    })
    if (cancelled === null) throw notFound()
    request.log.info({ jobId: job.id, state: cancelled.state }, 'job cancel requested')
    return view(cancelled)
  })
}
