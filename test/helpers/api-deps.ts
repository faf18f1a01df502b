import type { Logger } from 'pino'
import type { ApiDeps } from '../../api/app.ts'
import { createMetrics } from '../../observability/metrics.ts'
import { createApiTokenStore } from '../../store/api-tokens.ts'
import type { Database } from '../../store/database.ts'
import { createDeviceRegistry } from '../../store/device-registry.ts'
import { createPatientRecordStore } from '../../store/patient-records.ts'
import { createPatientStore } from '../../store/patients.ts'
import { createPostgresReadingStore } from '../../store/postgres-readings.ts'
import { createRejectionLog } from '../../store/rejections.ts'
import { testKeyring } from './keys.ts'

/** The API's dependencies on one database, as vigil.ts wires them (readings in Postgres). */
export function apiDepsFor (db: Database, log: Logger): ApiDeps {
  return {
    log,
    db,
    patients: createPatientStore(db.pool),
    devices: createDeviceRegistry(db.pool),
    tokens: createApiTokenStore(db.pool),
    rejections: createRejectionLog(db.pool),
    readings: createPostgresReadingStore(db.pool),
    metrics: createMetrics(),
    patientRecords: createPatientRecordStore(db.pool, testKeyring(), log)
  }
}
