// Schemas of the jobs and voice-notes routes (issue 5), beside api/schemas/common.ts.
import { Type } from '@fastify/type-provider-typebox'
import { jobStates, type JobState } from '../../jobs/job-queue.ts'
import { VigilError } from '../../errors/catalogue.ts'
import { PageLimit, Uuid } from './common.ts'

const DateTime = Type.String({ format: 'date-time' })
const NullableDateTime = Type.Union([DateTime, Type.Null()])
// A JSON Schema enum rather than a union of literals: one clear validation message
// ("must be equal to one of the allowed values") instead of one per state.
export const JobStateSchema = Type.Unsafe<JobState>({ type: 'string', enum: [...jobStates] })

export const JobView = Type.Object({
  id: Uuid,
  type: Type.String(),
  state: JobStateSchema,
  patientId: Type.Union([Uuid, Type.Null()]),
  progress: Type.Number({ minimum: 0, maximum: 1 }),
  attempts: Type.Integer(),
  maxAttempts: Type.Integer(),
  cancelRequested: Type.Boolean({ description: 'a cancel was asked while the job ran; it stops shortly' }),
  result: Type.Unknown({ description: 'set when succeeded: ids and counts, never PHI (a transcript is read from its voice note)' }),
  error: Type.Union([Type.String(), Type.Null()], { description: 'the last attempt\'s failure' }),
  runAfter: DateTime,
  createdAt: DateTime,
  startedAt: NullableDateTime,
  finishedAt: NullableDateTime,
  updatedAt: DateTime
})

export const JobListQuery = Type.Object({
  type: Type.Optional(Type.String({ minLength: 1, maxLength: 64, pattern: '^[a-z0-9_-]+$' })),
  state: Type.Optional(JobStateSchema),
  limit: PageLimit,
  cursor: Type.Optional(Type.String({ maxLength: 128, description: 'nextCursor of the previous page (opaque)' }))
}, { additionalProperties: false })

export const Word = Type.Object({
  word: Type.String(),
  startMs: Type.Integer(),
  endMs: Type.Integer(),
  confidence: Type.Optional(Type.Number({ minimum: 0, maximum: 1 })),
  lowConfidence: Type.Optional(Type.Boolean({ description: 'confidence below 0.5: check this word against the audio' }))
})

export const VoiceNoteView = Type.Object({
  id: Uuid,
  patientId: Uuid,
  jobId: Uuid,
  state: JobStateSchema,
  durationMs: Type.Integer(),
  transcript: Type.Union([Type.String(), Type.Null()], { description: 'null until transcribed' }),
  words: Type.Union([Type.Array(Word), Type.Null()], { description: 'word timings, null until transcribed' }),
  confidence: Type.Union([Type.Number(), Type.Null()], { description: '0–1, when the engine gives one' }),
  engine: Type.Union([Type.String(), Type.Null()]),
  authorTokenId: Type.String(),
  authorUserId: Type.Union([Uuid, Type.Null()]),
  createdAt: DateTime,
  transcribedAt: NullableDateTime,
  releasedAt: Type.Union([DateTime, Type.Null()], { description: 'when a clinician released the note to the patient; a patient sees her own notes and released ones only' }),
  releasedBy: Type.Union([Type.String(), Type.Null()], { description: 'the releasing user (or token:<id>)' })
})

export const VoiceNoteAccepted = Type.Object({
  jobId: Uuid,
  voiceNoteId: Uuid,
  statusUrl: Type.String({ description: 'GET it for the job\'s state and progress' }),
  durationMs: Type.Integer()
})

export const VoiceNoteListQuery = Type.Object({
  limit: PageLimit,
  cursor: Type.Optional(Type.String({ maxLength: 128, description: 'nextCursor of the previous page (opaque)' }))
}, { additionalProperties: false })

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

/** Newest-first lists page on (createdAt, id). */
export function encodeTimeCursor (row: { createdAt: string, id: string }): string {
  return Buffer.from(JSON.stringify([row.createdAt, row.id])).toString('base64url')
}

export function decodeTimeCursor (cursor: string | undefined): { createdAt: string, id: string } | undefined {
  if (cursor === undefined) return undefined
  const bad = new VigilError('VIGIL_ERR_BAD_CURSOR', 'cursor is not one this API returned; start again without it')
  if (!/^[A-Za-z0-9_-]{1,128}$/.test(cursor)) throw bad
  let value: unknown
  try {
    value = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'))
  } catch {
    throw bad
  }
  if (!Array.isArray(value) || value.length !== 2) throw bad
  const [createdAt, id] = value as unknown[]
  if (typeof createdAt !== 'string' || Number.isNaN(Date.parse(createdAt)) || typeof id !== 'string' || !UUID.test(id)) throw bad
  return { createdAt, id }
}
