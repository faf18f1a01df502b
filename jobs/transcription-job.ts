import type { WorkerPool } from '../workers/pool.ts'
import type { VoiceNoteStore } from './voice-notes.ts'
import { PermanentJobError, type JobHandler } from './job-runner.ts'
import type { EngineSpec, Transcript } from './transcription/engine.ts'
import { CONTROL_CANCEL, CONTROL_PROGRESS, CONTROL_SLOTS, type TranscribeTask } from './transcription/transcribe-task.ts'

export type TranscriptionPool = WorkerPool<TranscribeTask, Transcript & { engine: string }>

/**
 * The 'transcription' job: the voice note's audio goes to a pool thread, the transcript comes
 * back and is stored with the note in the transaction that completes the job (so it is stored
 * once), and the audio is deleted then.
 */
export function transcriptionJobHandler ({ pool, voiceNotes, engine }: { pool: TranscriptionPool, voiceNotes: VoiceNoteStore, engine: EngineSpec }): JobHandler {
  return {
    async run (job, { signal, reportProgress }) {
      const voiceNoteId = job.payload.voiceNoteId
      if (typeof voiceNoteId !== 'string') throw new PermanentJobError('the job has no voice note id')
      const audio = await voiceNotes.audioOf(voiceNoteId)
      if (audio === null) throw new PermanentJobError('the voice note has no audio')
      const control = new SharedArrayBuffer(CONTROL_SLOTS * 4)
      const flags = new Int32Array(control)
      // The thread polls the flag and kills its recognizer; aborting the Piscina task instead
      // would end the thread and leave the child process running.
      const onAbort = (): void => { Atomics.store(flags, CONTROL_CANCEL, 1) }
      signal.addEventListener('abort', onAbort, { once: true })
      const progress = setInterval(() => reportProgress(Atomics.load(flags, CONTROL_PROGRESS) / 1000), 200)
      try {
        const transcript = await pool.run({ audio, engine, control })
        return {
          // Ids and counts only: the transcript is PHI and is read through the voice note.
          result: { voiceNoteId, words: transcript.words.length, confidence: transcript.confidence ?? null, engine: transcript.engine },
          apply: async (client) => { await voiceNotes.saveTranscript(client, voiceNoteId, transcript) }
        }
      } finally {
        clearInterval(progress)
        signal.removeEventListener('abort', onAbort)
      }
    },
    async onFinal (job, client) {
      const voiceNoteId = job.payload.voiceNoteId
      if (typeof voiceNoteId === 'string') await voiceNotes.deleteAudio(client, voiceNoteId)
    }
  }
}
