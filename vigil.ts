import fs from 'node:fs/promises'
import type http from 'node:http'
import https from 'node:https'
import path from 'node:path'
import cron from 'node-cron'
import type { Logger } from 'pino'
import { startAlerting } from './alerts/lifecycle/alerting.ts'
import { createMqttAlertRelay } from './alerts/lifecycle/mqtt-relay.ts'
import type { Schedule } from './alerts/contract.ts'
import { createAccess } from './access/access.ts'
import { PASSWORD_SCRYPT } from './access/passwords.ts'
import { startAlertEngine, type AlertEngine } from './alerts/engine/alert-engine.ts'
import { rulesSourceOf, startRulesFile } from './alerts/engine/rules-file.ts'
import { createRuleStateStore } from './alerts/engine/rule-state-store.ts'
import { buildApi } from './api/app.ts'
import { lazyWebApp } from './web/build.ts'
import { brokerLimitsFrom, createBroker } from './broker/broker.ts'
import { proxyTrustList } from './broker/proxy-protocol.ts'
import type { Config, TlsFiles } from './config/config.ts'
import { listen } from './net/listen.ts'
import { startIngest } from './ingest/ingest.ts'
import { deviceSessionHooks } from './ingest/decode-status.ts'
import { startJobs } from './jobs/start-jobs.ts'
import { createResearchExports, DEIDENTIFIED_EXPORT_JOB } from './research/exports.ts'
import { BULK_EXPORT_JOB, createBulkExports } from './fhir/bulk/bulk-exports.ts'
import { parseEngineSpec } from './jobs/transcription/engine.ts'
import { openSpool, readAfterDelivery, type DeliveryOptions, type Spool } from './readings/spool.ts'
import { createMetrics } from './observability/metrics.ts'
import { createApiTokenStore } from './access/api-tokens.ts'
import { lockDataDir } from './store/data-dir-lock.ts'
import { makePrivate } from './store/data-dir-permissions.ts'
import { openDatabase } from './store/database.ts'
import { watchDiskReserve } from './store/disk-reserve.ts'
import { createDeviceRegistry } from './devices/device-registry.ts'
import { openEmbeddedKeyring } from './crypto/embedded-keyring.ts'
import { createInfluxReadingStore } from './readings/influx-store.ts'
import { createPatientRecordStore } from './patients/patient-records.ts'
import type { ReencryptionProgress } from './patients/patient-records.ts'
import { createPatientStore } from './patients/patients.ts'
import { createPostgresReadingStore } from './readings/postgres-store.ts'
import type { StoredReading } from './readings/reading.ts'
import { timedReads, type ReadingStore } from './readings/reading-store.ts'
import type { Database } from './store/database.ts'
import { startReencryption, type Reencryption } from './crypto/reencryption.ts'
import { startLeadership, type LeaderTask } from './store/leadership.ts'
import { createRejectionLog } from './devices/rejections.ts'
import type { Cluster } from './cluster/cluster.ts'
import type { AlertEventPeers } from './alerts/lifecycle/alerting.ts'

export interface Vigil {
  readonly httpPort: number
  /** Whether the API speaks HTTPS (HTTP_TLS_CERT_FILE and HTTP_TLS_KEY_FILE set). */
  readonly httpTls: boolean
  readonly mqttPort: number
  /** MQTT over TLS, when MQTT_TLS_PORT is set. */
  readonly mqttTlsPort: number | null
  /** MQTT over WebSocket (path /mqtt), when MQTT_WS_PORT is set. */
  readonly mqttWsPort: number | null
  readonly readings: ReadingStore
  /** The start-up re-encryption of patient records under the active key; null when there was nothing to do. */
  readonly reencryption: Promise<ReencryptionProgress | null>
  close (): Promise<void>
}

/**
 * The composition root: opens the databases, wires the services together, starts the
 * listeners, and closes everything in reverse order. main.ts and the end-to-end tests call it.
 */
export async function startVigil (config: Config, log: Logger): Promise<Vigil> {
  const closers: Array<() => Promise<void>> = []
  let closing = false
  const close = async (): Promise<void> => {
    for (const c of closers.reverse()) await c()
    closers.length = 0
  }
  try {
    // PHI lives under VIGIL_DATA_DIR (the embedded database, the spool, the keyring): files
    // created from here on are private to Vigil's user, and anything left readable by others
    // (an older Vigil, PGlite's own 0666 files, a copy) is fixed and reported (docs/security.md).
    process.umask(0o077)
    await fs.mkdir(config.dataDir, { recursive: true, mode: 0o700 })
    const loose = await makePrivate(config.dataDir)
    if (loose.length > 0) {
      log.warn({ dataDir: config.dataDir, count: loose.length, examples: loose.slice(0, 5) }, 'VIGIL_DATA_DIR held files other users could read or write: made them private (directories 0700, files 0600)')
    }
    closers.push(await lockDataDir(config.dataDir))
    const metrics = createMetrics()
    // Watched before the database opens: PGlite must never be the one to find the disk full.
    const diskReserve = config.diskReserveBytes > 0 ? await watchDiskReserve({ dir: config.dataDir, reserveBytes: config.diskReserveBytes, log }) : null
    if (diskReserve !== null) {
      closers.push(() => diskReserve.close())
      metrics.watchDisk(diskReserve)
    }
    const diskLow = (): boolean => diskReserve?.low() ?? false
    const db = await openDatabase({ databaseUrl: config.databaseUrl, dataDir: config.dataDir, log })
    closers.push(() => db.close())
    // Work that runs once across several processes sharing this database (escalation, no-data
    // checks, housekeeping, re-encryption): only where this process holds the task's lock.
    // Without REDIS_URL this process takes itself for the only one on its database: leadership's
    // checks say so in the log when another Vigil is there.
    const leadership = await startLeadership({ databaseUrl: config.databaseUrl, takeoverMs: config.leaderTakeoverSeconds * 1000, log, expectAlone: config.cluster === null })
    closers.push(() => leadership.close())
    leadership.onChange((task, leading) => metrics.clusterLeader.set({ task }, leading ? 1 : 0))
    const leaderSchedule = (task: LeaderTask): Schedule => (expression, run) =>
      cron.schedule(expression, async () => { if (leadership.isLeader(task)) await run() }, { noOverlap: true })
    const patients = createPatientStore(db.pool)
    // Several processes (REDIS_URL): the cluster bus, membership and invalidations (docs/operations.md).
    // Loaded only then: ioredis and mqemitter-redis cost a single process ~150 ms of CPU and ~8 MB
    // of heap at start for nothing.
    const cluster = config.cluster === null ? null : await (await import('./cluster/cluster.ts')).startCluster({ redisUrl: config.cluster.redisUrl, prefix: config.cluster.prefix, log, registry: metrics.registry })
    if (cluster !== null) closers.push(() => cluster.close())
    const devices = createDeviceRegistry(db.pool, {
      earlyReadingToleranceMs: config.assignmentToleranceMs,
      ...(cluster === null
        ? {}
        : {
            announce: async (change) => await cluster.send(change.kind, { deviceId: change.deviceId }),
            cacheTrusted: () => cluster.up()
          })
    })
    if (cluster !== null) {
      for (const kind of ['credential-revoked', 'assignment-changed'] as const) {
        cluster.on(kind, (message) => { if (typeof message.deviceId === 'string') devices.applyChange({ kind, deviceId: message.deviceId }) })
      }
      // What was announced during an outage is lost: drop every cache it could have corrected.
      cluster.onRecovered(() => devices.forgetCached())
    }
    const tokens = createApiTokenStore(db.pool)
    const rejections = createRejectionLog(db.pool)
    const keyring = config.secretKeys?.keyring ?? await openEmbeddedKeyring(config.dataDir, log)
    if (config.secretKeys !== null) log.info({ source: config.secretKeys.source, activeKeyId: keyring.activeKeyId, keyIds: [...keyring.keys.keys()] }, 'PHI encryption keys loaded')
    const patientRecords = createPatientRecordStore(db.pool, keyring, log.child({ component: 'patient-records' }))
    const passwordCost = { ...PASSWORD_SCRYPT, N: 2 ** config.passwordScryptLog2N }
    if (passwordCost.N < PASSWORD_SCRYPT.N) log.warn({ log2N: config.passwordScryptLog2N }, 'VIGIL_PASSWORD_SCRYPT_LOG2_N is below OWASP\'s minimum (17): new password hashes are cheaper to crack')
    const access = createAccess({ pool: db.pool, patients, tokens, settings: config.access, keyring, passwordCost })

    if (config.adminToken !== null) {
      const { created, revoked } = await tokens.ensureBootstrap(config.adminToken)
      if (created) log.info('bootstrap admin token created from VIGIL_ADMIN_TOKEN')
      if (revoked > 0) log.warn({ revoked }, 'VIGIL_ADMIN_TOKEN changed: the previous bootstrap admin token is revoked')
    }
    if (await tokens.count() === 0) {
      log.warn('no API token exists: set VIGIL_ADMIN_TOKEN (at least 24 characters) and restart to create the first admin token')
    }

    // Readings: InfluxDB or PGlite behind the spool, or a Postgres server. NEWS2 scores take the
    // same way. Opened before the jobs (the FHIR bulk export reads them) and so closed after them.
    const { readings, spool, writeDerived } = await openReadings(config, db, metrics, log, closers)

    // De-identified exports for ML scientists (docs/research-export.md): a job type, files under the data dir.
    const researchExports = createResearchExports({
      pool: db.pool, keyring, patientRecords, audit: access.audit, log: log.child({ component: 'research-exports' }),
      dir: path.join(config.dataDir, 'research-exports'), k: config.deidentifyKMin, ttlMs: config.deidentifyExportTtlHours * 3_600_000
    })
    const sweepExports = setInterval(() => { researchExports.sweepExpired().catch((err: unknown) => log.warn({ err: err instanceof Error ? err.message : String(err) }, 'research export sweep failed')) }, 60_000)
    closers.push(async () => { clearInterval(sweepExports) })

    // The alert rules file (docs/alerts.md), before everything that reads it: the bulk export
    // (NEWS2 freshness), the alert lifecycle and the engine (below).
    const rulesFile = await startRulesFile({ pool: db.pool, path: config.alertRulesPath, log })
    closers.push(() => rulesFile.close())

    // FHIR Bulk Data export (docs/fhir.md#bulk-export): a job type, encrypted NDJSON under the data dir.
    const ruleStates = createRuleStateStore(db.pool, keyring)
    const bulkExports = createBulkExports({
      pool: db.pool, keyring, readings, patients, devices, patientRecords, audit: access.audit, log: log.child({ component: 'fhir-bulk-export' }),
      dir: path.join(config.dataDir, 'bulk-exports'), ttlMs: config.bulkExportTtlHours * 3_600_000,
      news2: {
        freshnessMs: () => (rulesFile.current().ruleSet.rules.find((r) => r.kind === 'news2') as { freshnessMs?: number } | undefined)?.freshnessMs ?? null,
        spo2Scales: async (ids) => await ruleStates.spo2Scales(ids)
      }
    })
    const sweepBulk = setInterval(() => { bulkExports.sweepExpired().catch((err: unknown) => log.warn({ err: err instanceof Error ? err.message : String(err) }, 'FHIR bulk export sweep failed')) }, 60_000)
    closers.push(async () => { clearInterval(sweepBulk) })

    // Background jobs (voice note transcription, de-identified and FHIR bulk exports): after the database, closed before it.
    const jobs = await startJobs({
      handlers: { [DEIDENTIFIED_EXPORT_JOB]: researchExports.handler, [BULK_EXPORT_JOB]: bulkExports.handler },
      pool: db.pool,
      workerThreads: config.workerThreads,
      engine: parseEngineSpec(config.transcriptionEngine),
      leaseMs: config.jobLeaseSeconds * 1000,
      maxAttempts: config.jobMaxAttempts,
      log,
      keyring,
      // Embedded, every job is enqueued in this process (which wakes the runner), and retries and
      // leases say when they fall due: an idle runner need not query PGlite every second. With a
      // Postgres server other processes enqueue too, so it looks every second.
      ...(config.databaseUrl === null ? { idlePollIntervalMs: 60_000 } : {})
    })
    // Records and transcripts left under a retired key are moved to the active one in the background.
    // Once per process lifetime, in the process leading it (now, or when it takes over).
    let reencryptionPass: Reencryption | null = null
    let reencryptionFinished: Promise<ReencryptionProgress | null> = Promise.resolve(null)
    const startReencryptionPass = (): void => {
      reencryptionPass ??= startReencryption(patientRecords, log, { voiceNotes: jobs.voiceNotes, clinicalText: { pool: db.pool, keyring } })
      reencryptionFinished = reencryptionPass.finished
    }
    if (leadership.isLeader('reencryption')) startReencryptionPass()
    leadership.onChange((task, leading) => { if (task === 'reencryption' && leading && !closing) startReencryptionPass() })
    closers.push(async () => { closing = true; await reencryptionPass?.close() })
    closers.push(() => jobs.close())

    // People (users, sessions, API tokens) and who may see which patient: the API, the alert
    // stream and MQTT alert subscribers all decide through these.
    const { authenticate, patientAccess } = access

    // Alerting (docs/alerts.md). The rules file (started above): the engine evaluates its rules, the
    // lifecycle escalates and notifies by its policies and webhooks, both reading it at each use
    // so hot reloads apply. The lifecycle (alerts, escalation, notifications, device presence)
    // starts next; the engine hands it condition changes and reads its presence for no_data rules.
    // Notifications reach MQTT through a relay the broker attaches to when it starts (below):
    // the broker takes readings that end as alerts, so it cannot come first.
    const alertRelay = createMqttAlertRelay()
    const alerting = await startAlerting({ pool: db.pool, keyring, log, metrics, ...rulesSourceOf(rulesFile), mqtt: alertRelay, schedule: leaderSchedule('escalation'), ...(cluster === null ? {} : { peers: alertPeers(cluster) }) })
    closers.push(() => alerting.close())
    // One process on this database (no REDIS_URL): a device still marked connected was connected to
    // this process's last run, which ended without recording it (a crash). In a cluster another
    // process may hold it, so the marks stay (docs/operations.md, limits).
    if (cluster === null) {
      const stale = await alerting.presence.disconnectAll()
      if (stale > 0) log.info({ deviceCount: stale }, 'devices still marked connected by the last run marked disconnected')
    }
    // Webhook deliveries a dead process left in the outbox are picked up by the housekeeping
    // leader (each process drains after its own events; claims are SKIP LOCKED with a lease).
    const outboxSweep = leaderSchedule('housekeeping')('*/15 * * * * *', () => alerting.notifier.drain())
    closers.push(async () => { await outboxSweep.stop() })
    const alertEngine = await startAlertEngine({
      pool: db.pool,
      keyring,
      rulesFile,
      workerThreads: config.workerThreads,
      sink: alerting.sink,
      presence: alerting.presence,
      schedule: leaderSchedule('no-data'),
      // Several processes (REDIS_URL) share this database: rule state is read and written under
      // per-patient locks, saved by every batch. One process (no REDIS_URL: docs/operations.md)
      // holds it alone, on a Postgres server as on the embedded default: in memory, saved with a
      // condition change or once a second, the spool replaying what a crash left unsaved.
      sharedState: db.kind === 'postgres' && cluster !== null,
      // Without a spool nothing replays a lost window: each batch saves its state.
      ...(spool === null ? { stateSaveIntervalMs: 0 } : {}),
      // With a spool, a batch window lost in a crash is evaluated again at the next start (below),
      // so batches gather 250 ms of readings: at 100 msg/s on a Postgres server each batch's
      // transaction cost the engine ~830 µs a reading at 50 ms and ~435 at 250 (docs/performance.md).
      // Without one, what a crash loses is the window: it stays short.
      flushIntervalMs: spool === null ? 50 : 250,
      writeDerived,
      log,
      registry: metrics.registry,
      // The spool keeps what the engine has not evaluated with its state saved (and on disk: PGlite
      // syncs lazily), and replays it at the next start (below).
      ...(spool === null ? {} : { onEvaluated: (through) => { void db.whenDurable().then(() => { spool.markEvaluated(through) }) } })
    })
    closers.push(() => alertEngine.close())

    const ingest = await startIngest({
      devices, rejections, readings, spool, metrics, log, flushToDisk: db.flushToDisk,
      onAccepted: (stored, span) => {
        alerting.presence.readingsAccepted(stored)
        alertEngine.onAccepted(stored, span)
      }
    })
    closers.push(() => ingest.close())
    if (spool !== null) await replayEvaluation(spool, alertEngine, log)

    const mqttTls = config.mqttTls
    const broker = await createBroker({
      host: config.mqttHost,
      port: config.mqttPort,
      portFallback: config.defaultPorts.mqtt,
      tls: mqttTls === null
        ? null
        : {
            port: mqttTls.port,
            cert: await fs.readFile(mqttTls.certFile),
            key: await fs.readFile(mqttTls.keyFile),
            ca: mqttTls.caFile === null ? null : await fs.readFile(mqttTls.caFile)
          },
      wsPort: config.mqttWsPort,
      proxyProtocol: config.mqttProxyProtocol ? proxyTrustList(config.trustedProxies) : null,
      limits: brokerLimitsFrom(config),
      devices,
      ingest,
      metrics,
      log,
      presence: deviceSessionHooks({ presence: alerting.presence, rejections, metrics, log }),
      diskLow,
      alertSubscribers: { authenticate, canSee: patientAccess.canSee, visiblePatients: patientAccess.visiblePatients },
      alertRelay,
      mq: cluster?.brokerEmitter() ?? null
    })
    closers.push(() => broker.close())
    // Revocations announced while Redis was down never reached this process.
    cluster?.onRecovered(() => {
      broker.recheckDevices().then((closed) => {
        if (closed > 0) log.info({ closed }, 'device sessions with credentials revoked during the Redis outage closed')
      }, () => {})
    })

    // /healthz checks Postgres and the reading store; the spool's state is in the metrics
    // (depth, oldest unwritten age), where an alert on age says more than a 503 would.
    const api = await buildApi({
      log, db, patients, devices, tokens, rejections, keptReplay: ingest, metrics, patientRecords, access, alerts: alerting.api, alertRules: alertEngine,
      // Its reads timed (vigil_reading_store_read_seconds): how much of an answer's time the store took.
      readings: timedReads(readings, (read, seconds) => { metrics.readingStoreReadSeconds.observe({ read }, seconds) }),
      jobs: jobs.queue,
      voiceNotes: jobs.voiceNotes,
      researchExports,
      bulkExports,
      spool,
      webApp: lazyWebApp(),
      voiceNoteLimits: { maxBytes: config.voiceNoteMaxBytes, maxSeconds: config.voiceNoteMaxSeconds },
      rateLimitPerMinute: config.apiRateLimitPerMinute,
      unauthenticatedRateLimitPerMinute: config.apiUnauthenticatedRateLimitPerMinute,
      trustProxy: config.trustedProxies.length === 0 ? false : config.trustedProxies,
      maxEventLoopDelayMs: config.apiMaxEventLoopDelayMs,
      ...(cluster === null ? {} : { degradingHealthChecks: { redis: () => cluster.ping() } }),
      ...(diskReserve === null ? {} : { diskReserve })
    })
    closers.push(() => api.close())
    await api.ready()
    const server: http.Server = config.httpTls === null ? api.server : await httpsServerFor(api.server, api.routing, config.httpTls)
    // Closed before the API (closers run in reverse), so no request arrives at a closing app.
    if (server !== api.server) closers.push(() => new Promise<void>((resolve) => server.close(() => resolve())))
    const httpPort = await listen(server, config.httpHost, config.httpPort, config.defaultPorts.http, 'HTTP_PORT', log)
    const scheme = config.httpTls === null ? 'http' : 'https'

    // Where a local tool (the simulator) finds the ports actually bound, when they were 0 or fell
    // back. Optional: a full disk must not stop start-up (issue 12), so failing is a warning.
    await writeListeningFile(path.join(config.dataDir, 'listening.json'), {
      pid: process.pid, httpPort, httpTls: config.httpTls !== null, mqttPort: broker.port, mqttTlsPort: broker.tlsPort, mqttWsPort: broker.wsPort
    }, log)
    log.info({
      http: `${scheme}://${config.httpHost}:${httpPort}`,
      mqtt: `mqtt://${config.mqttHost}:${broker.port}`,
      ...(broker.tlsPort === null ? {} : { mqtts: `mqtts://${config.mqttHost}:${broker.tlsPort}`, mqttMutualTls: mqttTls?.caFile !== null }),
      ...(broker.wsPort === null ? {} : { mqttWs: `ws://${config.mqttHost}:${broker.wsPort}/mqtt` }),
      docs: `${scheme}://${config.httpHost}:${httpPort}/docs`,
      database: db.kind,
      readingStore: readings.kind,
      ...(cluster === null ? {} : { cluster: { nodeId: cluster.nodeId, redisUp: cluster.up() } })
    }, 'vigil started')
    return { httpPort, httpTls: config.httpTls !== null, mqttPort: broker.port, mqttTlsPort: broker.tlsPort, mqttWsPort: broker.wsPort, readings, get reencryption () { return reencryptionFinished }, close }
  } catch (err) {
    await close().catch((closeErr) => log.error({ err: closeErr }, 'cleanup after failed start failed'))
    throw err
  }
}

/**
 * The reading store, and the spool in front of it when it is InfluxDB or the embedded PGlite
 * (the spool delivers in the background); a Postgres server takes readings directly.
 * `writeDerived` is where the alert engine's NEWS2 scores go: the same way.
 */
async function openReadings (config: Config, db: Database, metrics: ReturnType<typeof createMetrics>, log: Logger, closers: Array<() => Promise<void>>): Promise<{
  readings: ReadingStore
  spool: Spool | null
  writeDerived: (derived: StoredReading[]) => Promise<void>
}> {
  if (config.influx === null && db.kind === 'postgres') {
    // A Postgres server: each commit is durable when it returns, so readings go in directly.
    const readings = createPostgresReadingStore(db.pool)
    return {
      readings,
      spool: null,
      writeDerived: async (derived) => {
        await readings.write(derived)
        metrics.readingsStored.inc(derived.length)
      }
    }
  }
  // Behind the spool: InfluxDB, or the embedded default's PGlite. PGlite's commits reach the disk
  // only through a filesystem sync (a `sync -f` child process, ~10 ms), which ran after every
  // group commit of readings: at 100 msg/s ~50 a second, most of a core. The spool makes an
  // acknowledged reading durable instead (one O_DSYNC write per group commit) and delivers to
  // PGlite in batches, each committed and synced before the spool lets it go; a longer linger
  // than InfluxDB's 100 ms makes about two syncs a second. Reads of PGlite wait for delivery
  // (and cut the linger short), so a reading is queryable once acknowledged (docs/durability.md).
  let store: ReadingStore
  let delivery: DeliveryOptions = {}
  if (config.influx === null) {
    const pglite = createPostgresReadingStore(db.pool)
    store = { ...pglite, write: async (readings) => { await pglite.write(readings); await db.flushToDisk() } }
    delivery = { lingerMs: 500 }
  } else {
    const influx = await createInfluxReadingStore(config.influx, log)
    closers.push(() => influx.close())
    store = influx
  }
  const spool = await openSpool({ dir: path.join(config.dataDir, 'spool'), maxBytes: config.spoolMaxBytes, log, keepForEvaluation: true })
  closers.push(() => spool.close())
  wireSpoolMetrics(spool, metrics)
  spool.startDelivery(store, delivery)
  return {
    readings: config.influx === null ? readAfterDelivery(store, spool) : store,
    spool,
    writeDerived: async (derived) => { await spool.append(derived) }
  }
}

/**
 * Before the broker takes readings: what the spool holds past the alert engine's evaluation mark
 * (after a crash, its last batch window and unsaved state) is evaluated. A failure is logged and
 * start-up goes on: the readings stay stored, the engine retries what it queued, and the mark
 * stays put so the next start replays the rest.
 */
async function replayEvaluation (spool: Spool, alertEngine: AlertEngine, log: Logger): Promise<void> {
  const started = performance.now()
  try {
    const readings = await alertEngine.replay(spool.evaluationBacklog())
    if (readings > 0) log.info({ readingCount: readings, ms: Math.round(performance.now() - started) }, 'alert evaluation replayed from the spool')
  } catch (err) {
    log.error({ err }, 'replaying alert evaluation from the spool stopped; the evaluation mark stays where it is until the next start replays the rest')
  }
}

/** Alert event ids over the cluster's control channel. */
function alertPeers (cluster: Cluster): AlertEventPeers {
  return {
    announce: (eventIds) => { void cluster.send('alert-events', { eventIds }) },
    onAnnounced: (listener) => cluster.on('alert-events', (message) => {
      const ids = message.eventIds
      if (Array.isArray(ids) && ids.every((id) => typeof id === 'string' && /^[0-9]{1,18}$/.test(id))) listener(ids as string[])
    })
  }
}

/**
 * Written to a temp file and renamed, so a reader never sees half of it. On failure (ENOSPC) the
 * previous run's file is removed, so no tool reads stale ports, and start-up goes on.
 */
async function writeListeningFile (file: string, ports: Record<string, unknown>, log: Logger): Promise<void> {
  try {
    await fs.writeFile(`${file}.tmp`, JSON.stringify(ports) + '\n')
    await fs.rename(`${file}.tmp`, file)
  } catch (err) {
    await fs.rm(`${file}.tmp`, { force: true }).catch(() => {})
    await fs.rm(file, { force: true }).catch(() => {})
    log.warn({ file, code: (err as NodeJS.ErrnoException).code }, 'could not write listening.json (optional: the simulator reads ports from it); starting anyway')
  }
}

/**
 * HTTPS for the API without changing buildApi: the server is given `fastify.routing`, the same
 * request handler Fastify hands the server it creates itself, and the timeouts Fastify set on
 * that one. TLS 1.2 or later, as for MQTT.
 */
async function httpsServerFor (plain: http.Server, routing: (req: http.IncomingMessage, res: http.ServerResponse) => void, files: TlsFiles): Promise<https.Server> {
  const server = https.createServer({
    cert: await fs.readFile(files.certFile),
    key: await fs.readFile(files.keyFile),
    minVersion: 'TLSv1.2',
    // The API's header cap (16 KiB, as buildApi sets for the plain server): HTTPS refuses the same requests.
    maxHeaderSize: 16 * 1024
  }, routing)
  // Malformed requests and oversized headers get the API's JSON answers (431, 400) over HTTPS too.
  server.on('clientError', (err, socket) => plain.emit('clientError', err, socket))
  server.keepAliveTimeout = plain.keepAliveTimeout
  server.headersTimeout = plain.headersTimeout
  server.requestTimeout = plain.requestTimeout
  server.maxRequestsPerSocket = plain.maxRequestsPerSocket
  server.setTimeout(plain.timeout)
  return server
}

function wireSpoolMetrics (spool: Spool, metrics: ReturnType<typeof createMetrics>): void {
  spool.on('delivered', (count: number, latencyMs: number) => {
    metrics.readingsStored.inc(count)
    metrics.storeWriteSeconds.observe(latencyMs / 1000)
  })
  spool.on('deliveryFailed', () => metrics.storeWriteFailures.inc())
  spool.on('deadLettered', (count: number) => metrics.readingsDeadLettered.inc(count))
  metrics.watchSpool(() => spool.stats())
}
