import type { FastifyRequest } from 'fastify'
import { readWavInfo, WavError } from '../../jobs/transcription/wav.ts'
import type { ReleasedView, VoiceNoteStore } from '../../jobs/voice-notes.ts'
import type { ApiInstance, RouteDeps } from './route-deps.ts'
import { VigilError } from '../../errors/catalogue.ts'
import { VoiceNoteAccepted, VoiceNoteListQuery, VoiceNoteView, decodeTimeCursor, encodeTimeCursor } from '../schemas/jobs.ts'
import { IdParams, Uuid, errorResponses, page, pageOf } from '../schemas/common.ts'
import { Type } from '@fastify/type-provider-typebox'
import { defaults } from '../../config/schema/defaults.ts'

/** Upload limits; the defaults are VOICE_NOTE_MAX_BYTES's and VOICE_NOTE_MAX_SECONDS's. */
export const voiceNoteLimitDefaults = { maxBytes: defaults.VOICE_NOTE_MAX_BYTES, maxSeconds: defaults.VOICE_NOTE_MAX_SECONDS }

// RFC 2361 names audio/wav and audio/wave; audio/x-wav and audio/vnd.wave are common in the wild.
export const WAV_MEDIA_TYPES = ['audio/wav', 'audio/x-wav', 'audio/wave', 'audio/vnd.wave']
/**
 * What a reader sees (issue 13 §4): with clinical-notes:read every note; without it (a patient)
 * her own voice messages and the dictations a clinician released.
 */
export function releasedView (request: FastifyRequest): ReleasedView | undefined {
  const p = request.principal!
  return p.permissions.has('clinical-notes:read') ? undefined : { authorUserId: p.userId }
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

/**
 * POST /patients/:id/voice-notes takes a WAV body (up to VOICE_NOTE_MAX_BYTES, far above the
 * API's 64 KiB JSON limit), answers 202 with the transcription job at once; the runner does the
 * rest. GET lists a patient's notes with their transcripts (PHI).
 */
export function voiceNoteRoutes (app: ApiInstance, deps: RouteDeps & { voiceNotes: VoiceNoteStore }): void {
  const { voiceNotes } = deps
  const limits = { ...voiceNoteLimitDefaults, ...deps.voiceNoteLimits }
  const { patientAccess } = deps
  const tooLarge = (): VigilError => new VigilError('VIGIL_ERR_PAYLOAD_TOO_LARGE', `a voice note is at most ${limits.maxBytes} bytes`)

  // An encapsulated context: only these routes read audio bodies, and nothing else here parses JSON.
  void app.register(async (plain) => {
    const scope = plain as unknown as ApiInstance
    scope.removeAllContentTypeParsers()
    scope.addContentTypeParser(WAV_MEDIA_TYPES, async (request: FastifyRequest, payload: NodeJS.ReadableStream) => {
      // Refuse a declared oversize before reading a byte of it.
      const declared = Number(request.headers['content-length'] ?? 0)
      if (declared > limits.maxBytes) throw tooLarge()
      const chunks: Buffer[] = []
      let bytes = 0
      for await (const chunk of payload) {
        bytes += (chunk as Buffer).length
        if (bytes > limits.maxBytes) throw tooLarge()
        chunks.push(chunk as Buffer)
      }
      return Buffer.concat(chunks)
    })
    scope.addContentTypeParser('*', async () => {
      throw new VigilError('VIGIL_ERR_UNSUPPORTED_MEDIA_TYPE', `send the audio as ${WAV_MEDIA_TYPES.join(', ')} (WAV)`)
    })

    scope.post('/patients/:id/voice-notes', {
      config: { permission: 'voice-notes:write' },
      // Before the body is read: a caller who may not write to this patient uploads nothing.
      preParsing: async (request) => {
        const { id } = request.params as { id: string }
        if (!UUID.test(id)) throw new VigilError('VIGIL_ERR_VALIDATION', 'params/id must match format "uuid"', [{ path: 'params/id', message: 'must match format "uuid"' }])
        await patientAccess.require(request, id, { action: 'voice-notes:write', fields: ['voiceNote'] })
      },
      schema: {
        tags: ['voice notes'],
        summary: 'Upload a voice note (WAV) for transcription',
        description: `Body: a WAV file (Content-Type ${WAV_MEDIA_TYPES.join(', ')}): PCM 8/16/24/32-bit or float, 1–8 channels, ` +
          `8–192 kHz, at most ${limits.maxBytes} bytes and ${limits.maxSeconds} s. Answers 202 at once with the transcription job; ` +
          'poll statusUrl. 415 VIGIL_ERR_UNSUPPORTED_MEDIA_TYPE for other media types and encodings (µ-law, ADPCM, MP3 …).',
        params: IdParams,
        response: { 202: VoiceNoteAccepted, ...errorResponses(404, 413, 415) }
      }
    }, async (request, reply) => {
      const audio = request.body as Buffer | undefined
      if (audio === undefined || !Buffer.isBuffer(audio) || audio.length === 0) {
        throw new VigilError('VIGIL_ERR_VALIDATION', 'the body is empty: send a WAV file', [{ path: 'body', message: 'is empty' }])
      }
      let info
      try {
        info = readWavInfo(audio)
      } catch (err) {
        if (!(err instanceof WavError)) throw err
        if (err.problem === 'invalid') throw new VigilError('VIGIL_ERR_VALIDATION', err.message, [{ path: 'body', message: err.message }])
        throw new VigilError('VIGIL_ERR_UNSUPPORTED_MEDIA_TYPE', err.message)
      }
      if (info.durationMs > limits.maxSeconds * 1000) {
        throw new VigilError('VIGIL_ERR_PAYLOAD_TOO_LARGE', `a voice note is at most ${limits.maxSeconds} s long (this one is ${Math.ceil(info.durationMs / 1000)} s)`)
      }
      const principal = request.principal!
      const { voiceNote, job } = await voiceNotes.create({
        patientId: request.params.id, authorTokenId: principal.tokenId, authorUserId: principal.userId, audio, info
      })
      request.log.info({ voiceNoteId: voiceNote.id, jobId: job.id, durationMs: info.durationMs, bytes: audio.length }, 'voice note accepted')
      const statusUrl = `/v1/jobs/${job.id}`
      reply.code(202).header('location', statusUrl)
      return { jobId: job.id, voiceNoteId: voiceNote.id, statusUrl, durationMs: info.durationMs }
    })

    scope.get('/patients/:id/voice-notes', {
      config: { permission: 'voice-notes:read' },
      schema: {
        tags: ['voice notes'],
        summary: 'A patient\'s voice notes with their transcripts, newest first',
        params: IdParams,
        querystring: VoiceNoteListQuery,
        response: { 200: page(VoiceNoteView), ...errorResponses(404) }
      }
    }, async (request) => {
      const before = decodeTimeCursor(request.query.cursor)
      await patientAccess.require(request, request.params.id, { action: 'voice-notes:read', fields: ['transcript'] })
      const { limit } = request.query
      const rows = await voiceNotes.list(request.params.id, { limit: limit + 1, before, view: releasedView(request) })
      return pageOf(rows, limit, encodeTimeCursor)
    })

    scope.get('/patients/:id/voice-notes/:voiceNoteId', {
      config: { permission: 'voice-notes:read' },
      schema: {
        tags: ['voice notes'],
        summary: 'One voice note with its transcript',
        params: Type.Object({ id: Uuid, voiceNoteId: Uuid }, { additionalProperties: false }),
        response: { 200: VoiceNoteView, ...errorResponses(404) }
      }
    }, async (request) => {
      await patientAccess.require(request, request.params.id, { action: 'voice-notes:read', fields: ['transcript'] })
      const note = await voiceNotes.get(request.params.voiceNoteId, releasedView(request))
      if (note === null || note.patientId !== request.params.id) throw new VigilError('VIGIL_ERR_NOT_FOUND', 'no voice note with this id for this patient')
      return note
    })

    scope.post('/patients/:id/voice-notes/:voiceNoteId/release', {
      config: { permission: 'voice-notes:release' },
      schema: {
        tags: ['voice notes'],
        summary: 'Release a transcribed note to the patient',
        description: 'A patient sees her own voice messages and the notes released to her; clinicians see every note at once. ' +
          'Release once the transcript is reviewed: 409 VIGIL_ERR_CONFLICT before it is transcribed. Releasing again changes nothing.',
        params: Type.Object({ id: Uuid, voiceNoteId: Uuid }, { additionalProperties: false }),
        response: { 200: VoiceNoteView, ...errorResponses(404, 409) }
      }
    }, async (request) => {
      await patientAccess.require(request, request.params.id, { action: 'voice-notes:release', fields: ['voiceNote'] })
      const principal = request.principal!
      const outcome = await voiceNotes.release(request.params.id, request.params.voiceNoteId, principal.userId ?? `token:${principal.tokenId}`)
      if ('note' in outcome) return outcome.note
      if (outcome.problem === 'not_transcribed') throw new VigilError('VIGIL_ERR_CONFLICT', 'the note is not transcribed yet: review its transcript before releasing it')
      throw new VigilError('VIGIL_ERR_NOT_FOUND', 'no voice note with this id for this patient')
    })
  })
}
