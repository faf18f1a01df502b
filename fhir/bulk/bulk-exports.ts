import { randomBytes } from 'node:crypto'
import fs from 'node:fs/promises'
import path from 'node:path'
import type { Readable } from 'node:stream'
import type pg from 'pg'
import type { Logger } from 'pino'
import type { AuditLog } from '../../access/audit-log.ts'
import { decryptField, encryptField, envelopeKeyId, type Keyring } from '../../crypto/field-encryption.ts'
import type { DeviceRegistry } from '../../devices/device-registry.ts'
import type { Json } from '../../jobs/job-queue.ts'
import { PermanentJobError, type JobHandler } from '../../jobs/job-runner.ts'
import type { PatientRecordStore } from '../../patients/patient-records.ts'
import type { PatientStore } from '../../patients/patients.ts'
import type { ReadingPosition, ReadingStore } from '../../readings/reading-store.ts'
import { createNews2Breakdowns, createReadingGrouper, deviceOf, flagOf, observationOf, operationOutcomeOf, patientOf } from '../resources.ts'
import type { News2Breakdown, ReadingGroup } from '../resources.ts'
import type { Spo2Scale } from '../../alerts/engine/news2.ts'
import { EncryptedNdjsonWriter, openDecrypted, type FileBinding } from './encrypted-ndjson.ts'

export const BULK_EXPORT_JOB = 'fhir-bulk-export'

/** The resource types an export may hold (FHIR Bulk Data v2 `_type`), in the order they are written. */
export const bulkTypes = ['Patient', 'Device', 'Observation', 'Flag'] as const
export type BulkType = typeof bulkTypes[number]

/** What a kick-off asked for. No PHI: ids, type names, an instant. */
export interface BulkRequest {
  level: 'system' | 'patient' | 'group'
  /** The Group id (a clinician's user id: their care team) for a group-level export. */
  group: string | null
  types: BulkType[]
  /** `_since` (ISO instant) or null. */
  since: string | null
  /** The caller had phi:read: Patient resources carry the record's fields. */
  phi: boolean
  /** The kick-off request's path and query (the manifest's `request`). */
  request: string
}

export interface BulkOutput { type: BulkType | 'OperationOutcome', file: string, count: number, bytes: number }

export interface BulkExport {
  jobId: string
  owner: string
  actorId: string | null
  request: BulkRequest
  transactionTime: string
  progress: string | null
  output: BulkOutput[] | null
  expiresAt: string | null
  filesDeletedAt: string | null
  deletedAt: string | null
}

export interface BulkExportsOptions {
  pool: pg.Pool
  keyring: Keyring
  readings: ReadingStore
  patients: PatientStore
  devices: DeviceRegistry
  patientRecords?: PatientRecordStore
  audit: AuditLog
  /** Where the files are written: `<dir>/<job id>/`. */
  dir: string
  /** BULK_EXPORT_TTL_HOURS × 3 600 000. */
  ttlMs: number
  log: Logger
  /**
   * The NEWS2 rule's freshness (null without a news2 rule) and the patients' SpO2 scales: NEWS2
   * Observations then carry their sub-scores as components. Without it they carry the total only.
   */
  news2?: { freshnessMs: () => number | null, spo2Scales: (patientIds: readonly string[]) => Promise<Map<string, Spo2Scale>> }
  /** Readings per store query (one chunk). Default 5000. */
  chunkSize?: number
  now?: () => Date
}

const keyLocation = (jobId: string) => ({ table: 'bulk_exports', column: 'key_enc', rowId: jobId })
const iso = (v: unknown): string | null => v === null || v === undefined ? null : (v as Date).toISOString()

function toExport (row: Record<string, unknown>): BulkExport {
  return {
    jobId: row.job_id as string,
    owner: row.owner as string,
    actorId: (row.actor_id as string | null) ?? null,
    request: row.request as BulkRequest,
    transactionTime: iso(row.transaction_time)!,
    progress: (row.progress as string | null) ?? null,
    output: (row.output as BulkOutput[] | null) ?? null,
    expiresAt: iso(row.expires_at),
    filesDeletedAt: iso(row.files_deleted_at),
    deletedAt: iso(row.deleted_at)
  }
}

/** Thrown inside the handler when its job's cancel was seen at a chunk boundary. */
class ExportStopped extends Error {}

const PAGE = 1000

/**
 * FHIR Bulk Data exports (docs/fhir.md#bulk-export): the `fhir-bulk-export` job handler, which
 * streams each type into one encrypted NDJSON file in constant memory, and the store the
 * $export routes read.
 */
export function createBulkExports (options: BulkExportsOptions) {
  const { pool, keyring, readings, log } = options
  const now = options.now ?? (() => new Date())
  const chunkSize = options.chunkSize ?? 5000
  const dirOf = (jobId: string): string => path.join(options.dir, jobId)
  const keyOf = (row: { job_id: string, key_enc: string }): Buffer =>
    Buffer.from(decryptField(keyring, row.key_enc, keyLocation(row.job_id)), 'base64')

  async function deleteFiles (jobId: string, client: pg.ClientBase | pg.Pool = pool): Promise<void> {
    await fs.rm(dirOf(jobId), { recursive: true, force: true })
    await client.query('UPDATE bulk_exports SET files_deleted_at = $2 WHERE job_id = $1 AND files_deleted_at IS NULL', [jobId, now()])
  }

  /** The export's patients a page at a time (ids in order): its list, or every patient. */
  async function * patientPages (patientIds: string[] | null): AsyncGenerator<string[]> {
    if (patientIds !== null) {
      for (let i = 0; i < patientIds.length; i += PAGE) yield patientIds.slice(i, i + PAGE)
      return
    }
    let after: string | null = null
    for (;;) {
      const { rows }: { rows: Array<{ id: string }> } = await pool.query('SELECT id FROM patients WHERE ($1::uuid IS NULL OR id > $1::uuid) ORDER BY id LIMIT $2', [after, PAGE])
      if (rows.length === 0) return
      yield rows.map((r) => r.id)
      if (rows.length < PAGE) return
      after = rows[rows.length - 1]!.id
    }
  }

  const handler: JobHandler = {
    async run (job, { signal, reportProgress }) {
      const { rows: [row] } = await pool.query('SELECT * FROM bulk_exports WHERE job_id = $1', [job.id])
      if (row === undefined) throw new PermanentJobError('the export has no row')
      const exp = toExport(row)
      const key = keyOf(row)
      const request = exp.request
      const patientIds = (row.patient_ids as string[] | null) ?? null
      const since = request.since === null ? null : new Date(request.since)
      const dir = dirOf(job.id)
      await fs.rm(dir, { recursive: true, force: true })
      await fs.mkdir(dir, { recursive: true, mode: 0o700 })

      let lastWrite = 0
      /**
       * Between chunks: records progress (X-Progress) and stops when the job's cancel was asked.
       * The check reads the job row itself, so a DELETE stops the export at its next chunk.
       */
      async function checkpoint (progress: string, fraction: number, force = false): Promise<void> {
        reportProgress(fraction)
        if (!signal.aborted && !force && Date.now() - lastWrite < 250) return
        lastWrite = Date.now()
        const { rows: [state] } = await pool.query(
          'UPDATE bulk_exports SET progress = $2 WHERE job_id = $1 RETURNING (SELECT cancel_requested FROM jobs WHERE id = $1) AS cancel', [job.id, progress])
        if (signal.aborted || state?.cancel === true) {
          // The runner learns of the cancel at its next heartbeat and marks the job cancelled.
          if (!signal.aborted) await new Promise<void>((resolve) => { signal.addEventListener('abort', () => resolve(), { once: true }) })
          throw new ExportStopped('export stopped')
        }
      }

      const files: Array<{ type: BulkOutput['type'], writer: EncryptedNdjsonWriter }> = []
      const fileFor = (type: BulkOutput['type']): EncryptedNdjsonWriter => {
        const name = `${type}.ndjson`
        const writer = new EncryptedNdjsonWriter(path.join(dir, name), key, { exportId: job.id, fileName: name })
        files.push({ type, writer })
        return writer
      }
      let errors: EncryptedNdjsonWriter | null = null
      const problem = async (code: string, message: string): Promise<void> => {
        errors ??= fileFor('OperationOutcome')
        await errors.line(operationOutcomeOf(422, { code, message }))
      }
      const typeShare = 1 / request.types.length

      try {
        for (const [typeIndex, type] of request.types.entries()) {
          const base = typeIndex * typeShare
          const out = fileFor(type)
          await checkpoint(`${type} 0%`, base, true)
          if (type === 'Patient') {
            for await (const ids of patientPages(patientIds)) {
              for (const p of await options.patients.list({ limit: ids.length, ids })) {
                const stored = request.phi && options.patientRecords !== undefined ? await options.patientRecords.get(p.id) : null
                await out.line(patientOf(p, stored?.record ?? null))
              }
              await checkpoint(`Patient: ${out.records} written`, base)
            }
          } else if (type === 'Device') {
            const keep = (d: { updatedAt: string }) => since === null || new Date(d.updatedAt) >= since
            if (patientIds === null) {
              let afterId: string | undefined
              for (;;) {
                const page = await options.devices.list({ limit: PAGE, afterId })
                for (const d of page) if (keep(d)) await out.line(deviceOf(d))
                await checkpoint(`Device: ${out.records} written`, base)
                if (page.length < PAGE) break
                afterId = page[page.length - 1]!.id
              }
            } else {
              for await (const ids of patientPages(patientIds)) {
                for (const d of await options.devices.currentForPatients(ids)) if (keep(d)) await out.line(deviceOf(d))
                await checkpoint(`Device: ${out.records} written`, base)
              }
            }
          } else if (type === 'Observation') {
            await exportObservations(out, base)
          } else {
            let afterSeq = '0'
            for (;;) {
              const { rows: page } = await pool.query(
                `SELECT id, seq, patient_id, rule_id, severity, status, summary, opened_at, resolved_at FROM alerts
                 WHERE ($1::uuid[] IS NULL OR patient_id = ANY($1::uuid[])) AND ($2::timestamptz IS NULL OR last_changed_at >= $2)
                   AND seq > $3 ORDER BY seq LIMIT $4`,
                [patientIds, since, afterSeq, PAGE])
              for (const a of page) {
                await out.line(flagOf({
                  id: a.id, patientId: a.patient_id, ruleId: a.rule_id, severity: a.severity, status: a.status, summary: a.summary,
                  openedAt: iso(a.opened_at)!, resolvedAt: iso(a.resolved_at)
                }))
              }
              await checkpoint(`Flag: ${out.records} written`, base)
              if (page.length < PAGE) break
              afterSeq = String(page[page.length - 1]!.seq)
            }
          }
        }
      } catch (err) {
        for (const f of files) f.writer.destroy()
        throw err
      }

      /** Readings, a patient at a time, a chunk at a time, through the streaming BP-panel grouper. */
      async function exportObservations (out: EncryptedNdjsonWriter, base: number): Promise<void> {
        // The total for X-Progress: one count when readings are in Postgres; by patients on InfluxDB.
        let total: number | null = null
        let patientTotal = 0
        if (readings.kind === 'postgres') {
          const { rows: [c] } = await pool.query(
            'SELECT count(*)::bigint AS n FROM readings WHERE ($1::uuid[] IS NULL OR patient_id = ANY($1::uuid[])) AND ($2::timestamptz IS NULL OR ts >= $2)',
            [patientIds, since])
          total = Number(c.n)
        } else {
          patientTotal = patientIds?.length ?? (await pool.query('SELECT count(*)::int AS n FROM patients')).rows[0].n as number
        }
        let done = 0
        let patientsDone = 0
        const progress = (): [string, number] => {
          const share = total !== null ? (total === 0 ? 1 : done / total) : (patientTotal === 0 ? 1 : patientsDone / patientTotal)
          const pct = Math.floor(share * 100)
          return [total !== null
            ? `Observation ${pct}%: ${done} of ${total}`
            : `Observation ${pct}%: ${patientsDone} of ${patientTotal} patients`, base + share * typeShare]
        }
        const write = async (group: ReadingGroup, news2?: News2Breakdown | null): Promise<void> => {
          let observation
          try {
            observation = observationOf(group, news2)
          } catch (err) {
            // A metric without a FHIR mapping: named in the manifest's error file, never its value.
            if (err instanceof RangeError) { await problem('VIGIL_ERR_VALIDATION', err.message); return }
            throw err
          }
          await out.line(observation)
        }
        for await (const ids of patientPages(patientIds)) {
          for (const patientId of ids) {
            const grouper = createReadingGrouper()
            // NEWS2 totals get their sub-scores as components, as in the search API, from the
            // readings that follow them in this newest-first stream (fhir/resources.ts).
            const freshnessMs = options.news2?.freshnessMs() ?? null
            const breakdowns = freshnessMs === null ? null : createNews2Breakdowns(freshnessMs, (await options.news2!.spo2Scales([patientId])).get(patientId) ?? 1)
            let after: ReadingPosition | undefined
            for (;;) {
              const chunk = await readings.query({ patientId, from: since?.getTime(), limit: chunkSize, after })
              for (const r of chunk) {
                if (breakdowns !== null) {
                  for (const [score, news2] of breakdowns.push(r)) await write([score], news2)
                  if (r.metric === 'news2_score') continue
                }
                for (const g of grouper.push(r)) await write(g)
              }
              done += chunk.length
              await checkpoint(...progress())
              if (chunk.length < chunkSize) break
              const last = chunk[chunk.length - 1]!
              after = { ts: last.ts, deviceId: last.deviceId, metric: last.metric }
            }
            for (const g of grouper.flush()) await write(g)
            for (const [score, news2] of breakdowns?.flush() ?? []) await write([score], news2)
            patientsDone++
          }
        }
      }

      const output: BulkOutput[] = []
      for (const f of files) {
        await f.writer.close()
        const file = `${f.type}.ndjson`
        if (f.writer.records === 0) await fs.rm(path.join(dir, file), { force: true })
        else output.push({ type: f.type, file, count: f.writer.records, bytes: f.writer.bytes })
      }
      await checkpoint('done', 1, true)
      const expiresAt = new Date(now().getTime() + options.ttlMs)
      const result: Json = { files: output.length, resources: output.reduce((n, o) => n + o.count, 0), expiresAt: expiresAt.toISOString() }
      // Recorded before the completion's transaction, not in it: the audit log writes through the
      // pool, and embedded PGlite has one connection (a write inside the transaction would wait forever).
      await options.audit.record({
        actorId: exp.actorId, actorKind: exp.owner.startsWith('user:') ? 'user' : 'token', role: null,
        patientId: null, action: 'export:fhir-bulk', fields: request.phi ? ['displayName', 'record'] : ['displayName'], outcome: 'allowed',
        details: { jobId: job.id, stage: 'completed', files: output.map((o) => ({ type: o.type, count: o.count })) }
      })
      return {
        result,
        apply: async (client) => {
          await client.query('UPDATE bulk_exports SET output = $2, expires_at = $3 WHERE job_id = $1', [job.id, JSON.stringify(output), expiresAt])
        }
      }
    },
    async onFinal (job, client) {
      await deleteFiles(job.id, client)
    }
  }

  return {
    handler,

    /** Records a new export of `jobId` in the transaction that enqueued its job: a fresh data key, encrypted. */
    async register (client: pg.ClientBase, jobId: string, owner: string, actorId: string | null, request: BulkRequest, patientIds: readonly string[] | null): Promise<void> {
      const keyEnc = encryptField(keyring, randomBytes(32).toString('base64'), keyLocation(jobId))
      await client.query(
        `INSERT INTO bulk_exports (job_id, owner, actor_id, request, patient_ids, key_enc, key_id, transaction_time, progress, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'queued', $8)`,
        [jobId, owner, actorId, JSON.stringify(request), patientIds === null ? null : [...patientIds], keyEnc, envelopeKeyId(keyEnc), now()])
    },

    async get (jobId: string): Promise<BulkExport | null> {
      const { rows } = await pool.query('SELECT * FROM bulk_exports WHERE job_id = $1', [jobId])
      return rows[0] === undefined ? null : toExport(rows[0])
    },

    /** True while the files of a finished export may be served (not expired, not deleted). */
    available (exp: BulkExport): boolean {
      if (exp.output === null || exp.filesDeletedAt !== null || exp.deletedAt !== null) return false
      return exp.expiresAt === null || new Date(exp.expiresAt) > now()
    },

    /** The decrypted NDJSON of one file of a finished, unexpired export, or null. */
    async openFile (exp: BulkExport, file: string): Promise<Readable | null> {
      if (!this.available(exp) || !exp.output!.some((o) => o.file === file)) return null
      const { rows: [row] } = await pool.query('SELECT job_id, key_enc FROM bulk_exports WHERE job_id = $1', [exp.jobId])
      const binding: FileBinding = { exportId: exp.jobId, fileName: file }
      return openDecrypted(path.join(dirOf(exp.jobId), file), keyOf(row), binding)
    },

    /** DELETE on the status URL: the export is gone for its owner; files deleted now (or by the job's end). */
    async markDeleted (jobId: string, finished: boolean): Promise<void> {
      await pool.query('UPDATE bulk_exports SET deleted_at = $2 WHERE job_id = $1 AND deleted_at IS NULL', [jobId, now()])
      if (finished) await deleteFiles(jobId)
    },

    /**
     * Housekeeping: deletes the files of expired exports, of deleted ones, and of exports whose
     * job ended without success while no handler ran; returns how many.
     */
    async sweepExpired (): Promise<number> {
      const { rows } = await pool.query(
        `SELECT b.job_id FROM bulk_exports b JOIN jobs j ON j.id = b.job_id
         WHERE b.files_deleted_at IS NULL AND j.state IN ('succeeded', 'failed', 'cancelled')
           AND (b.expires_at <= $1 OR b.deleted_at IS NOT NULL OR j.state IN ('failed', 'cancelled'))`, [now()])
      for (const r of rows) await deleteFiles(r.job_id as string)
      if (rows.length > 0) log.info({ count: rows.length }, 'expired FHIR bulk exports deleted')
      return rows.length
    },

    /** Where an export's files live (tests look at the bytes at rest). */
    dirOf
  }
}

export type BulkExports = ReturnType<typeof createBulkExports>
