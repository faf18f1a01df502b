import { spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { readFileSync, rmSync } from 'node:fs'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import { startInfluxd, type Influxd } from '../test/helpers/influxd.ts'
import { createTestDatabase, serverUrl as postgresServerUrl } from '../test/helpers/postgres.ts'
import { parseBenchOptions, usage, type BenchOptions } from './bench-options.ts'
import {
  findChildPid, forkTypeScript, nextMessage, processUsage, repoRoot, runningProcesses, startMosquitto, startVigil,
  type ManagedProcess, type VigilProcess
} from './child-processes.ts'
import { findCpuProfile, summarizeCpuProfile } from './cpu-profile-summary.ts'
import { freePort, startAllocationSampling, summarizeAllocations } from './allocation-profile.ts'
import { GeneratorPool } from './generator-pool.ts'
import { createDatabase } from './influx-queries.ts'
import { measureInfluxWriteCeiling } from './influx-write-ceiling.ts'
import { provisionDevices, type ProvisionedDevice } from './provision-devices.ts'
import { runQueryLoad } from './query-load.ts'
import { findMaxRate, measureIdle, measureStep, waitForIdle, type PipelineUnderTest, type SearchResult, type SharedCpuMeter, type StepContext } from './rate-search.ts'
import { evaluateTargets, projectFromRun, renderReport, type BenchResults, type CostGrowthRow, type MachineInfo, type QueryInside, type SmallSiteRow } from './report.ts'
import { postgresBackendsMeter, startBenchRedis, type BenchRedis } from './shared-meters.ts'
import { meanBetween, scrapeVigilMetrics, scrapeVigilSeries } from './vigil-metrics.ts'

/*
 * npm run bench [-- --full | --duration S | --devices N | --rates R1,R2 | --instances N | --help]
 *
 * Starts everything it measures — a private influxd, a throwaway Postgres database, Vigil as a
 * child process, a private Mosquitto with a Node consumer (the peer pipeline), bare Aedes — and
 * drives them with the same raw-MQTT load generator, then prints a table and writes it as JSON
 * to bench/results/. Every child process and temp dir is removed on exit and on Ctrl-C.
 */

let options: BenchOptions
try {
  const parsed = parseBenchOptions(process.argv.slice(2))
  if (parsed === 'help') {
    process.stdout.write(usage)
    process.exit(0)
  }
  options = parsed
} catch (err) {
  process.stderr.write(`bench: ${(err as Error).message}\n\n${usage}`)
  process.exit(2)
}

const benchStarted = performance.now()
function progress (message: string): void {
  const s = (performance.now() - benchStarted) / 1000
  process.stdout.write(`[${s.toFixed(1).padStart(6)} s] ${message}\n`)
}

// --- cleanup: LIFO, once, also on Ctrl-C --------------------------------------------------

const cleanups: Array<{ name: string, run: () => Promise<void> }> = []
const tempDirs: string[] = []
let cleaning: Promise<void> | null = null

function onCleanup (name: string, run: () => Promise<void>): void {
  cleanups.push({ name, run })
}

function cleanup (): Promise<void> {
  cleaning ??= (async () => {
    for (const c of cleanups.reverse()) {
      try {
        await c.run()
      } catch (err) {
        process.stderr.write(`bench: cleanup of ${c.name} failed: ${(err as Error).message}\n`)
      }
    }
    for (const p of runningProcesses()) await p.stop('SIGKILL', 2000)
    for (const dir of tempDirs) await fs.rm(dir, { recursive: true, force: true }).catch(() => {})
  })()
  return cleaning
}

let interrupted = false
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    if (interrupted) {
      process.stderr.write('bench: second interrupt: killing children and exiting now\n')
      process.exit(130)
    }
    interrupted = true
    process.stderr.write(`\nbench: ${signal}: stopping every child process and removing temp dirs…\n`)
    void cleanup().finally(() => process.exit(130))
  })
}
// Last resort (an exit without cleanup): child processes are SIGKILLed by child-processes.ts;
// temp dirs go here.
process.on('exit', () => {
  for (const dir of tempDirs) {
    try { rmSync(dir, { recursive: true, force: true }) } catch { /* best effort */ }
  }
})

// --- machine ------------------------------------------------------------------------------

/** fdatasync latency of small appends in `dir`: the floor under any durable-before-ack design. */
async function measureFdatasync (dir: string, count = 50): Promise<{ p50Ms: number, p99Ms: number }> {
  const file = path.join(dir, 'fdatasync-probe')
  const handle = await fs.open(file, 'w')
  const times: number[] = []
  try {
    const record = Buffer.alloc(200, 1)
    for (let i = 0; i < count; i++) {
      await handle.write(record)
      const started = performance.now()
      await handle.datasync()
      times.push(performance.now() - started)
    }
  } finally {
    await handle.close()
    await fs.rm(file, { force: true })
  }
  times.sort((a, b) => a - b)
  return { p50Ms: times[Math.floor(count / 2)]!, p99Ms: times[Math.min(count - 1, Math.ceil(count * 0.99) - 1)]! }
}

async function machineInfo (influxUrl: string, databaseUrl: string, tempDir: string): Promise<MachineInfo> {
  const tryRun = (fn: () => string | null): string | null => {
    try { return fn() } catch { return null }
  }
  let influxdVersion: string | null = null
  try {
    influxdVersion = (await fetch(`${influxUrl}/ping`)).headers.get('x-influxdb-version')
  } catch { /* reported as unknown */ }
  let postgres: string | null = null
  const client = new pg.Client({ connectionString: databaseUrl })
  try {
    await client.connect()
    postgres = ((await client.query('SHOW server_version')).rows[0]?.server_version as string | undefined) ?? null
    if (postgres !== null) postgres = `PostgreSQL ${postgres.split(' ')[0]}`
  } catch { /* unknown */ } finally {
    await client.end().catch(() => {})
  }
  return {
    cores: os.availableParallelism(),
    cpuModel: os.cpus()[0]?.model.trim() ?? 'unknown',
    memoryGb: os.totalmem() / 1024 ** 3,
    kernel: os.release(),
    node: process.version,
    influxd: influxdVersion,
    // `mosquitto -h` prints its version and exits 3.
    mosquitto: tryRun(() => spawnSync('/usr/sbin/mosquitto', ['-h'], { encoding: 'utf8' }).stdout.split('\n')[0]?.trim() || null),
    postgres,
    openFilesLimit: tryRun(() => /^Max open files\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'))?.[1] ?? null),
    fdatasync: await measureFdatasync(tempDir).catch(() => null)
  }
}

// --- the run ------------------------------------------------------------------------------

const startedAt = new Date()
const results: BenchResults = {
  startedAt: startedAt.toISOString(),
  finishedAt: '',
  elapsedSeconds: 0,
  mode: options.mode,
  // A Redis URL may hold a password: only whether one was given is kept.
  options: { ...options, scenarios: [...options.scenarios], redisUrl: options.redisUrl === null ? null : '(given)' },
  machine: {
    cores: os.availableParallelism(), cpuModel: '', memoryGb: 0, kernel: '', node: process.version, influxd: null, mosquitto: null, postgres: null, openFilesLimit: null, fdatasync: null
  },
  caveats: [],
  setup: { provisionedDevices: 0, provisionMs: null },
  ingest: { devices: options.devices, vigil: null, peer: null, aedes: null },
  influxCeiling: null,
  querySide: null,
  costGrowth: null,
  smallSite: null,
  targets: [],
  profile: null,
  allocations: null,
  scaleOut: null
}

const adminToken = `bench-${randomBytes(24).toString('hex')}`
const quick = options.mode === 'quick'
/** Unmeasured load before a pipeline's first step: JIT, caches and connections warm. */
const warmupMs = 2000

/** Offered rates to search: --rates, or ×1.5 steps around the start rate (lower ones are tried only if it fails). */
function rateGrid (): number[] {
  if (options.rates !== null) return options.rates
  const grid: number[] = []
  for (let k = -5; k < 20; k++) grid.push(Math.round(options.startRate * Math.pow(options.stepFactor, k)))
  return grid
}

/** The first grid rate above `rate` (or rate × step factor past the grid's end). */
function gridRateAbove (grid: number[], rate: number): number {
  return grid.find((r) => r > rate) ?? Math.round(rate * options.stepFactor)
}

/** The running Vigil's log, shown when the run fails. */
let vigilLogFile: string | null = null

async function main (): Promise<void> {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-bench-'))
  tempDirs.push(root)
  progress(`setup: temp dir ${root}`)

  progress('setup: starting a private influxd')
  const influxd: Influxd = await startInfluxd()
  tempDirs.push(influxd.dir)
  onCleanup('influxd', () => influxd.close())
  const influxdPid = findChildPid('influxd')
  await createDatabase(influxd.url, 'peer')

  progress(`setup: creating a throwaway database on ${new URL(postgresServerUrl).host}`)
  const database = await createTestDatabase()
  onCleanup('postgres database', () => database.drop())

  // Scale-out: every Vigil of the run in cluster mode on one Redis, whose CPU (and that of the
  // database's Postgres backends) each step reports per reading.
  let clusterEnv: Record<string, string> | undefined
  let benchRedis: BenchRedis | null = null
  const meters: SharedCpuMeter[] = []
  if (options.instances !== null) {
    progress(options.redisUrl === null ? 'setup: starting a private redis-server (cluster mode)' : 'setup: using the given Redis under a prefix of its own (cluster mode)')
    const redis = await startBenchRedis(options.redisUrl)
    benchRedis = redis
    onCleanup('redis', () => redis.close())
    // A cluster shares one PHI key (config refuses REDIS_URL without one).
    clusterEnv = { REDIS_URL: redis.url, REDIS_PREFIX: redis.prefix, VIGIL_SECRET_KEY: randomBytes(32).toString('base64') }
    const postgresMeter = postgresBackendsMeter(postgresServerUrl, new URL(database.url).pathname.slice(1))
    onCleanup('postgres meter', () => postgresMeter.close())
    meters.push(redis.meter, postgresMeter)
  }

  results.machine = await machineInfo(influxd.url, database.url, root)
  results.caveats.push(
    `all processes (load generator, Vigil, influxd, PostgreSQL, Mosquitto, the peer consumer) share these ${results.machine.cores} cores: ` +
    'each figure is for the whole machine under that load, not for the component alone',
    `${options.readingsPerMessage === 1 ? 'one reading' : `${options.readingsPerMessage} readings`} per message; a "held" rate had every message sent on schedule, at most 0.5 s of load (or 3 %) un-PUBACKed when the ` +
    'window ended and all PUBACKed within 3 s, none lost, and every acknowledged reading counted in InfluxDB within 1 s + 10 % of the window after it')
  if (options.vigilNodeArgs.length > 0) results.caveats.push(`Vigil ran with node ${options.vigilNodeArgs.join(' ')}`)
  if (Object.keys(options.vigilEnv).length > 0) {
    results.caveats.push(`Vigil ran with ${Object.entries(options.vigilEnv).map(([k, v]) => `${k}=${v}`).join(' ')} (the embedded one without INFLUX_ settings)`)
  }
  if (options.profile) results.caveats.push('--profile: Vigil ran under the V8 sampling profiler in scenarios 1 and 5, which costs it some CPU')

  const vigilDataDir = path.join(root, 'vigil-data')
  let vigilInstance = 0
  let vigil: VigilProcess | null = null
  /** Vigil on this run's Postgres and influxd, or with `embeddedDataDir` on its embedded default (`npm start`) there. */
  const startVigilProcess = async (o: { profileDir?: string, inspectPort?: number, embeddedDataDir?: string } = {}): Promise<VigilProcess> => {
    const { profileDir, inspectPort, embeddedDataDir } = o
    vigilInstance++
    const started = await startVigil({
      // The embedded Vigil has no InfluxDB: an INFLUX_ setting would stop it at start.
      env: embeddedDataDir === undefined
        ? { ...clusterEnv, ...options.vigilEnv }
        : Object.fromEntries(Object.entries(options.vigilEnv).filter(([k]) => !k.startsWith('INFLUX_'))),
      dataDir: embeddedDataDir ?? vigilDataDir,
      databaseUrl: embeddedDataDir === undefined ? database.url : null,
      influxUrl: embeddedDataDir === undefined ? influxd.url : null,
      influxBucket: 'vigil',
      adminToken,
      logFile: path.join(root, `vigil-${vigilInstance}.log`),
      nodeArgs: [
        ...options.vigilNodeArgs,
        ...(profileDir === undefined ? [] : ['--cpu-prof', '--cpu-prof-dir', profileDir]),
        ...(inspectPort === undefined ? [] : [`--inspect=127.0.0.1:${inspectPort}`])
      ]
    })
    vigil = started
    vigilLogFile = started.logFile
    return started
  }
  const stopVigil = async (): Promise<void> => {
    const v = vigil
    vigil = null
    await v?.stop('SIGTERM', 15_000)
  }
  onCleanup('vigil', stopVigil)

  progress('setup: compiling Vigil (scripts/build.mjs) and starting it (node dist/main.js)')
  let current = await startVigilProcess()
  progress(`setup: Vigil pid ${current.pid}, HTTP ${current.httpPort}, MQTT ${current.mqttPort}`)

  const deviceCount = Math.max(
    options.scenarios.has(1) || options.scenarios.has(2) || options.scenarios.has(3) ? options.devices : 0,
    options.scenarios.has(4) ? Math.max(...options.costDevices) : 0,
    options.scenarios.has(5) ? 100 : 0,
    options.scenarios.has(7) ? options.smallSiteDevices : 0,
    100)
  progress(`setup: provisioning ${deviceCount} patients and devices through the HTTP API`)
  const provisionStarted = performance.now()
  let lastReport = 0
  let warnedThrottled = false
  const devices: ProvisionedDevice[] = await provisionDevices(current.baseUrl, adminToken, deviceCount, {
    concurrency: 8,
    onThrottled: (status, retryAfter) => {
      if (warnedThrottled) return
      warnedThrottled = true
      progress(`setup: ⚠ Vigil answered HTTP ${status} (${status === 429 ? 'rate limited' : 'load shed'}); retrying after ${retryAfter} s — provisioning will be slow`)
      results.caveats.push(`provisioning was throttled by Vigil (HTTP ${status}): its time is not the API's speed`)
    },
    onProgress: (done) => {
      if (done === deviceCount || performance.now() - lastReport > 5000) {
        lastReport = performance.now()
        progress(`setup: provisioned ${done}/${deviceCount}`)
      }
    }
  })
  results.setup = { provisionedDevices: devices.length, provisionMs: performance.now() - provisionStarted }
  progress(`setup: provisioned ${devices.length} devices in ${((results.setup.provisionMs ?? 0) / 1000).toFixed(1)} s`)

  const pool = await GeneratorPool.start(options.generators)
  onCleanup('load generators', () => pool.close())
  const ctx: StepContext = {
    pool, influxUrl: influxd.url, influxdPid, probeDir: root, progress, meters, extraPids: benchRedis === null || benchRedis.pid === null ? [] : [benchRedis.pid]
  }
  const grid = rateGrid()
  const firstRate = options.rates?.[0] ?? options.startRate
  const searchBase = { durationMs: options.durationMs, sampleEvery: 50, refine: options.rates === null, readingsPerMessage: options.readingsPerMessage }
  const loadDevices = devices.slice(0, options.devices)

  const vigilPipeline = (v: VigilProcess): PipelineUnderTest => ({
    key: 'vigil', label: 'Vigil', mqttPort: v.mqttPort, pids: () => [v.pid], database: 'vigil', vigilUrls: [v.baseUrl]
  })

  const connect = async (label: string, port: number | number[], which: ProvisionedDevice[]): Promise<{ connected: number, elapsedMs: number }> => {
    progress(`${label}: connecting ${which.length} devices` + (typeof port === 'number' ? '' : ` spread over ${port.length} processes`))
    const c = await pool.connect('127.0.0.1', port, which)
    progress(`${label}: ${c.connected} connected in ${(c.elapsedMs / 1000).toFixed(1)} s` +
      (c.refused + c.failed > 0 ? ` (${c.refused} refused, ${c.failed} failed${c.firstError === null ? '' : `: ${c.firstError}`})` : ''))
    if (c.connected === 0) throw new Error(`${label}: no device could connect`)
    return c
  }

  const warmup = async (label: string, pipeline: PipelineUnderTest, rate: number, ms = warmupMs): Promise<void> => {
    progress(`${label}: warm-up, ${Math.round(rate)} msg/s for ${(ms / 1000).toFixed(1)} s (not measured)`)
    await pool.run({ rate, durationMs: ms, drainMs: 3000, sampleEvery: 0 })
    await waitForIdle(pipeline)
  }

  const profileDir = path.join(root, 'cpu-profile')

  // 1 (and 5): Vigil end to end
  if (options.scenarios.has(1)) {
    if (options.profile) {
      // A fresh Vigil under the profiler, so provisioning is not part of the profile.
      progress('scenario 1: restarting Vigil under the CPU profiler')
      await stopVigil()
      current = await startVigilProcess({ profileDir })
    }
    const inspectPort = options.allocProfile ? await freePort() : undefined
    if (inspectPort !== undefined) {
      progress('scenario 1: restarting Vigil with the inspector on a loopback port (allocation sampling)')
      await stopVigil()
      current = await startVigilProcess({ inspectPort })
    }
    const pipeline = vigilPipeline(current)
    await connect('scenario 1 · Vigil', current.mqttPort, loadDevices)
    if (meters.length > 0) {
      // Before any publish: after one, the alert engine and rule-state writes trail on for a while.
      progress('scenario 1 · Vigil: Redis and PostgreSQL CPU with the devices connected and silent, 1 + 4 s (subtracted from the steps)')
      await sleep(1000)
      await measureIdle(meters, 4000)
    }
    await warmup('scenario 1 · Vigil', pipeline, firstRate / 2)
    // The profile summary covers the measured steps only (not start-up, connecting, disconnecting).
    const profileFrom = Number(process.hrtime.bigint() / 1000n)
    const sampler = inspectPort === undefined ? null : await startAllocationSampling(inspectPort)
    results.ingest.vigil = await findMaxRate(ctx, pipeline, { ...searchBase, grid, startRate: firstRate, label: 'scenario 1 · Vigil' })
    if (sampler !== null) {
      const head = await sampler.stop()
      sampler.close()
      const seconds = (Number(process.hrtime.bigint() / 1000n) - profileFrom) / 1e6
      const messages = results.ingest.vigil.steps.reduce((n, step) => n + step.load.acked, 0)
      results.allocations = summarizeAllocations(head, repoRoot, seconds, messages)
    }
    const best = results.ingest.vigil.best
    progress(`scenario 1 · Vigil: max held ${best === null ? 'none' : `${best.rate} msg/s`}`)

    if (options.scenarios.has(5) && best !== null) {
      const rate = Math.round(best.rate / 2)
      progress(`scenario 5 · query side: ingest alone at ${rate} msg/s (half of max)`)
      const ingestOnly = await measureStep(ctx, pipeline, rate, { durationMs: options.durationMs, sampleEvery: 50, readingsPerMessage: options.readingsPerMessage })
      progress(`scenario 5 · query side: ingest at ${rate} msg/s with readings/latest and 24 h aggregate queries on 100 patients`)
      const patientIds = devices.slice(0, 100).map((d) => d.patientId)
      const series = async (): Promise<Map<string, number>> =>
        await scrapeVigilSeries(current.baseUrl, ['vigil_http_request_seconds_', 'vigil_reading_store_read_seconds_'])
      const before = await series()
      const [withQueries, queries] = await Promise.all([
        measureStep(ctx, pipeline, rate, { durationMs: options.durationMs, sampleEvery: 50, readingsPerMessage: options.readingsPerMessage }),
        runQueryLoad(current.baseUrl, adminToken, patientIds, { durationMs: options.durationMs, concurrency: 2 })
      ])
      const after = await series()
      // Where a query's time went: Vigil's own answer time (arrival to answer sent) and, inside it, the store's read.
      const msOrNull = (seconds: number | null): number | null => seconds === null ? null : seconds * 1000
      const inside = (route: string, read: string): QueryInside => ({
        answerMs: msOrNull(meanBetween(before, after, 'vigil_http_request_seconds', `method="GET",route="/v1/patients/:id/readings/${route}",status="2xx"`)),
        storeMs: msOrNull(meanBetween(before, after, 'vigil_reading_store_read_seconds', `read="${read}"`))
      })
      results.querySide = { rate, ingestOnly, withQueries, queries, inside: { latest: inside('latest', 'latest'), aggregate24h: inside('aggregate', 'aggregate') } }
      progress(`scenario 5 · query side: latest p99 ${queries.latest.p99Ms?.toFixed(1)} ms, aggregate p99 ${queries.aggregate24h.p99Ms?.toFixed(1)} ms, ` +
        `PUBACK p99 ${ingestOnly.load.puback.p99Ms?.toFixed(1)} ms alone, ${withQueries.load.puback.p99Ms?.toFixed(1)} ms with queries`)
    }
    const profileTo = Number(process.hrtime.bigint() / 1000n)
    await pool.disconnect()
    if (options.profile) {
      progress('profile: stopping the profiled Vigil')
      await stopVigil()
      const file = await findCpuProfile(profileDir)
      if (file !== null) {
        results.profile = await summarizeCpuProfile(file, repoRoot, { fromMonotonicUs: profileFrom, toMonotonicUs: profileTo })
        const kept = path.join(repoRoot, 'bench', 'results', `vigil-${startedAt.toISOString().replace(/:/g, '-')}.cpuprofile`)
        await fs.mkdir(path.dirname(kept), { recursive: true })
        await fs.copyFile(file, kept)
        results.profile.file = path.relative(repoRoot, kept)
      }
      // Scenarios 2 and 3 do not need Vigil; scenario 4 starts its own.
    }
  }
  const vigilBestRate = results.ingest.vigil?.best?.rate

  // Scale-out: the same search through N Vigil processes in one cluster, devices spread over them.
  if (options.instances !== null && options.scenarios.has(1)) {
    const n = options.instances
    const label = `scale-out · ${n} processes`
    progress(`${label}: stopping the 1-process Vigil, starting ${n} (cluster mode: same Postgres database, Redis and influxd)`)
    await stopVigil()
    const members: VigilProcess[] = []
    onCleanup('scale-out Vigil processes', async () => { await Promise.all(members.map((m) => m.stop('SIGTERM', 15_000))) })
    // One after the other: they share the database and its migrations.
    for (let i = 1; i <= n; i++) {
      const member = await startVigil({
        env: { ...clusterEnv, ...options.vigilEnv },
        dataDir: path.join(root, `vigil-data-${i}`),
        databaseUrl: database.url,
        influxUrl: influxd.url,
        influxBucket: 'vigil',
        adminToken,
        logFile: path.join(root, `vigil-scale-${i}.log`)
      })
      members.push(member)
      vigilLogFile = member.logFile
      progress(`${label}: Vigil ${i} pid ${member.pid}, MQTT ${member.mqttPort}`)
    }
    const pipeline: PipelineUnderTest = {
      key: 'vigil',
      label: `Vigil × ${n}`,
      mqttPort: members[0]!.mqttPort,
      pids: () => members.map((m) => m.pid),
      database: 'vigil',
      vigilUrls: members.map((m) => m.baseUrl)
    }
    await connect(label, members.map((m) => m.mqttPort), loadDevices)
    progress(`${label}: Redis and PostgreSQL CPU with the devices connected and silent, 1 + 4 s (subtracted from the steps)`)
    await sleep(1000)
    await measureIdle(meters, 4000)
    await warmup(label, pipeline, firstRate / 2)
    // From the 1-process maximum: the first step compares the two at the same rate.
    const multi = await findMaxRate(ctx, pipeline, { ...searchBase, grid, startRate: vigilBestRate ?? firstRate, label })
    progress(`${label}: max held ${multi.best === null ? 'none' : `${multi.best.rate} msg/s`}`)
    // Evidence of the spread: what each process accepted over the whole run (warm-up included).
    const acceptedPerProcess = await Promise.all(members.map(async (m) => (await scrapeVigilMetrics(m.baseUrl)).get('vigil_readings_accepted_total') ?? 0))
    progress(`${label}: readings accepted per process: ${acceptedPerProcess.join(', ')}`)
    await pool.disconnect()
    await Promise.all(members.map((m) => m.stop('SIGTERM', 15_000)))
    results.scaleOut = {
      instances: n,
      redis: options.redisUrl === null ? 'private' : 'given',
      multi,
      acceptedPerProcess,
      projection: null
    }
    results.scaleOut.projection = projectFromRun(results.scaleOut, options.projectCores)
  }

  /** The peer pipeline: a private Mosquitto (its data in `dirName`) and the Node consumer writing to influxd's `peer` database. */
  const startPeer = async (label: string, dirName: string): Promise<{ pipeline: PipelineUnderTest, stop: () => Promise<void> }> => {
    const mosquittoDir = path.join(root, dirName)
    await fs.mkdir(mosquittoDir, { recursive: true })
    progress(`${label}: starting Mosquitto on a free port and the peer consumer`)
    const mosquitto = await startMosquitto(mosquittoDir)
    onCleanup(`mosquitto (${dirName})`, () => mosquitto.stop())
    const consumer = forkTypeScript('peer-consumer', 'peer-consumer.ts', [`mqtt://127.0.0.1:${mosquitto.port}`, influxd.url, 'peer'])
    onCleanup(`peer consumer (${dirName})`, () => consumer.stop())
    await nextMessage(consumer, 'ready', 60_000)
    return {
      pipeline: { key: 'peer', label: 'peer', mqttPort: mosquitto.port, pids: () => [mosquitto.pid, consumer.pid], database: 'peer' },
      stop: async () => { await consumer.stop(); await mosquitto.stop() }
    }
  }

  // 2: the peer pipeline (Mosquitto + Node consumer → InfluxDB)
  if (options.scenarios.has(2)) {
    const peer = await startPeer('scenario 2 · peer', 'mosquitto')
    const pipeline = peer.pipeline
    await connect('scenario 2 · peer', pipeline.mqttPort, loadDevices)
    await warmup('scenario 2 · peer', pipeline, firstRate / 2)
    results.ingest.peer = await findMaxRate(ctx, pipeline, {
      ...searchBase, grid, startRate: vigilBestRate ?? firstRate, label: 'scenario 2 · peer'
    })
    progress(`scenario 2 · peer: max held ${results.ingest.peer.best === null ? 'none' : `${results.ingest.peer.best.rate} msg/s`}`)
    await pool.disconnect()
    await peer.stop()
  }

  // 3: ceilings — bare Aedes with the same generator, InfluxDB's raw write rate
  if (options.scenarios.has(3)) {
    progress('scenario 3 · ceilings: starting bare Aedes (no auth, no ingest)')
    const aedes: ManagedProcess = forkTypeScript('raw-aedes', 'raw-aedes.ts')
    onCleanup('bare aedes', () => aedes.stop())
    const { port } = await nextMessage<{ type: 'ready', port: number }>(aedes, 'ready', 60_000)
    const pipeline: PipelineUnderTest = { key: 'aedes', label: 'bare Aedes', mqttPort: port, pids: () => [aedes.pid], database: null }
    await connect('scenario 3 · bare Aedes', port, loadDevices)
    await warmup('scenario 3 · bare Aedes', pipeline, firstRate / 2)
    const floor = Math.max(vigilBestRate ?? 0, results.ingest.peer?.best?.rate ?? 0)
    results.ingest.aedes = await findMaxRate(ctx, pipeline, {
      ...searchBase, sampleEvery: 0, grid, startRate: floor === 0 ? firstRate : gridRateAbove(grid, floor), label: 'scenario 3 · bare Aedes'
    })
    progress(`scenario 3 · bare Aedes: max held ${results.ingest.aedes.best === null ? 'none' : `${results.ingest.aedes.best.rate} msg/s`}`)
    await pool.disconnect()
    await aedes.stop()

    const ceilingMs = quick ? 4000 : 10_000
    progress(`scenario 3 · ceilings: InfluxDB /write with 5,000-line batches, 2 concurrent, ${ceilingMs / 1000} s`)
    results.influxCeiling = await measureInfluxWriteCeiling(influxd.url, influxdPid, devices.slice(0, 1000), { durationMs: ceilingMs })
    progress(`scenario 3 · ceilings: InfluxDB took ${Math.round(results.influxCeiling.linesPerSecond)} lines/s`)
  }

  // 4: cost growth with the number of devices, at a fixed total rate
  if (options.scenarios.has(4)) {
    const rate = options.costRate ?? (vigilBestRate === undefined ? 1000 : Math.min(1000, Math.round(vigilBestRate / 2)))
    const rows: CostGrowthRow[] = []
    results.costGrowth = rows
    for (const n of options.costDevices) {
      const label = `scenario 4 · ${n} devices`
      progress(`${label}: restarting Vigil so memory is measured from a fresh process`)
      await stopVigil()
      current = await startVigilProcess()
      const pipeline = vigilPipeline(current)
      await sleep(1000)
      const rssBeforeBytes = processUsage(current.pid)?.rssBytes ?? 0
      const c = await connect(label, current.mqttPort, devices.slice(0, n))
      // Idle but connected: what holding the sessions costs in memory and CPU.
      await sleep(1000)
      const idleFrom = processUsage(current.pid)?.cpuUs ?? 0
      await sleep(2000)
      const idleCores = ((processUsage(current.pid)?.cpuUs ?? 0) - idleFrom) / 2e6
      const rssConnectedBytes = processUsage(current.pid)?.rssBytes ?? 0
      // Every device publishes at least once before measuring (its assignment is then cached).
      await warmup(label, pipeline, rate, Math.max(warmupMs, 1.2 * n / rate * 1000))
      progress(`${label}: ${rate} msg/s for ${options.durationMs / 1000} s`)
      const step = await measureStep(ctx, pipeline, rate, { durationMs: options.durationMs, sampleEvery: 0, readingsPerMessage: options.readingsPerMessage })
      await pool.disconnect()
      rows.push({
        devices: n, rate, connectMs: c.elapsedMs, connected: c.connected, idleCores, rssBeforeBytes, rssConnectedBytes,
        rssPerDeviceBytes: (rssConnectedBytes - rssBeforeBytes) / Math.max(1, c.connected), step
      })
      progress(`${label}: ${step.held ? 'held' : `NOT held (${step.reasons.join('; ')})`}, ${step.cpuUsPerReading?.toFixed(0)} µs CPU/reading, ` +
        `RSS ${(rssBeforeBytes / 1048576).toFixed(0)} → ${(rssConnectedBytes / 1048576).toFixed(0)} MB connected ` +
        `(${((rssConnectedBytes - rssBeforeBytes) / Math.max(1, c.connected) / 1024).toFixed(1)} KB/device)`)
    }
  }

  // 7: a small site — Vigil and the peer at low total rates, from a few devices: fixed costs
  // (timers, fsync cadence, checkpoints, engine batches) per reading, which the maximum hides.
  if (options.scenarios.has(7)) {
    const which = devices.slice(0, options.smallSiteDevices)
    // At least 10 s a step: at 100 msg/s a 4 s window is 400 readings, too few to divide CPU by.
    const durationMs = Math.max(options.durationMs, 10_000)
    const rows: SmallSiteRow[] = options.smallSiteRates.map((rate) => ({ rate, vigil: null, embedded: null, peer: null }))
    results.smallSite = { devices: which.length, rows }
    // Vigil on a Postgres server makes that server work for it (alert state, presence, jobs): its
    // backends' CPU is part of Vigil's cost here, idle included (fixed costs are the point).
    const postgresMeter = postgresBackendsMeter(postgresServerUrl, new URL(database.url).pathname.slice(1))
    onCleanup('small-site postgres meter', () => postgresMeter.close())
    const measureAt = async (label: string, pipeline: PipelineUnderTest, key: 'vigil' | 'embedded' | 'peer'): Promise<void> => {
      const stepCtx = { ...ctx, meters: key === 'vigil' ? [postgresMeter] : [] }
      // Every device publishes at least once before measuring (Vigil then has its assignment cached).
      await warmup(label, pipeline, options.smallSiteRates[0]!, Math.max(warmupMs, 1.2 * which.length / options.smallSiteRates[0]! * 1000))
      for (const row of rows) {
        progress(`${label}: ${row.rate} msg/s for ${durationMs / 1000} s`)
        const step = await measureStep(stepCtx, pipeline, row.rate, { durationMs, sampleEvery: 0, readingsPerMessage: options.readingsPerMessage })
        row[key] = step
        progress(`${label}: ${row.rate} msg/s ${step.held ? 'held' : `NOT held (${step.reasons.join('; ')})`}, ${step.cpuUsPerReading?.toFixed(0)} µs CPU/reading`)
      }
    }
    const label = `scenario 7 · small site · Vigil`
    progress(`${label}: restarting Vigil, ${which.length} devices`)
    await stopVigil()
    current = await startVigilProcess()
    await connect(label, current.mqttPort, which)
    await measureAt(label, vigilPipeline(current), 'vigil')
    await pool.disconnect()

    // The embedded default (`npm start`: PGlite, no other server), which a small site most
    // likely runs: a Vigil of its own on a fresh data directory, its own patients and devices.
    const embeddedLabel = 'scenario 7 · small site · Vigil embedded'
    await stopVigil()
    progress(`${embeddedLabel}: starting Vigil on its embedded default (fresh data directory: its first start makes the database)`)
    const embedded = await startVigilProcess({ embeddedDataDir: path.join(root, 'vigil-embedded-data') })
    const embeddedDevices = await provisionDevices(embedded.baseUrl, adminToken, which.length, { concurrency: 8 })
    await connect(embeddedLabel, embedded.mqttPort, embeddedDevices)
    await measureAt(embeddedLabel, {
      key: 'vigil', label: 'Vigil embedded', mqttPort: embedded.mqttPort, pids: () => [embedded.pid], database: null, vigilUrls: [embedded.baseUrl],
      countStored: async (firstTs, lastTs) => await countThroughApi(embedded.baseUrl, embeddedDevices, firstTs, lastTs)
    }, 'embedded')
    await pool.disconnect()
    await stopVigil()

    const peerLabel = 'scenario 7 · small site · peer'
    const peer = await startPeer(peerLabel, 'mosquitto-small')
    await connect(peerLabel, peer.pipeline.mqttPort, which)
    await measureAt(peerLabel, peer.pipeline, 'peer')
    await pool.disconnect()
    await peer.stop()
  }
}

let failed = false
try {
  await main()
} catch (err) {
  failed = true
  if (!interrupted) {
    process.stderr.write(`\nbench failed: ${(err as Error).stack ?? String(err)}\n`)
    if (vigilLogFile !== null) {
      const tail = await fs.readFile(vigilLogFile, 'utf8').then((t) => t.trimEnd().split('\n').slice(-15).join('\n'), () => '')
      if (tail !== '') process.stderr.write(`\nlast lines of Vigil's log (${vigilLogFile}):\n${tail}\n`)
    }
  }
}
if (!interrupted) {
  const finished = new Date()
  results.finishedAt = finished.toISOString()
  results.elapsedSeconds = (performance.now() - benchStarted) / 1000
  results.targets = evaluateTargets(results)
  const hasData = results.ingest.vigil !== null || results.ingest.peer !== null || results.ingest.aedes !== null ||
    results.influxCeiling !== null || results.costGrowth !== null || results.smallSite !== null
  if (hasData) {
    process.stdout.write(renderReport(results))
    const dir = path.join(repoRoot, 'bench', 'results')
    await fs.mkdir(dir, { recursive: true })
    // Colons are not portable in file names; the timestamp is otherwise ISO 8601.
    const file = path.join(dir, `${startedAt.toISOString().replace(/:/g, '-')}.json`)
    await fs.writeFile(file, JSON.stringify(results, null, 2) + '\n')
    process.stdout.write(`\nresults: ${path.relative(process.cwd(), file)}${failed ? ' (partial: the run failed)' : ''}\n`)
  }
  progress('cleaning up')
  await cleanup()
  process.exit(failed ? 1 : 0)
}

/**
 * Readings stored with timestamps in [firstTs, lastTs] for these devices' patients, counted by
 * Vigil itself (its readings aggregate, fn=count): the embedded default keeps them in PGlite,
 * which only Vigil's process can open. Each answer waits for the spool's delivery first.
 */
async function countThroughApi (baseUrl: string, devices: readonly ProvisionedDevice[], firstTs: number, lastTs: number): Promise<number> {
  const from = new Date(firstTs).toISOString()
  const to = new Date(lastTs + 1).toISOString()
  const every = `${Math.max(1, Math.ceil((lastTs + 1 - firstTs) / 1000 / 5000))}s`
  const patients = [...new Set(devices.map((d) => d.patientId))]
  let total = 0
  for (let i = 0; i < patients.length; i += 8) {
    const counts = await Promise.all(patients.slice(i, i + 8).map(async (id) => {
      const url = `${baseUrl}/v1/patients/${id}/readings/aggregate?metric=heart_rate&fn=count&every=${every}&from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}`
      const res = await fetch(url, { headers: { authorization: `Bearer ${adminToken}` } })
      if (!res.ok) throw new Error(`counting stored readings: GET ${url.replace(baseUrl, '')} answered ${res.status}`)
      const body = await res.json() as { items: Array<{ value: number | null }> }
      return body.items.reduce((n, b) => n + (b.value ?? 0), 0)
    }))
    total += counts.reduce((a, b) => a + b, 0)
  }
  return total
}
