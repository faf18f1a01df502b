import { randomUUID } from 'node:crypto'
import type pg from 'pg'
import type { Job, JobQueue, JobState } from '../jobs/job-queue.ts'
import type { TranscribedWord } from '../jobs/transcription/engine.ts'
import type { WavInfo } from '../jobs/transcription/wav.ts'

export const TRANSCRIPTION_JOB = 'transcription'

export interface VoiceNote {
  id: string
  patientId: string
  jobId: string
  /** The transcription job's state. */
  state: JobState
  durationMs: number
  /** PHI. null until transcribed. */
  transcript: string | null
  /** PHI (the transcript's words with timings). null until transcribed. */
  words: TranscribedWord[] | null
  confidence: number | null
  engine: string | null
  authorTokenId: string
  authorUserId: string | null
  createdAt: string
  transcribedAt: string | null
}

const SELECT = `SELECT v.id, v.patient_id, v.job_id, j.state, v.duration_ms, v.transcript, v.words_json, v.confidence, v.engine,
  v.author_token_id, v.author_user_id, v.created_at, v.transcribed_at FROM voice_notes v JOIN jobs j ON j.id = v.job_id`

function toVoiceNote (row: Record<string, unknown>): VoiceNote {
  return {
    id: row.id as string,
    patientId: row.patient_id as string,
    jobId: row.job_id as string,
    state: row.state as JobState,
    durationMs: row.duration_ms as number,
    transcript: (row.transcript as string | null) ?? null,
    words: row.words_json === null ? null : JSON.parse(row.words_json as string) as TranscribedWord[],
    confidence: (row.confidence as number | null) ?? null,
    engine: (row.engine as string | null) ?? null,
    authorTokenId: row.author_token_id as string,
    authorUserId: (row.author_user_id as string | null) ?? null,
    createdAt: (row.created_at as Date).toISOString(),
    transcribedAt: row.transcribed_at === null ? null : (row.transcribed_at as Date).toISOString()
  }
}

export interface NewVoiceNote {
  patientId: string
  authorTokenId: string
  authorUserId: string | null
  audio: Buffer
  info: WavInfo
}

export function createVoiceNoteStore (pool: pg.Pool, queue: JobQueue) {
  return {
    /** Stores the note, its audio and its transcription job in one transaction: accepted means queued. */
    async create (note: NewVoiceNote): Promise<{ voiceNote: VoiceNote, job: Job }> {
      const client = await pool.connect()
      let job: Job
      const id = randomUUID()
      try {
        await client.query('BEGIN')
        job = await queue.enqueue({ type: TRANSCRIPTION_JOB, patientId: note.patientId, payload: { voiceNoteId: id }, createdBy: note.authorTokenId }, client)
        await client.query(
          // created_at from the job (milliseconds, as the API's cursors carry it), not now() (microseconds).
          `INSERT INTO voice_notes (id, patient_id, author_token_id, author_user_id, job_id, duration_ms, sample_rate, channels, bytes, created_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
          [id, note.patientId, note.authorTokenId, note.authorUserId, job.id, note.info.durationMs, note.info.sampleRate, note.info.channels, note.audio.length, job.createdAt])
        await client.query('INSERT INTO voice_note_audio (voice_note_id, audio) VALUES ($1, $2)', [id, note.audio])
        await client.query('COMMIT')
      } catch (err) {
        await client.query('ROLLBACK').catch(() => {})
        throw err
      } finally {
        client.release()
      }
      queue.announce(job)
      const voiceNote = await this.get(id)
      return { voiceNote: voiceNote!, job }
    },
    async get (id: string): Promise<VoiceNote | null> {
      const { rows } = await pool.query(`${SELECT} WHERE v.id = $1`, [id])
      return rows[0] === undefined ? null : toVoiceNote(rows[0])
    },
    /** Newest first. */
    async list (patientId: string, options: { limit: number, before?: { createdAt: string, id: string } }): Promise<VoiceNote[]> {
      const { rows } = await pool.query(
        `${SELECT} WHERE v.patient_id = $1 AND ($2::timestamptz IS NULL OR (v.created_at, v.id) < ($2::timestamptz, $3::uuid))
         ORDER BY v.created_at DESC, v.id DESC LIMIT $4`,
        [patientId, options.before?.createdAt ?? null, options.before?.id ?? null, options.limit])
      return rows.map(toVoiceNote)
    },
    async audioOf (id: string): Promise<Buffer | null> {
      const { rows } = await pool.query('SELECT audio FROM voice_note_audio WHERE voice_note_id = $1', [id])
      return rows[0] === undefined ? null : rows[0].audio as Buffer
    },
    /** Inside the job's completion transaction. */
    async saveTranscript (client: pg.ClientBase, id: string, t: { text: string, words: TranscribedWord[], confidence?: number, engine: string }): Promise<void> {
      await client.query(
        `UPDATE voice_notes SET transcript = $2, words_json = $3, confidence = $4, engine = $5, transcribed_at = now() WHERE id = $1`,
        [id, t.text, JSON.stringify(t.words), t.confidence ?? null, t.engine])
      await client.query('DELETE FROM voice_note_audio WHERE voice_note_id = $1', [id])
    },
    async deleteAudio (client: pg.ClientBase | pg.Pool, id: string): Promise<void> {
      await client.query('DELETE FROM voice_note_audio WHERE voice_note_id = $1', [id])
    },
    /** Audio whose job ended some other way (a runner died on the last attempt): deleted. Returns how many. */
    async deleteAudioOfEndedJobs (): Promise<number> {
      const { rowCount } = await pool.query(
        `DELETE FROM voice_note_audio a USING voice_notes v JOIN jobs j ON j.id = v.job_id
         WHERE a.voice_note_id = v.id AND j.state IN ('succeeded', 'failed', 'cancelled')`)
      return rowCount ?? 0
    }
  }
}

export type VoiceNoteStore = ReturnType<typeof createVoiceNoteStore>
