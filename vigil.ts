import fs from 'node:fs/promises'
import path from 'node:path'
import type { Logger } from 'pino'
import { buildApi } from './api/app.ts'
import { createBroker } from './broker/broker.ts'
import type { Config } from './config/config.ts'
import { listen } from './config/listen.ts'
import { startIngest } from './ingest/ingest.ts'
import { openSpool, type Spool } from './ingest/spool.ts'
import { createMetrics } from './observability/metrics.ts'
import { createApiTokenStore } from './store/api-tokens.ts'
import { lockDataDir } from './store/data-dir-lock.ts'
import { openDatabase } from './store/database.ts'
import { createDeviceRegistry } from './store/device-registry.ts'
import { createInfluxReadingStore } from './store/influx-readings.ts'
import { createPatientStore } from './store/patients.ts'
import { createPostgresReadingStore } from './store/postgres-readings.ts'
import type { ReadingStore } from './store/readings-store.ts'
import { createRejectionLog } from './store/rejections.ts'

export interface Vigil {
  readonly httpPort: number
  readonly mqttPort: number
  readonly readings: ReadingStore
  close (): Promise<void>
}

/**
 * The composition root: opens the databases, wires the services together, starts the
 * listeners, and closes everything in reverse order. main.ts and the end-to-end tests call it.
 */
export async function startVigil (config: Config, log: Logger): Promise<Vigil> {
  const closers: Array<() => Promise<void>> = []
  const close = async (): Promise<void> => {
    for (const c of closers.reverse()) await c()
    closers.length = 0
  }
  try {
    await fs.mkdir(config.dataDir, { recursive: true })
    closers.push(await lockDataDir(config.dataDir))
    const metrics = createMetrics()
    const db = await openDatabase({ databaseUrl: config.databaseUrl, dataDir: config.dataDir, log })
    closers.push(() => db.close())
    const patients = createPatientStore(db.pool)
    const devices = createDeviceRegistry(db.pool)
    const tokens = createApiTokenStore(db.pool)
    const rejections = createRejectionLog(db.pool)

    if (config.adminToken !== null) {
      const { created, revoked } = await tokens.ensureBootstrap(config.adminToken)
      if (created) log.info('bootstrap admin token created from VIGIL_ADMIN_TOKEN')
      if (revoked > 0) log.warn({ revoked }, 'VIGIL_ADMIN_TOKEN changed: the previous bootstrap admin token is revoked')
    }
    if (await tokens.count() === 0) {
      log.warn('no API token exists: set VIGIL_ADMIN_TOKEN (at least 24 characters) and restart to create the first admin token')
    }

    let readings: ReadingStore
    let spool: Spool | null = null
    if (config.influx !== null) {
      readings = await createInfluxReadingStore(config.influx, log)
      closers.push(() => readings.close())
      spool = await openSpool({ dir: path.join(config.dataDir, 'spool'), maxBytes: config.spoolMaxBytes, log })
      const s = spool
      closers.push(() => s.close())
      wireSpoolMetrics(spool, metrics)
      spool.startDelivery(readings)
    } else {
      readings = createPostgresReadingStore(db.pool)
    }

    const ingest = await startIngest({ devices, rejections, readings, spool, metrics, log, flushToDisk: db.flushToDisk })
    closers.push(() => ingest.close())

    const broker = await createBroker({
      host: config.mqttHost, port: config.mqttPort, portFallback: config.defaultPorts.mqtt, maxPacketBytes: config.mqttMaxPacketBytes, devices, ingest, metrics, log
    })
    closers.push(() => broker.close())

    // /healthz checks Postgres and the reading store; the spool's state is in the metrics
    // (depth, oldest unwritten age), where an alert on age says more than a 503 would.
    const api = await buildApi({ log, db, patients, devices, tokens, rejections, readings, metrics })
    closers.push(() => api.close())
    await api.ready()
    const httpPort = await listen(api.server, config.httpHost, config.httpPort, config.defaultPorts.http, 'HTTP_PORT', log)

    // Where a local tool (the simulator) finds the ports actually bound, when they were 0 or fell back.
    await fs.writeFile(path.join(config.dataDir, 'listening.json'), JSON.stringify({ pid: process.pid, httpPort, mqttPort: broker.port }) + '\n')
    log.info({
      http: `http://${config.httpHost}:${httpPort}`,
      mqtt: `mqtt://${config.mqttHost}:${broker.port}`,
      docs: `http://${config.httpHost}:${httpPort}/docs`,
      database: db.kind,
      readingStore: readings.kind
    }, 'vigil started')
    return { httpPort, mqttPort: broker.port, readings, close }
  } catch (err) {
    await close().catch((closeErr) => log.error({ err: closeErr }, 'cleanup after failed start failed'))
    throw err
  }
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
