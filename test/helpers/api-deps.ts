import type { FastifyInstance } from 'fastify'
import pino from 'pino'
import type { Logger } from 'pino'
import { buildApi } from '../../api/app.ts'
import { createAccess } from '../../access/access.ts'
import type { AccessOptions } from '../../access/access.ts'
import type { ApiDeps } from '../../api/app.ts'
import { createMetrics } from '../../observability/metrics.ts'
import { createApiTokenStore } from '../../access/api-tokens.ts'
import { openDatabase } from '../../store/database.ts'
import type { Database } from '../../store/database.ts'
import { createDeviceRegistry } from '../../devices/device-registry.ts'
import { createJobQueue } from '../../jobs/job-queue.ts'
import { createPatientRecordStore } from '../../patients/patient-records.ts'
import { createVoiceNoteStore } from '../../jobs/voice-notes.ts'
import { createPatientStore } from '../../patients/patients.ts'
import { createPostgresReadingStore } from '../../readings/postgres-store.ts'
import { createRejectionLog } from '../../devices/rejections.ts'
import { testKeyring } from './keys.ts'
import { createTestDatabase } from './postgres.ts'

/** A cheap scrypt cost for test passwords (OWASP's minimum costs ~0.3 s and 128 MiB each). */
export const testPasswordCost = { N: 1024, r: 8, p: 1 } as const

/**
 * The API's dependencies on one database, as vigil.ts wires them (readings in Postgres), with
 * load shedding off: a test not about shedding must not get 503 because the machine is busy
 * (test/api/api-hardening.test.ts turns it on with its own values).
 */
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
    // Login budgets out of the way unless a test sets them: app.inject logs everyone in from one address.
    access: createAccess({ pool: db.pool, patients, tokens, passwordCost: testPasswordCost, keyring, ...access, settings: { loginsPerAddressPerMinute: 1_000_000, loginsPerAccountPerMinute: 1_000_000, ...access.settings } }),
    rejections: createRejectionLog(db.pool),
    readings: createPostgresReadingStore(db.pool),
    metrics: createMetrics(),
    patientRecords: createPatientRecordStore(db.pool, keyring, log),
    jobs,
    voiceNotes: createVoiceNoteStore(db.pool, jobs, keyring),
    maxEventLoopDelayMs: 0
  }
}

export interface ApiFixture {
  log: Logger
  testDb: { url: string, drop: () => Promise<void> }
  db: Database
  deps: ApiDeps
  app: FastifyInstance
  /** An admin API token, and the headers that present it. */
  token: string
  headers: { authorization: string }
}

/**
 * What most API test files start with: a fresh database on the machine's PostgreSQL, the API on
 * it (driven with app.inject), and an admin token named `tokenName`; all closed at teardown.
 */
export async function startApiFixture (t: { teardown: (fn: () => Promise<void>) => void }, tokenName: string,
  options: { log?: Logger, apiOptions?: Partial<ApiDeps>, access?: Partial<Omit<AccessOptions, 'pool' | 'patients' | 'tokens'>> } = {}): Promise<ApiFixture> {
  const log = options.log ?? pino({ level: 'silent' })
  const testDb = await createTestDatabase()
  const db = await openDatabase({ databaseUrl: testDb.url, dataDir: '', log })
  const deps = apiDepsFor(db, log, options.access)
  const app = await buildApi({ ...deps, ...options.apiOptions })
  t.teardown(async () => {
    await app.close()
    await db.close()
    await testDb.drop()
  })
  const { token } = await deps.tokens.create(tokenName, 'admin')
  return { log, testDb, db, deps, app, token, headers: { authorization: `Bearer ${token}` } }
}
