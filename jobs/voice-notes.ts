import { randomUUID } from 'node:crypto'
import type pg from 'pg'
import type { Job, JobQueue, JobState } from './job-queue.ts'
import type { TranscribedWord } from './transcription/engine.ts'
import type { WavInfo } from './transcription/wav.ts'
import { decryptBytes, decryptField, encryptBytes, encryptField } from '../crypto/field-encryption.ts'
import type { Keyring } from '../crypto/field-encryption.ts'
import { inTransaction } from '../store/database.ts'

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
  /** When a clinician released the note to the patient (issue 13 §4); null: not released. */
  releasedAt: string | null
  releasedBy: string | null
}

/**
 * Which notes a reader without clinical-notes:read (a patient) sees: those she authored and
 * those released to her. Absent: every note.
 */
export interface ReleasedView { authorUserId: string | null }

export type ReleaseOutcome = { note: VoiceNote } | { problem: 'not_found' | 'not_transcribed' }

const SELECT = `SELECT v.id, v.patient_id, v.job_id, j.state, v.duration_ms, v.transcript, v.words_json, v.confidence, v.engine,
  v.author_token_id, v.author_user_id, v.created_at, v.transcribed_at, v.released_at, v.released_by FROM voice_notes v JOIN jobs j ON j.id = v.job_id`

// Where each encrypted value lives: its ciphertext is bound to it (AAD), so a transcript
// copied to another note fails to decrypt.
const transcriptAt = (id: string) => ({ table: 'voice_notes', column: 'transcript', rowId: id })
const wordsAt = (id: string) => ({ table: 'voice_notes', column: 'words_json', rowId: id })
const audioAt = (id: string) => ({ table: 'voice_note_audio', column: 'audio', rowId: id })

function toVoiceNote (row: Record<string, unknown>, keyring: Keyring): VoiceNote {
  const id = row.id as string
  return {
    id: row.id as string,
    patientId: row.patient_id as string,
    jobId: row.job_id as string,
    state: row.state as JobState,
    durationMs: row.duration_ms as number,
    transcript: row.transcript === null ? null : decryptField(keyring, row.transcript as string, transcriptAt(id)),
    words: row.words_json === null ? null : JSON.parse(decryptField(keyring, row.words_json as string, wordsAt(id))) as TranscribedWord[],
    confidence: (row.confidence as number | null) ?? null,
    engine: (row.engine as string | null) ?? null,
    authorTokenId: row.author_token_id as string,
    authorUserId: (row.author_user_id as string | null) ?? null,
    createdAt: (row.created_at as Date).toISOString(),
    transcribedAt: row.transcribed_at === null ? null : (row.transcribed_at as Date).toISOString(),
    releasedAt: row.released_at === null ? null : (row.released_at as Date).toISOString(),
    releasedBy: (row.released_by as string | null) ?? null
  }
}

export interface NewVoiceNote {
  patientId: string
  authorTokenId: string
  authorUserId: string | null
  audio: Buffer
  info: WavInfo
}

/** Voice notes, their (encrypted) audio until transcribed and their (encrypted) transcripts. */
export function createVoiceNoteStore (pool: pg.Pool, queue: JobQueue, keyring: Keyring) {
  return {
    activeKeyId: keyring.activeKeyId,
    /** Stores the note, its audio and its transcription job in one transaction: accepted means queued. */
    async create (note: NewVoiceNote): Promise<{ voiceNote: VoiceNote, job: Job }> {
      const id = randomUUID()
      const job = await inTransaction(pool, async (client) => {
        const queued = await queue.enqueue({ type: TRANSCRIPTION_JOB, patientId: note.patientId, payload: { voiceNoteId: id }, createdBy: note.authorTokenId }, client)
        await client.query(
          // created_at from the job (milliseconds, as the API's cursors carry it), not now() (microseconds).
          `INSERT INTO voice_notes (id, patient_id, author_token_id, author_user_id, job_id, duration_ms, sample_rate, channels, bytes, created_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
          [id, note.patientId, note.authorTokenId, note.authorUserId, queued.id, note.info.durationMs, note.info.sampleRate, note.info.channels, note.audio.length, queued.createdAt])
        await client.query('INSERT INTO voice_note_audio (voice_note_id, audio) VALUES ($1, $2)', [id, encryptBytes(keyring, note.audio, audioAt(id))])
        return queued
      })
      queue.announce(job)
      const voiceNote = await this.get(id)
      return { voiceNote: voiceNote!, job }
    },
    async get (id: string, view?: ReleasedView): Promise<VoiceNote | null> {
      const { rows } = await pool.query(`${SELECT} WHERE v.id = $1`, [id])
      if (rows[0] === undefined) return null
      // Checked before decrypting: an unreleased transcript is never opened for this reader.
      if (view !== undefined && rows[0].released_at === null && (view.authorUserId === null || rows[0].author_user_id !== view.authorUserId)) return null
      return toVoiceNote(rows[0], keyring)
    },
    /** Newest first; with `view`, only the notes that reader sees. */
    async list (patientId: string, options: { limit: number, before?: { createdAt: string, id: string }, view?: ReleasedView }): Promise<VoiceNote[]> {
      const { rows } = await pool.query(
        `${SELECT} WHERE v.patient_id = $1 AND ($2::timestamptz IS NULL OR (v.created_at, v.id) < ($2::timestamptz, $3::uuid))
           AND (NOT $5::boolean OR v.released_at IS NOT NULL OR v.author_user_id = $6::uuid)
         ORDER BY v.created_at DESC, v.id DESC LIMIT $4`,
        [patientId, options.before?.createdAt ?? null, options.before?.id ?? null, options.limit,
          options.view !== undefined, options.view?.authorUserId ?? null])
      return rows.map((row) => toVoiceNote(row, keyring))
    },
    /** Releases a transcribed note to its patient (idempotent: a released note stays as it was). */
    async release (patientId: string, id: string, by: string): Promise<ReleaseOutcome> {
      const { rows } = await pool.query(
        `UPDATE voice_notes SET released_at = COALESCE(released_at, now()), released_by = COALESCE(released_by, $3)
          WHERE id = $1 AND patient_id = $2 AND transcribed_at IS NOT NULL RETURNING id`, [id, patientId, by])
      if (rows[0] === undefined) {
        const note = await this.get(id)
        return { problem: note === null || note.patientId !== patientId ? 'not_found' : 'not_transcribed' }
      }
      return { note: (await this.get(id))! }
    },
    async audioOf (id: string): Promise<Buffer | null> {
      const { rows } = await pool.query('SELECT audio FROM voice_note_audio WHERE voice_note_id = $1', [id])
      return rows[0] === undefined ? null : decryptBytes(keyring, rows[0].audio as Buffer, audioAt(id))
    },
    /** Inside the job's completion transaction. */
    async saveTranscript (client: pg.ClientBase, id: string, t: { text: string, words: TranscribedWord[], confidence?: number, engine: string }): Promise<void> {
      await client.query(
        `UPDATE voice_notes SET transcript = $2, words_json = $3, key_id = $4, confidence = $5, engine = $6, transcribed_at = now() WHERE id = $1`,
        [id, encryptField(keyring, t.text, transcriptAt(id)), encryptField(keyring, JSON.stringify(t.words), wordsAt(id)),
          keyring.activeKeyId, t.confidence ?? null, t.engine])
      await client.query('DELETE FROM voice_note_audio WHERE voice_note_id = $1', [id])
    },
    async deleteAudio (client: pg.ClientBase | pg.Pool, id: string): Promise<void> {
      await client.query('DELETE FROM voice_note_audio WHERE voice_note_id = $1', [id])
    },
    /** Transcribed notes per key id, for the operator retiring a key. */
    async keyUsage (): Promise<Array<{ keyId: string, voiceNotes: number }>> {
      const { rows } = await pool.query('SELECT key_id, count(*)::int AS n FROM voice_notes WHERE key_id IS NOT NULL GROUP BY key_id ORDER BY key_id')
      return rows.map((r) => ({ keyId: r.key_id as string, voiceNotes: r.n as number }))
    },

    /**
     * Re-encrypts transcripts not under the active key (after a key rotation), in id order.
     * Audio is transient (deleted when its job ends) and is not re-encrypted; a note whose
     * transcript cannot be decrypted (its key is not configured) is counted as failed and left.
     */
    async reencryptAll (options: { batchSize?: number, shouldStop?: () => boolean } = {}): Promise<{ done: number, failed: number }> {
      const progress = { done: 0, failed: 0 }
      let after = '00000000-0000-0000-0000-000000000000'
      while (options.shouldStop?.() !== true) {
        const { rows } = await pool.query(
          'SELECT id, transcript, words_json, key_id FROM voice_notes WHERE key_id IS NOT NULL AND key_id <> $1 AND id > $2 ORDER BY id LIMIT $3',
          [keyring.activeKeyId, after, options.batchSize ?? 200])
        if (rows.length === 0) break
        for (const row of rows) {
          const id = row.id as string
          after = id
          try {
            const transcript = decryptField(keyring, row.transcript as string, transcriptAt(id))
            const words = decryptField(keyring, row.words_json as string, wordsAt(id))
            // Only if untouched since it was read (the key id is the version here).
            await pool.query('UPDATE voice_notes SET transcript = $2, words_json = $3, key_id = $4 WHERE id = $1 AND key_id = $5',
              [id, encryptField(keyring, transcript, transcriptAt(id)), encryptField(keyring, words, wordsAt(id)), keyring.activeKeyId, row.key_id])
            progress.done++
          } catch {
            progress.failed++
          }
        }
      }
      return progress
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
