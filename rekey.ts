import fs from 'node:fs/promises'
import os from 'node:os'
import { ConfigError, loadConfig } from './config/config.ts'
import { createLogger } from './observability/logger.ts'
import { lockDataDir } from './store/data-dir-lock.ts'
import { clinicalTextKeyUsage, reencryptClinicalText } from './crypto/clinical-text.ts'
import { openDatabase } from './store/database.ts'
import { openEmbeddedKeyring } from './crypto/embedded-keyring.ts'
import { createJobQueue } from './jobs/job-queue.ts'
import { createPatientRecordStore } from './patients/patient-records.ts'
import { createVoiceNoteStore } from './jobs/voice-notes.ts'

// `npm run rekey`: re-encrypts every patient record under the active key, with the same
// configuration as Vigil (VIGIL_SECRET_KEY / VIGIL_SECRET_KEY_FILE, DATABASE_URL). Vigil does the
// same at start-up; this is for an operator who wants it done (and its count) before retiring
// a key. Safe beside a running Vigil on a Postgres server: a record written meanwhile wins.
// The embedded database is single-process: stop Vigil first (the data directory lock says so).
let config
try {
  config = loadConfig(process.env, os.availableParallelism())
} catch (err) {
  if (err instanceof ConfigError) {
    process.stderr.write(`vigil rekey: configuration error: ${err.message}\n`)
    process.exit(78) // EX_CONFIG
  }
  throw err
}
const log = createLogger(config.logLevel).child({ component: 'rekey' })
process.umask(0o077) // as Vigil: nothing under VIGIL_DATA_DIR readable by other users
await fs.mkdir(config.dataDir, { recursive: true, mode: 0o700 })
const unlock = config.databaseUrl === null ? await lockDataDir(config.dataDir) : async () => {}
const keyring = config.secretKeys?.keyring ?? await openEmbeddedKeyring(config.dataDir, log)
const db = await openDatabase({ databaseUrl: config.databaseUrl, dataDir: config.dataDir, log })
try {
  const records = createPatientRecordStore(db.pool, keyring, log)
  const result = await records.reencryptAll({ onProgress: (p) => log.info(p, 're-encryption progress') })
  const voiceNotes = createVoiceNoteStore(db.pool, createJobQueue({ pool: db.pool }), keyring)
  const notes = await voiceNotes.reencryptAll({})
  const clinicalText = await reencryptClinicalText(db.pool, keyring)
  // Embedded PGlite has no fsync of its own (store/database.ts): make the rewrites durable.
  await db.flushToDisk()
  const keys = await records.keyUsage()
  log.info({ ...result, activeKeyId: keyring.activeKeyId, keys, voiceNotes: { ...notes, keys: await voiceNotes.keyUsage() }, clinicalText: { ...clinicalText, keys: await clinicalTextKeyUsage(db.pool) } }, 're-encryption finished')
  process.exitCode = result.failed + notes.failed + clinicalText.failed > 0 ? 1 : 0
} finally {
  await db.close()
  await unlock()
}
