import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'

/**
 * Vigil's Prometheus metrics, one registry per running instance (no global default registry,
 * so tests can run several instances in one process). Labels never carry PHI or ids:
 * only reasons, topic kinds and outcomes.
 */
export interface SpoolStats { depthReadings: number, depthBytes: number, oldestUnwrittenAgeMs: number, deliveryBlocked?: boolean }

/** How often prom-client's event-loop lag histogram ticks (ms). */
const EVENT_LOOP_LAG_RESOLUTION_MS = 100

export function createMetrics () {
  const registry = new Registry()
  // Set when a spool exists (InfluxDB, the embedded default); the spool gauges read it at scrape time.
  let spoolStats: (() => SpoolStats) | null = null
  // Set when the data directory's free space is watched (store/disk-reserve.ts).
  let disk: { low: () => boolean, freeBytes: () => number } | null = null
  // The event-loop lag histogram ticks every 100 ms, not prom-client's default 10: each tick
  // wakes the process, and at 10 ms this timer and the load shedder's were most of an idle
  // Vigil's wake-ups. Its gauges record the time between ticks, so an idle process now reads
  // ~0.1 s where it read ~0.01 (docs/operations.md says so).
  collectDefaultMetrics({ register: registry, prefix: 'vigil_process_', eventLoopMonitoringPrecision: EVENT_LOOP_LAG_RESOLUTION_MS })
  return {
    registry,
    clusterLeader: new Gauge({
      name: 'vigil_cluster_leader',
      help: '1 while this process runs the cluster-wide task (escalation, no-data, housekeeping, reencryption); always 1 in the embedded mode',
      labelNames: ['task'] as const,
      registers: [registry]
    }),
    watchSpool (stats: () => SpoolStats): void { spoolStats = stats },
    watchDisk (reserve: { low: () => boolean, freeBytes: () => number }): void { disk = reserve },
    diskLow: new Gauge({
      name: 'vigil_disk_low',
      help: '1 while free space in the data directory is below VIGIL_DISK_RESERVE_MB (publishes and API writes refused), else 0',
      registers: [registry],
      collect () { if (disk !== null) this.set(disk.low() ? 1 : 0) }
    }),
    diskFreeBytes: new Gauge({
      name: 'vigil_disk_free_bytes',
      help: 'Free bytes in the data directory at the last check (once a second)',
      registers: [registry],
      collect () { if (disk !== null && Number.isFinite(disk.freeBytes())) this.set(disk.freeBytes()) }
    }),
    messagesReceived: new Counter({
      name: 'vigil_mqtt_messages_received_total',
      help: 'MQTT PUBLISH packets received from authenticated devices, by topic kind',
      labelNames: ['kind'] as const,
      registers: [registry]
    }),
    mqttRefused: new Counter({
      name: 'vigil_mqtt_refused_total',
      help: 'MQTT connections, publishes and subscriptions refused by the broker, by reason',
      labelNames: ['reason'] as const,
      registers: [registry]
    }),
    connectedDevices: new Gauge({
      name: 'vigil_mqtt_connected_clients',
      help: 'Authenticated MQTT clients connected now',
      registers: [registry]
    }),
    readingsAccepted: new Counter({
      name: 'vigil_readings_accepted_total',
      help: 'Readings made durable and acknowledged (stored, or appended to the spool when InfluxDB is the store)',
      registers: [registry]
    }),
    readingsStored: new Counter({
      name: 'vigil_readings_stored_total',
      help: 'Readings confirmed written by the reading store',
      registers: [registry]
    }),
    rejections: new Counter({
      name: 'vigil_rejections_total',
      help: 'Payloads refused by ingest (acknowledged, kept in the rejection log), by reason',
      labelNames: ['reason'] as const,
      registers: [registry]
    }),
    storeWriteSeconds: new Histogram({
      name: 'vigil_store_write_seconds',
      help: 'Latency of one batch write to the reading store',
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry]
    }),
    readingsDeadLettered: new Counter({
      name: 'vigil_readings_dead_lettered_total',
      help: 'Spooled readings the store refused permanently (e.g. beyond its retention), moved to the spool\'s dead-letter file',
      registers: [registry]
    }),
    storeWriteFailures: new Counter({
      name: 'vigil_store_write_failures_total',
      help: 'Failed batch writes to the reading store (retried; nothing acknowledged is dropped)',
      registers: [registry]
    }),
    httpRequestSeconds: new Histogram({
      name: 'vigil_http_request_seconds',
      help: 'API requests, from arrival to the answer sent, by method, route template (ids are `:id`; `unmatched` for unknown paths) and status class',
      labelNames: ['method', 'route', 'status'] as const,
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry]
    }),
    readingStoreReadSeconds: new Histogram({
      name: 'vigil_reading_store_read_seconds',
      help: 'Reads of the reading store made for the API (InfluxDB or Postgres; on the embedded default including the wait for delivery of what was acknowledged), by read',
      labelNames: ['read'] as const,
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: [registry]
    }),
    durableSeconds: new Histogram({
      name: 'vigil_ingest_durable_seconds',
      help: 'From PUBLISH received to reading durable (the moment PUBACK may be sent)',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 5],
      registers: [registry]
    }),
    spoolDepthReadings: new Gauge({
      name: 'vigil_spool_depth_readings',
      help: 'Readings in the on-disk spool not yet confirmed by InfluxDB',
      registers: [registry],
      collect () { if (spoolStats !== null) this.set(spoolStats().depthReadings) }
    }),
    spoolDepthBytes: new Gauge({
      name: 'vigil_spool_depth_bytes',
      help: 'Bytes in the on-disk spool not yet confirmed by InfluxDB',
      registers: [registry],
      collect () { if (spoolStats !== null) this.set(spoolStats().depthBytes) }
    }),
    spoolOldestAgeSeconds: new Gauge({
      name: 'vigil_spool_oldest_unwritten_age_seconds',
      help: 'Age of the oldest reading in the spool not yet confirmed by InfluxDB (0 when empty)',
      registers: [registry],
      collect () { if (spoolStats !== null) this.set(spoolStats().oldestUnwrittenAgeMs / 1000) }
    }),
    spoolDeliveryBlocked: new Gauge({
      name: 'vigil_spool_delivery_blocked',
      help: '1 while InfluxDB refuses writes for a reason only fixing it cures (auth, missing database, series limit): readings are kept and retried with backoff',
      registers: [registry],
      collect () { if (spoolStats !== null) this.set(spoolStats().deliveryBlocked === true ? 1 : 0) }
    })
  }
}

export type Metrics = ReturnType<typeof createMetrics>
