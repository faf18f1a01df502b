import type { Logger } from 'pino'
import type pg from 'pg'
import { reencryptClinicalText } from './clinical-text.ts'
import type { Keyring } from './field-encryption.ts'

export interface ReencryptionProgress { done: number, total: number, failed: number }

/** What the pass needs of the patient record store (patients/patient-records.ts). */
export interface ReencryptableRecords {
  readonly activeKeyId: string
  keyUsage (): Promise<Array<{ keyId: string, records: number }>>
  reencryptAll (options: { batchSize?: number, onProgress?: (p: ReencryptionProgress) => void, shouldStop?: () => boolean }): Promise<ReencryptionProgress>
}

export interface Reencryption {
  /** Resolves when the pass has finished (or stopped at close). Never rejects: failures are logged. */
  readonly finished: Promise<ReencryptionProgress | null>
  close (): Promise<void>
}

/**
 * The start-up re-encryption pass: when records remain under a key other than the active one
 * (after VIGIL_SECRET_KEY gained a new first key), rewrites them in the background with
 * progress logs, so the old key's count in GET /v1/admin/keys reaches 0 and the key can be
 * removed. Records read or written meanwhile are moved lazily by the store itself.
 */
/** What the pass needs of the voice note store (jobs/voice-notes.ts). */
export interface ReencryptableVoiceNotes {
  readonly activeKeyId: string
  keyUsage (): Promise<Array<{ keyId: string, voiceNotes: number }>>
  reencryptAll (options: { batchSize?: number, shouldStop?: () => boolean }): Promise<{ done: number, failed: number }>
}

export function startReencryption (records: ReencryptableRecords, log: Logger, options: { batchSize?: number, voiceNotes?: ReencryptableVoiceNotes, clinicalText?: { pool: pg.Pool, keyring: Keyring } } = {}): Reencryption {
  const rekeyLog = log.child({ component: 'reencryption' })
  let stopping = false
  const voiceNotesPass = async (): Promise<void> => {
    const notes = options.voiceNotes
    if (notes === undefined) return
    const usage = await notes.keyUsage()
    if (usage.every((u) => u.keyId === notes.activeKeyId)) return
    rekeyLog.info({ keys: usage }, 're-encrypting voice note transcripts under the active key')
    const result = await notes.reencryptAll({ batchSize: options.batchSize, shouldStop: () => stopping })
    if (result.failed > 0) rekeyLog.error(result, 'voice note re-encryption finished with transcripts it could not read: configure their keys and restart')
    else rekeyLog.info(result, 'voice note re-encryption finished')
  }
  // Clinical free text (crypto/clinical-text.ts): values under a retired key, and values written
  // before migration 008 (still plain), are encrypted under the active key.
  const clinicalTextPass = async (): Promise<void> => {
    const c = options.clinicalText
    if (c === undefined) return
    const result = await reencryptClinicalText(c.pool, c.keyring, { batchSize: options.batchSize, shouldStop: () => stopping })
    if (result.failed > 0) rekeyLog.error(result, 'clinical text encryption finished with values it could not read: configure their keys and restart')
    else if (result.done > 0) rekeyLog.info(result, 'clinical text encrypted under the active key')
  }
  const finished = (async (): Promise<ReencryptionProgress | null> => {
    await clinicalTextPass().catch((err: unknown) => rekeyLog.error({ err }, 'clinical text encryption failed; it is retried at the next start'))
    await voiceNotesPass().catch((err: unknown) => rekeyLog.error({ err }, 'voice note re-encryption failed; it is retried at the next start'))
    try {
      const usage = await records.keyUsage()
      // Nothing to do is the common case: one cheap query, no log line.
      if (usage.every((u) => u.keyId === records.activeKeyId)) return null
      rekeyLog.info({ keys: usage }, 're-encrypting patient records under the active key')
      const result = await records.reencryptAll({
        batchSize: options.batchSize,
        shouldStop: () => stopping,
        onProgress: (p) => rekeyLog.info(p, 're-encryption progress')
      })
      if (result.failed > 0) rekeyLog.error(result, 're-encryption finished with records it could not read: configure their keys and restart')
      else rekeyLog.info(result, stopping ? 're-encryption stopped at shutdown; it resumes at the next start' : 're-encryption finished')
      return result
    } catch (err) {
      rekeyLog.error({ err }, 're-encryption failed; it is retried at the next start')
      return null
    }
  })()
  return {
    finished,
    async close () {
      stopping = true
      await finished
    }
  }
}

