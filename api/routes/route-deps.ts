import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import type { FastifyBaseLogger, FastifyInstance, RawReplyDefaultExpression, RawRequestDefaultExpression, RawServerDefault } from 'fastify'
import type { Logger } from 'pino'
import type { Access } from '../../access/access.ts'
import type { ApiTokenStore } from '../../access/api-tokens.ts'
import type { Authenticate } from '../../access/auth.ts'
import type { PatientAccessPolicy } from '../../access/patient-access.ts'
import type { AlertingApi } from '../../alerts/lifecycle/alerting.ts'
import type { DeviceRegistry } from '../../devices/device-registry.ts'
import type { RejectionLog } from '../../devices/rejections.ts'
import type { JobQueue } from '../../jobs/job-queue.ts'
import type { VoiceNoteStore } from '../../jobs/voice-notes.ts'
import type { Metrics } from '../../observability/metrics.ts'
import type { PatientRecordStore } from '../../patients/patient-records.ts'
import type { PatientStore } from '../../patients/patients.ts'
import type { ReadingStore } from '../../readings/reading-store.ts'
import type { ResearchExports } from '../../research/exports.ts'
import type { BulkExports } from '../../fhir/bulk/bulk-exports.ts'
import type { StoredReading } from '../../readings/reading.ts'
import type { Database } from '../../store/database.ts'
import type { AlertRulesApi } from './alert-rules.ts'
import type { SpoolAdmin } from './spool.ts'
import type { WebAssets } from '../../web/build.ts'

// The contract between api/app.ts (which builds the instance and fills in defaults) and the
// route plugins here: what each route receives.

/** Abuse and overload limits; each has a default in `apiLimitDefaults` (api/app.ts). */
export interface ApiLimits {
  /** Requests per minute per API token. */
  rateLimitPerMinute: number
  /** Requests per minute per client address for everything without a valid token: public routes, 404s, failed authentication. */
  unauthenticatedRateLimitPerMinute: number
  /** Shed load (503) when the mean event-loop delay over a sample exceeds this (ms); 0: off. */
  maxEventLoopDelayMs: number
  /** Shed load when event-loop utilization over a sample exceeds this (0–1); 0: off. */
  maxEventLoopUtilization: number
  /** Shed load when the V8 heap in use exceeds this (bytes); 0: off. */
  maxHeapUsedBytes: number
  /** Shed load when the resident set size exceeds this (bytes); 0: off. */
  maxRssBytes: number
  /** How often load is sampled (ms, at least 10). */
  loadSampleIntervalMs: number
}

/** What routes receive: ApiDeps with the defaults filled in. */
export type RouteDeps = ApiDeps & { authenticate: Authenticate, patientAccess: PatientAccessPolicy }

export interface ApiDeps extends Partial<ApiLimits> {
  log: Logger
  /** For /healthz. */
  db: Database
  patients: PatientStore
  devices: DeviceRegistry
  tokens: ApiTokenStore
  /**
   * People, roles, sessions and the audit log (createAccess): it authenticates every bearer
   * token, decides every patient access, and serves /v1/auth/*, users, roles, care teams,
   * break-glass, audit and tokens.
   */
  access: Access
  /** Replaces access's authenticator (tests of one component). */
  authenticate?: Authenticate
  /** Replaces access's patient access policy (tests of one component). */
  patientAccess?: PatientAccessPolicy
  rejections: RejectionLog
  /** Ingest's replay of kept device_unassigned payloads; POST /v1/devices/{id}/rejections/replay exists only with it. */
  keptReplay?: {
    resolveKept (deviceId: string, topic: string, payload: Buffer, receivedAt: Date): Promise<{ readings: StoredReading[], unassigned: number }>
    storeKept (readings: StoredReading[]): Promise<void>
  }
  readings: ReadingStore
  metrics: Metrics
  /** Patients' encrypted records (PHI); the /record, lookup and /admin/keys routes exist when set. */
  patientRecords?: PatientRecordStore
  /** Background jobs (issue 5); default: a queue on `db` (jobs wait for a runner). */
  jobs?: JobQueue
  /** Voice notes (encrypted audio and transcripts); the /voice-notes routes exist only with it. */
  voiceNotes?: VoiceNoteStore
  /** Voice note upload limits (VOICE_NOTE_MAX_BYTES, VOICE_NOTE_MAX_SECONDS). */
  voiceNoteLimits?: { maxBytes: number, maxSeconds: number }
  /** Extra health checks (e.g. spool) -> name: async () => void (throws when unhealthy). */
  healthChecks?: Record<string, () => Promise<void>>
  /**
   * Checks of parts whose loss degrades Vigil without stopping it (Redis when clustered:
   * ingest goes on): a failure is reported (`degraded`, 200), so a load balancer keeps
   * sending traffic here.
   */
  degradingHealthChecks?: Record<string, () => Promise<void>>
  /**
   * Fastify's trustProxy (vigil.ts passes TRUST_PROXY): set it (to the proxy's address, preferably) only when a reverse
   * proxy fronts the API, so per-address limits see the client's address from
   * X-Forwarded-For instead of the proxy's. Default false: the socket's address.
   */
  trustProxy?: boolean | string | string[]
  /**
   * The data directory's free-space reserve (store/disk-reserve.ts): while low, /v1 writes
   * answer 503 VIGIL_ERR_DISK_LOW and /healthz fails its `disk` check.
   */
  diskReserve?: { low: () => boolean }
  /** Alert lifecycle (startAlerting(...).api); the /v1/alerts routes exist only with it. */
  alerts?: AlertingApi
  /** The alert engine (rules file, overrides): /v1/alert-rules and /v1/patients/:id/rule-overrides exist only when set. */
  alertRules?: AlertRulesApi
  /** De-identified exports for ML scientists: /v1/exports/deidentified exists only when set. */
  researchExports?: ResearchExports
  /** FHIR Bulk Data export: /fhir/R4/$export and its status and file URLs exist only when set. */
  bulkExports?: BulkExports
  /** The web app's bundle (web/build.ts lazyWebApp: built on the first request): served at / when set. */
  webApp?: () => Promise<WebAssets>
  /** The InfluxDB spool: /v1/admin/spool/* exist only when set. */
  spool?: SpoolAdmin | null
}

/** The Fastify instance routes are registered on: TypeBox schemas give handler types. */
export type ApiInstance = FastifyInstance<
  RawServerDefault, RawRequestDefaultExpression, RawReplyDefaultExpression, FastifyBaseLogger, TypeBoxTypeProvider
>
