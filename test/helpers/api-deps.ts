import type { Logger } from 'pino'
import { createAccess } from '../../api/access.ts'
import type { AccessOptions } from '../../api/access.ts'
import type { ApiDeps } from '../../api/app.ts'
import { createMetrics } from '../../observability/metrics.ts'
import { createApiTokenStore } from '../../store/api-tokens.ts'
import type { Database } from '../../store/database.ts'
import { createDeviceRegistry } from '../../store/device-registry.ts'
import { createJobQueue } from '../../jobs/job-queue.ts'
import { createPatientRecordStore } from '../../store/patient-records.ts'
import { createVoiceNoteStore } from '../../store/voice-notes.ts'
import { createPatientStore } from '../../store/patients.ts'
import { createPostgresReadingStore } from '../../store/postgres-readings.ts'
import { createRejectionLog } from '../../store/rejections.ts'
import { testKeyring } from './keys.ts'

/** A cheap scrypt cost for test passwords (OWASP's minimum costs ~0.3 s and 128 MiB each). */
export const testPasswordCost = { N: 1024, r: 8, p: 1 } as const

/** The API's dependencies on one database, as vigil.ts wires them (readings in Postgres). */
export function apiDepsFor (db: Database, log: Logger, access: Partial<Omit<AccessOptions, 'pool' | 'patients' | 'tokens'>> = {}): ApiDeps {
  const patients = createPatientStore(db.pool)
  const tokens = createApiTokenStore(db.pool)
  const keyring = testKeyring()
  const jobs = createJobQueue({ pool: db.pool })
  return {
    log,
    db,
    patients,
    devices: createDeviceRegistry(db.pool),
    tokens,
    access: createAccess({ pool: db.pool, patients, tokens, passwordCost: testPasswordCost, ...access }),
    rejections: createRejectionLog(db.pool),
    readings: createPostgresReadingStore(db.pool),
    metrics: createMetrics(),
    patientRecords: createPatientRecordStore(db.pool, keyring, log),
    jobs,
    voiceNotes: createVoiceNoteStore(db.pool, jobs, keyring)
  }
}
