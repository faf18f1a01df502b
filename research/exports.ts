import { createHash, randomBytes } from 'node:crypto'
import { createWriteStream, type WriteStream } from 'node:fs'
import fs from 'node:fs/promises'
import path from 'node:path'
import type pg from 'pg'
import type { Logger } from 'pino'
import type { AuditLog } from '../access/audit-log.ts'
import { decryptField, encryptField, envelopeKeyId, type Keyring } from '../crypto/field-encryption.ts'
import type { Job, Json } from '../jobs/job-queue.ts'
import { PermanentJobError, type JobHandler } from '../jobs/job-runner.ts'
import type { PatientRecordStore } from '../patients/patient-records.ts'
import { lookupMetric } from '../readings/vitals-catalogue.ts'
import { ageGroup, ageOn, dateShiftMs, pseudonym, shiftDate, suppressSmallCells, transformations, type Suppression } from './deidentify.ts'

export const DEIDENTIFIED_EXPORT_JOB = 'deidentified-export'

/** The NEWS2 bands a cohort may ask for, by the stored NEWS2 total (`news2_score` readings). */
export const news2BandMinimum = { medium: 5, high: 7 } as const
export type CohortNews2Band = keyof typeof news2BandMinimum

/** What an ML scientist asks for: no PHI (metric names, a period, a rule id, a band). */
export interface Cohort {
  metrics: string[]
  /** Inclusive. */
  from: string
  /** Exclusive. */
  to: string
  /** Only patients who had an alert of this rule opened in the period. */
  alertRule?: string
  /** Only patients whose NEWS2 total reached this band in the period. */
  news2Band?: CohortNews2Band
}

export interface ExportFile { name: string, bytes: number, sha256: string, records: number }

export interface ResearchExport {
  jobId: string
  owner: string
  cohort: Cohort
  subjects: number | null
  files: ExportFile[] | null
  expiresAt: string | null
  filesDeletedAt: string | null
}

export interface ResearchExportsOptions {
  pool: pg.Pool
  keyring: Keyring
  /** Where the files are written: `<dir>/<job id>/`. */
  dir: string
  /** DEIDENTIFY_K_MIN. */
  k: number
  /** DEIDENTIFY_EXPORT_TTL_HOURS × 3 600 000. */
  ttlMs: number
  patientRecords: PatientRecordStore
  audit: AuditLog
  log: Logger
  /** Readings read per query (the cursor's page). Default 1000. */
  batchSize?: number
  now?: () => Date
}

const keyLocation = (jobId: string) => ({ table: 'research_exports', column: 'key_enc', rowId: jobId })

function toExport (row: Record<string, unknown>): ResearchExport {
  const iso = (v: unknown): string | null => v === null || v === undefined ? null : (v as Date).toISOString()
  return {
    jobId: row.job_id as string,
    owner: row.created_by as string,
    cohort: row.cohort as Cohort,
    subjects: (row.subjects as number | null) ?? null,
    files: (row.files as ExportFile[] | null) ?? null,
    expiresAt: iso(row.expires_at),
    filesDeletedAt: iso(row.files_deleted_at)
  }
}

/** Lines to one file, with backpressure, counting bytes and records and hashing as it goes. */
class LineFile {
  private readonly stream: WriteStream
  private readonly hash = createHash('sha256')
  bytes = 0
  records = 0
  constructor (readonly name: string, dir: string) {
    this.stream = createWriteStream(path.join(dir, name), { flags: 'wx', mode: 0o600 })
  }

  async line (value: unknown): Promise<void> {
    const text = JSON.stringify(value) + '\n'
    this.hash.update(text)
    this.bytes += Buffer.byteLength(text)
    this.records++
    if (!this.stream.write(text)) await new Promise<void>((resolve) => this.stream.once('drain', resolve))
  }

  async close (): Promise<ExportFile> {
    await new Promise<void>((resolve, reject) => this.stream.end((err?: Error | null) => { if (err != null) reject(err); else resolve() }))
    return { name: this.name, bytes: this.bytes, sha256: this.hash.digest('hex'), records: this.records }
  }

  destroy (): void { this.stream.destroy() }
}

/**
 * De-identified datasets for ML scientists (docs/research-export.md): the job handler that
 * writes them and the store the API reads them through.
 */
export function createResearchExports (options: ResearchExportsOptions) {
  const { pool, keyring, log } = options
  const now = options.now ?? (() => new Date())
  const batchSize = options.batchSize ?? 1000
  const dirOf = (jobId: string): string => path.join(options.dir, jobId)

  async function deleteFiles (jobId: string, client: pg.ClientBase | pg.Pool = pool): Promise<void> {
    await fs.rm(dirOf(jobId), { recursive: true, force: true })
    await client.query('UPDATE research_exports SET files_deleted_at = $2 WHERE job_id = $1 AND files_deleted_at IS NULL', [jobId, now()])
  }

  /** Patients in the cohort: a reading of one of its metrics in the period, and the rule and band if given. */
  async function cohortPatients (cohort: Cohort): Promise<string[]> {
    const { rows } = await pool.query(
      `SELECT DISTINCT r.patient_id FROM readings r
       WHERE r.metric = ANY($1::text[]) AND r.ts >= $2 AND r.ts < $3
         AND ($4::text IS NULL OR EXISTS (SELECT 1 FROM alerts a WHERE a.patient_id = r.patient_id AND a.rule_id = $4 AND a.opened_at >= $2 AND a.opened_at < $3))
         AND ($5::real IS NULL OR EXISTS (SELECT 1 FROM readings n WHERE n.patient_id = r.patient_id AND n.metric = 'news2_score' AND n.value >= $5 AND n.ts >= $2 AND n.ts < $3))
       ORDER BY r.patient_id`,
      [cohort.metrics, cohort.from, cohort.to, cohort.alertRule ?? null, cohort.news2Band === undefined ? null : news2BandMinimum[cohort.news2Band]])
    return rows.map((r) => r.patient_id as string)
  }

  const handler: JobHandler = {
    async run (job, { signal, reportProgress }) {
      const { rows: [row] } = await pool.query('SELECT * FROM research_exports WHERE job_id = $1', [job.id])
      if (row === undefined) throw new PermanentJobError('the export has no row')
      const cohort = row.cohort as Cohort
      const key = Buffer.from(decryptField(keyring, row.key_enc as string, keyLocation(job.id)), 'base64')
      const dir = dirOf(job.id)
      await fs.rm(dir, { recursive: true, force: true })
      await fs.mkdir(dir, { recursive: true, mode: 0o700 })
      const stopIfAsked = (): void => { if (signal.aborted) throw new Error('export stopped') }

      const patientIds = await cohortPatients(cohort)
      const periodStart = new Date(cohort.from)
      // Subjects: pseudonym, date shift, quasi-identifiers from the record (decrypted here, never written).
      const subjects: Array<{ patientId: string, subject: string, shiftMs: number, ageGroup: string | null, sex: string | null }> = []
      for (const patientId of patientIds) {
        stopIfAsked()
        const stored = await options.patientRecords.get(patientId)
        const dob = stored?.record.dateOfBirth
        const gender = stored?.record.medicalHistory?.gender
        subjects.push({
          patientId,
          subject: pseudonym(key, patientId),
          shiftMs: dateShiftMs(key, patientId),
          ageGroup: ageGroup(typeof dob === 'string' ? ageOn(dob, periodStart) : null),
          sex: gender === 'female' || gender === 'male' ? gender : null
        })
      }
      const { subjects: kept, suppression } = suppressSmallCells(subjects, options.k)
      const bySubject = new Map(kept.map((s) => [s.patientId, s]))

      const metrics = [...new Set([...cohort.metrics, 'news2_score'])]
      const { rows: [{ n: total }] } = await pool.query(
        'SELECT count(*)::int AS n FROM readings WHERE patient_id = ANY($1::uuid[]) AND metric = ANY($2::text[]) AND ts >= $3 AND ts < $4',
        [patientIds, metrics, cohort.from, cohort.to])

      const files = {
        subjects: new LineFile('subjects.ndjson', dir),
        readings: new LineFile('readings.ndjson', dir),
        news2: new LineFile('news2.ndjson', dir),
        alerts: new LineFile('alert-events.ndjson', dir)
      }
      try {
        for (const s of kept) await files.subjects.line({ subject: s.subject, ageGroup: s.ageGroup, sex: s.sex })

        // Readings: a keyset cursor over (patient, ts, metric, device), one page in memory at a time.
        let after: [string, Date, string, string] | null = null
        let done = 0
        for (;;) {
          stopIfAsked()
          const { rows: page } = await pool.query<{ patient_id: string, ts: Date, metric: string, device_id: string, value: number, unit: string }>(
            `SELECT patient_id, ts, metric, device_id, value, unit FROM readings
             WHERE patient_id = ANY($1::uuid[]) AND metric = ANY($2::text[]) AND ts >= $3 AND ts < $4
               AND ($5::uuid IS NULL OR (patient_id, ts, metric, device_id) > ($5::uuid, $6::timestamptz, $7::text, $8::uuid))
             ORDER BY patient_id, ts, metric, device_id LIMIT $9`,
            [patientIds, metrics, cohort.from, cohort.to, after?.[0] ?? null, after?.[1] ?? null, after?.[2] ?? null, after?.[3] ?? null, batchSize])
          for (const r of page) {
            const s = bySubject.get(r.patient_id as string)!
            const t = shiftDate(r.ts as Date, s.shiftMs)
            if (r.metric === 'news2_score') await files.news2.line({ subject: s.subject, t, total: r.value })
            if (cohort.metrics.includes(r.metric as string)) {
              await files.readings.line({ subject: s.subject, t, metric: r.metric, loinc: lookupMetric(r.metric as string)?.loinc ?? null, value: r.value, unit: r.unit })
            }
          }
          done += page.length
          reportProgress(total === 0 ? 0.9 : 0.9 * done / total)
          if (page.length < batchSize) break
          const last: { patient_id: string, ts: Date, metric: string, device_id: string } = page[page.length - 1]!
          after = [last.patient_id, last.ts, last.metric, last.device_id]
        }

        // Alert events: rule, kind, severity, event type and shifted time; no ids, actors or text.
        const alertNumbers = new Map<string, number>()
        let afterEvent = 0
        for (;;) {
          stopIfAsked()
          const { rows: page } = await pool.query(
            `SELECT e.id, e.alert_id, e.patient_id, e.type, e.at, a.rule_id, a.kind, a.severity FROM alert_events e JOIN alerts a ON a.id = e.alert_id
             WHERE e.patient_id = ANY($1::uuid[]) AND e.at >= $2 AND e.at < $3 AND e.id > $4 ORDER BY e.id LIMIT $5`,
            [patientIds, cohort.from, cohort.to, afterEvent, batchSize])
          for (const e of page) {
            const s = bySubject.get(e.patient_id as string)!
            if (!alertNumbers.has(e.alert_id as string)) alertNumbers.set(e.alert_id as string, alertNumbers.size + 1)
            await files.alerts.line({ subject: s.subject, alert: alertNumbers.get(e.alert_id as string), t: shiftDate(e.at as Date, s.shiftMs), event: e.type, rule: e.rule_id, kind: e.kind, severity: e.severity })
          }
          if (page.length < batchSize) break
          afterEvent = Number(page[page.length - 1]!.id)
        }
      } catch (err) {
        for (const f of Object.values(files)) f.destroy()
        throw err
      }
      const written: ExportFile[] = []
      for (const f of Object.values(files)) written.push(await f.close())
      reportProgress(0.95)

      const manifest = manifestOf({ jobId: job.id, cohort, subjects: kept.length, files: written, suppression, k: options.k, createdAt: now() })
      const manifestText = JSON.stringify(manifest, null, 2) + '\n'
      await fs.writeFile(path.join(dir, 'manifest.json'), manifestText, { flag: 'wx', mode: 0o600 })
      const allFiles: ExportFile[] = [{ name: 'manifest.json', bytes: Buffer.byteLength(manifestText), sha256: createHash('sha256').update(manifestText).digest('hex'), records: 1 }, ...written]
      const expiresAt = new Date(now().getTime() + options.ttlMs)
      const result: Json = { subjects: kept.length, readings: files.readings.records, alertEvents: files.alerts.records, suppressedSubjects: suppression.suppressedSubjects, expiresAt: expiresAt.toISOString() }
      // Recorded before the completion's transaction, not in it: the audit log writes through the
      // pool, and embedded PGlite has one connection (a write inside the transaction would wait forever).
      await options.audit.record({
        actorId: (row.actor_id as string | null) ?? (row.created_by as string), actorKind: row.actor_id === null ? 'token' : 'user', role: 'ml-scientist',
        patientId: null, action: 'export:deidentified', fields: [], outcome: 'allowed',
        details: { jobId: job.id, stage: 'completed', cohort: cohort as unknown as Record<string, unknown>, subjects: kept.length, suppressedSubjects: suppression.suppressedSubjects }
      })
      return {
        result,
        apply: async (client) => {
          await client.query('UPDATE research_exports SET subjects = $2, files = $3, expires_at = $4 WHERE job_id = $1',
            [job.id, kept.length, JSON.stringify(allFiles), expiresAt])
        }
      }
    },
    async onFinal (job, client) {
      await deleteFiles(job.id, client)
    }
  }

  return {
    handler,

    /** Records a new export of `jobId` (in the transaction that enqueued its job): a fresh key, encrypted. */
    async register (client: pg.ClientBase, jobId: string, owner: string, actorId: string | null, cohort: Cohort): Promise<void> {
      const keyEnc = encryptField(keyring, randomBytes(32).toString('base64'), keyLocation(jobId))
      await client.query('INSERT INTO research_exports (job_id, created_by, actor_id, cohort, key_enc, key_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)',
        [jobId, owner, actorId, JSON.stringify(cohort), keyEnc, envelopeKeyId(keyEnc), now()])
    },

    async get (jobId: string): Promise<ResearchExport | null> {
      const { rows } = await pool.query('SELECT * FROM research_exports WHERE job_id = $1', [jobId])
      return rows[0] === undefined ? null : toExport(rows[0])
    },

    /** The path of one file of a finished, unexpired export, or null. */
    filePath (exp: ResearchExport, name: string): string | null {
      if (exp.files === null || exp.filesDeletedAt !== null) return null
      if (exp.expiresAt !== null && new Date(exp.expiresAt) <= now()) return null
      if (!exp.files.some((f) => f.name === name)) return null
      return path.join(dirOf(exp.jobId), name)
    },

    deleteFiles: async (jobId: string): Promise<void> => { await deleteFiles(jobId) },

    /**
     * Deletes the files of every expired export, and of exports whose job ended without success
     * while no handler ran (a process died on its only attempt); returns how many.
     */
    async sweepExpired (): Promise<number> {
      const { rows } = await pool.query(
        `SELECT r.job_id FROM research_exports r JOIN jobs j ON j.id = r.job_id
         WHERE r.files_deleted_at IS NULL AND (r.expires_at <= $1 OR j.state IN ('failed', 'cancelled'))`, [now()])
      for (const r of rows) await deleteFiles(r.job_id as string)
      if (rows.length > 0) log.info({ count: rows.length }, 'expired research exports deleted')
      return rows.length
    },

    /** Checks a cohort before it is queued: known metrics, a period that runs forward. */
    validate (cohort: Cohort): string | null {
      const unknown = cohort.metrics.filter((m) => lookupMetric(m) === undefined)
      if (unknown.length > 0) return `unknown metrics: ${unknown.join(', ')}`
      if (!(new Date(cohort.from) < new Date(cohort.to))) return 'from must be before to'
      return null
    }
  }
}

export type ResearchExports = ReturnType<typeof createResearchExports>

function manifestOf (m: { jobId: string, cohort: Cohort, subjects: number, files: ExportFile[], suppression: Suppression, k: number, createdAt: Date }) {
  return {
    format: 'vigil-deidentified/1',
    export: m.jobId,
    // The real creation day only (not a subject's date): the dataset's own provenance.
    createdOn: m.createdAt.toISOString().slice(0, 10),
    standard: 'HIPAA Safe Harbor, 45 CFR §164.514(b)(2)',
    cohort: { metrics: m.cohort.metrics, alertRule: m.cohort.alertRule ?? null, news2Band: m.cohort.news2Band ?? null, period: 'as requested; dates in the files are shifted per subject' },
    subjects: m.subjects,
    transformations,
    suppression: { ...m.suppression, quasiIdentifiers: ['ageGroup', 'sex'] },
    files: m.files
  }
}

/** The job's view for the export routes. */
export function exportView (job: Job, exp: ResearchExport) {
  return {
    id: job.id,
    state: job.state,
    progress: job.progress,
    error: job.error,
    cohort: exp.cohort,
    subjects: exp.subjects,
    files: exp.filesDeletedAt !== null ? [] : (exp.files ?? []).map((f) => ({ name: f.name, bytes: f.bytes, sha256: f.sha256, url: `/v1/exports/deidentified/${job.id}/files/${f.name}` })),
    expiresAt: exp.expiresAt,
    deleted: exp.filesDeletedAt !== null,
    createdAt: job.createdAt,
    finishedAt: job.finishedAt
  }
}
