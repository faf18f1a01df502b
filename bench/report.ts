import type { WriteCeilingResult } from './influx-write-ceiling.ts'
import type { QueryLoadResult } from './query-load.ts'
import { fmtMs, type SearchResult, type StepResult } from './rate-search.ts'
import { projectScale, type Projection } from './scale-projection.ts'

export interface MachineInfo {
  cores: number
  cpuModel: string
  memoryGb: number
  kernel: string
  node: string
  influxd: string | null
  mosquitto: string | null
  postgres: string | null
  openFilesLimit: string | null
  /** fdatasync of a 200-byte append in the bench's temp dir, measured before anything started. */
  fdatasync: { p50Ms: number, p99Ms: number } | null
}

export interface CostGrowthRow {
  devices: number
  rate: number
  connectMs: number
  connected: number
  /** Vigil's CPU (cores) with the devices connected and silent. */
  idleCores: number
  rssBeforeBytes: number
  rssConnectedBytes: number
  rssPerDeviceBytes: number
  step: StepResult
}

/** Scenario 7's Postgres backends serving Vigil (Postgres + InfluxDB), µs a reading; null in results from before 2026-12-07. */
function smallSitePostgresUs (row: SmallSiteRow): number | null {
  return row.vigil?.sharedCpuUsPerReading?.PostgreSQL ?? null
}

/** Scenario 7's Vigil on Postgres + InfluxDB: its process and, where measured, its Postgres backends. */
function smallSiteVigilUs (row: SmallSiteRow): number | null {
  const own = row.vigil?.cpuUsPerReading ?? null
  return own === null ? null : own + (smallSitePostgresUs(row) ?? 0)
}

/** Scenario 7: Vigil and the peer at one low total rate, from the same few devices. */
export interface SmallSiteRow {
  rate: number
  /** Vigil on Postgres + InfluxDB (as the other scenarios run it). */
  vigil: StepResult | null
  /** Vigil on its embedded default (PGlite), as `npm start` runs it; absent in results from before 2026-12-07. */
  embedded?: StepResult | null
  peer: StepResult | null
}

/** Means inside Vigil over the query step (its metrics): the answer (arrival to sent) and the reading store's read in it. */
export interface QueryInside {
  answerMs: number | null
  storeMs: number | null
}

export interface QuerySide {
  rate: number
  ingestOnly: StepResult
  withQueries: StepResult
  queries: QueryLoadResult
  /** Absent in results from before Vigil timed its answers. */
  inside?: { latest: QueryInside, aggregate24h: QueryInside }
}

export interface Target {
  name: string
  status: 'met' | 'not met' | 'n/a'
  value: string
}

/** --alloc-profile: sampled allocations over the measured steps of scenario 1 (bench/allocation-profile.ts). */
export interface AllocationSummary {
  seconds: number
  /** Messages acknowledged in the measured windows (the denominator of "a message"). */
  messages: number
  totalBytes: number
  sites: Array<{ name: string, where: string, bytes: number, share: number }>
}

export interface ProfileSummary {
  file: string
  totalMs: number
  byFunction: Array<{ name: string, where: string, selfMs: number, share: number }>
  byArea: Array<{ area: string, selfMs: number, share: number }>
}

/** --instances N: scenario 1's search again through N Vigil processes of one cluster. */
export interface ScaleOut {
  instances: number
  /** 'private': a redis-server of the bench's own (CPU exact); 'given': --redis-url (CPU from INFO, shared). */
  redis: 'private' | 'given'
  multi: SearchResult
  /** vigil_readings_accepted_total of each process at the end (warm-up included): how the devices spread. */
  acceptedPerProcess: number[]
  /** From the N-process run's maximum; null when it held no rate. */
  projection: Projection | null
}

export interface BenchResults {
  startedAt: string
  finishedAt: string
  elapsedSeconds: number
  mode: 'quick' | 'full'
  options: Record<string, unknown>
  machine: MachineInfo
  caveats: string[]
  setup: { provisionedDevices: number, provisionMs: number | null }
  ingest: {
    devices: number
    vigil: SearchResult | null
    peer: SearchResult | null
    aedes: SearchResult | null
  }
  influxCeiling: WriteCeilingResult | null
  querySide: QuerySide | null
  costGrowth: CostGrowthRow[] | null
  smallSite: { devices: number, rows: SmallSiteRow[] } | null
  targets: Target[]
  profile: ProfileSummary | null
  allocations: AllocationSummary | null
  scaleOut: ScaleOut | null
}

/** The scale-out run's per-reading costs at its maximum, projected to `cores` (bench/scale-projection.ts). */
export function projectFromRun (s: ScaleOut, cores: number): Projection | null {
  const best = s.multi.best
  if (best === null || best.cpuUsPerReading === null || best.cpuUsPerReading <= 0) return null
  return projectScale(cores, {
    vigilUs: best.cpuUsPerReading,
    vigilMainThreadUs: best.mainThreadCpuUsPerReading ?? null,
    influxdUs: best.influxdCpuUsPerReading,
    redisUs: best.sharedCpuUsPerReading?.Redis ?? null,
    postgresUs: best.sharedCpuUsPerReading?.PostgreSQL ?? null
  })
}

const mb = (bytes: number): string => `${(bytes / 1048576).toFixed(0)} MB`
const kb = (bytes: number): string => `${(bytes / 1024).toFixed(1)} KB`
const int = (n: number | null | undefined): string => n === null || n === undefined ? '–' : Math.round(n).toLocaleString('en-US')
const pair = (a: number | null, b: number | null): string => `${fmtMs(a)} / ${fmtMs(b)}`
const ratio = (a: number | null | undefined, b: number | null | undefined): string =>
  a === null || a === undefined || b === null || b === undefined || b === 0 ? '–' : `${(a / b).toFixed(2)}×`

/** Columns padded to their widest cell; the first `leftColumns` left-aligned, the rest right-aligned. */
function table (rows: string[][], leftColumns = 1, indent = '  '): string {
  const widths: number[] = []
  for (const row of rows) row.forEach((cell, i) => { widths[i] = Math.max(widths[i] ?? 0, cell.length) })
  return rows.map((row) => indent + row.map((cell, i) => i < leftColumns ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!)).join('   ').trimEnd()).join('\n')
}

function stepsLines (label: string, search: SearchResult | null): string[] {
  if (search === null) return []
  const steps = search.steps.map((s) => `${int(s.rate)} ${s.held ? 'held' : `not held (${s.reasons[0] ?? ''})`}`)
  return [`  ${label} steps (msg/s): ${steps.join('; ')}`]
}

function generatorNote (steps: StepResult[]): string[] {
  const saturated = steps.filter((s) => s.load.generatorSaturated)
  if (saturated.length === 0) return []
  return [`  ⚠ generator saturated (> 85 % of a core) at ${saturated.map((s) => `${int(s.rate)} msg/s`).join(', ')}: ` +
    'figures at those rates measure the generator as much as the target']
}

/** The human-readable report printed at the end of a run. */
function perMessage (options: Record<string, unknown>): string {
  const n = typeof options.readingsPerMessage === 'number' ? options.readingsPerMessage : 1
  return n === 1 ? 'one reading (~90-byte JSON)' : `${n} readings (~${20 + 70 * n}-byte JSON)`
}

export function renderReport (r: BenchResults): string {
  const out: string[] = []
  const m = r.machine
  out.push('', `Vigil benchmark — ${r.startedAt} — ${r.mode} mode, ${Math.round(r.elapsedSeconds)} s`)
  out.push(`machine: ${m.cores} cores (${m.cpuModel}), ${m.memoryGb.toFixed(0)} GB, Linux ${m.kernel}, Node ${m.node}, ` +
    `influxd ${m.influxd ?? '?'}, ${m.mosquitto ?? 'mosquitto ?'}, ${m.postgres ?? 'PostgreSQL ?'}, open files ${m.openFilesLimit ?? '?'}` +
    (m.fdatasync === null ? '' : `, fdatasync p50 ${fmtMs(m.fdatasync.p50Ms)} / p99 ${fmtMs(m.fdatasync.p99Ms)} (before the run)`))
  if (r.setup.provisionMs !== null) {
    out.push(`setup: ${int(r.setup.provisionedDevices)} patients + devices provisioned through the HTTP API in ${(r.setup.provisionMs / 1000).toFixed(1)} s ` +
      '(4 calls each, 8 devices at a time)')
  }
  for (const c of r.caveats) out.push(`note: ${c}`)
  const steps = allSteps(r)
  const busiest = steps.reduce<StepResult | null>((max, s) => max === null || s.otherCores > max.otherCores ? s : max, null)
  if (busiest !== null && busiest.otherCores >= 0.1) {
    const mean = steps.reduce((n, s) => n + s.otherCores, 0) / steps.length
    out.push(`⚠ other processes on this machine used ${mean.toFixed(2)} cores on average during measured steps (up to ${busiest.otherCores.toFixed(2)}): ` +
      'the figures are lower than on a quiet machine')
  }
  const diskBusiest = steps.reduce((max, s) => Math.max(max, s.diskBusy ?? 0), 0)
  if (diskBusiest >= 0.5) {
    out.push(`⚠ the disk was busy up to ${Math.round(diskBusiest * 100)} % of the time during measured steps (everyone's I/O, ours included): ` +
      'fsync latency, the floor of Vigil\'s PUBACK latency, suffers')
  }

  const { vigil, peer, aedes } = r.ingest
  if (vigil !== null || peer !== null || aedes !== null) {
    const v = vigil?.best ?? null
    const p = peer?.best ?? null
    const a = aedes?.best ?? null
    out.push('', `1–3. Ingest: ${int(r.ingest.devices)} devices, one TCP connection each, QoS 1, ${perMessage(r.options)} per message`)
    const rows: string[][] = [
      ['', 'Vigil', 'peer', 'Vigil/peer', 'bare Aedes'],
      ['max rate held with 0 loss (msg/s)', int(v?.rate), int(p?.rate), ratio(v?.rate, p?.rate), int(a?.rate)],
      ['readings/s stored (counted in InfluxDB)', int(v?.storedPerSecond), int(p?.storedPerSecond), ratio(v?.storedPerSecond, p?.storedPerSecond), '–'],
      ['publish→PUBACK p50 / p99', pair(v?.load.puback.p50Ms ?? null, v?.load.puback.p99Ms ?? null), pair(p?.load.puback.p50Ms ?? null, p?.load.puback.p99Ms ?? null),
        ratio(v?.load.puback.p99Ms, p?.load.puback.p99Ms), pair(a?.load.puback.p50Ms ?? null, a?.load.puback.p99Ms ?? null)],
      ['publish→queryable p50 / p99', pair(v?.queryable?.p50Ms ?? null, v?.queryable?.p99Ms ?? null), pair(p?.queryable?.p50Ms ?? null, p?.queryable?.p99Ms ?? null),
        ratio(v?.queryable?.p99Ms, p?.queryable?.p99Ms), '–'],
      ['CPU µs per reading (pipeline processes)', int(v?.cpuUsPerReading), int(p?.cpuUsPerReading), ratio(v?.cpuUsPerReading, p?.cpuUsPerReading), int(a?.cpuUsPerReading)],
      ['CPU cores used at that rate', v?.cpuCores.toFixed(2) ?? '–', p?.cpuCores.toFixed(2) ?? '–', ratio(v?.cpuCores, p?.cpuCores), a?.cpuCores.toFixed(2) ?? '–'],
      ['influxd CPU µs per reading', int(v?.influxdCpuUsPerReading), int(p?.influxdCpuUsPerReading), ratio(v?.influxdCpuUsPerReading, p?.influxdCpuUsPerReading), '–'],
      ['RSS', v === null ? '–' : mb(v.rssBytes), p === null ? '–' : mb(p.rssBytes), ratio(v?.rssBytes, p?.rssBytes), a === null ? '–' : mb(a.rssBytes)],
      ['generator CPU (share of one core)', genCpu(v), genCpu(p), '', genCpu(a)],
      ['other processes\' CPU meanwhile (cores)', v?.otherCores.toFixed(2) ?? '–', p?.otherCores.toFixed(2) ?? '–', '', a?.otherCores.toFixed(2) ?? '–'],
      ['fdatasync probe meanwhile p50 / p99', pair(v?.fsync.p50Ms ?? null, v?.fsync.p99Ms ?? null), pair(p?.fsync.p50Ms ?? null, p?.fsync.p99Ms ?? null), '',
        pair(a?.fsync.p50Ms ?? null, a?.fsync.p99Ms ?? null)]
    ]
    const same = v === null ? undefined : peer?.steps.find((s) => s.rate === v.rate && s.held)
    if (v !== null && same !== undefined && same !== p) {
      rows.push(
        [`same rate as Vigil's max (${int(v.rate)} msg/s):`, '', '', '', ''],
        ['  publish→PUBACK p50 / p99', pair(v.load.puback.p50Ms, v.load.puback.p99Ms), pair(same.load.puback.p50Ms, same.load.puback.p99Ms), ratio(v.load.puback.p99Ms, same.load.puback.p99Ms), ''],
        ['  publish→queryable p50 / p99', pair(v.queryable?.p50Ms ?? null, v.queryable?.p99Ms ?? null), pair(same.queryable?.p50Ms ?? null, same.queryable?.p99Ms ?? null),
          ratio(v.queryable?.p99Ms, same.queryable?.p99Ms), ''],
        ['  CPU µs per reading (pipeline processes)', int(v.cpuUsPerReading), int(same.cpuUsPerReading), ratio(v.cpuUsPerReading, same.cpuUsPerReading), ''],
        ['  influxd CPU µs per reading', int(v.influxdCpuUsPerReading), int(same.influxdCpuUsPerReading), ratio(v.influxdCpuUsPerReading, same.influxdCpuUsPerReading), ''],
        ['  RSS', mb(v.rssBytes), mb(same.rssBytes), ratio(v.rssBytes, same.rssBytes), '']
      )
    }
    out.push(table(rows))
    if (peer !== null) {
      out.push('  peer = Mosquitto 2 (private, queues raised) + bench/peer-consumer.ts (mqtt.js → @influxdata/influxdb-client WriteApi, 5,000-line')
      out.push('  batches / 100 ms, v1 /write). The peer PUBACKs on receipt; Vigil PUBACKs after an fsync of the reading into its spool.')
    }
    if (vigil !== null || peer !== null) {
      out.push('  Queryable latency is polled (1 in 50 messages); its resolution is the poll interval ' +
        `(~${Math.round(v?.queryable?.pollIntervalMs ?? p?.queryable?.pollIntervalMs ?? 20)} ms).`)
    }
    if (v?.vigil !== undefined) {
      out.push(`  Vigil at max: PUBLISH→durable mean ${fmtMs(v.vigil.durableMeanMs)} inside Vigil; ${int(v.vigil.storeWrites)} InfluxDB writes of ` +
        `${int(v.vigil.storeWriteMeanReadings)} readings on average, ${fmtMs(v.vigil.storeWriteMeanMs)} each.`)
    }
    out.push(...stepsLines('Vigil', vigil), ...stepsLines('peer', peer), ...stepsLines('bare Aedes', aedes))
    out.push(...generatorNote([...(vigil?.steps ?? []), ...(peer?.steps ?? []), ...(aedes?.steps ?? [])]))
  }

  const c = r.influxCeiling
  if (c !== null) {
    out.push('', `3b. InfluxDB raw write ceiling: ${int(c.linesPerSecond)} lines/s (${int(c.batchLines)}-line batches to /write, ${c.concurrency} concurrent, ` +
      `${(c.durationMs / 1000).toFixed(1)} s; batch p50 ${fmtMs(c.batchP50Ms)}, p99 ${fmtMs(c.batchP99Ms)}; influxd ${c.influxdCores?.toFixed(2) ?? '?'} cores, ` +
      `${c.influxdCpuUsPerLine?.toFixed(1) ?? '?'} µs/line)`)
    const v = r.ingest.vigil?.best
    const a = r.ingest.aedes?.best
    if (v !== undefined && v !== null) {
      out.push(`    Vigil's max is ${(100 * v.rate / c.linesPerSecond).toFixed(1)} % of InfluxDB's write ceiling` +
        (a === undefined || a === null ? '' : ` and ${(100 * v.rate / a.rate).toFixed(0)} % of bare Aedes's`) + '.')
    }
  }

  const g = r.costGrowth
  if (g !== null && g.length > 0) {
    const base = g[0]!.step.cpuUsPerReading
    out.push('', `4. Cost growth: fixed total rate ${int(g[0]!.rate)} msg/s, Vigil restarted for each device count` +
      ' (RSS idle: before connecting; idle CPU: connected, not publishing)')
    out.push(table([
      ['devices', 'connected', 'connect time', 'idle CPU', 'held', 'CPU µs/reading', `vs ${int(g[0]!.devices)}`, 'RSS idle', 'RSS connected', 'RSS/device', 'PUBACK p99'],
      ...g.map((row) => [
        int(row.devices), int(row.connected), `${(row.connectMs / 1000).toFixed(1)} s`, `${row.idleCores.toFixed(3)} cores`, row.step.held ? 'yes' : 'no',
        int(row.step.cpuUsPerReading), ratio(row.step.cpuUsPerReading, base), mb(row.rssBeforeBytes), mb(row.rssConnectedBytes),
        kb(row.rssPerDeviceBytes), fmtMs(row.step.load.puback.p99Ms)
      ])
    ]))
    const unheld = g.filter((row) => !row.step.held)
    for (const row of unheld) out.push(`  ${int(row.devices)} devices not held: ${row.step.reasons.join('; ')}`)
  }

  const ss = r.smallSite
  if (ss !== null && ss.rows.length > 0) {
    out.push('', `7. Small site: ${int(ss.devices)} devices, fixed total rates; CPU of each pipeline's own processes and their children ` +
      '(Vigil on Postgres + InfluxDB; Vigil embedded, as `npm start` runs it; Mosquitto + consumer)')
    const held = (s: StepResult | null | undefined): string => s === undefined ? '–' : s?.held === true ? 'yes' : 'no'
    out.push(table([
      ['rate', 'Vigil µs/reading (+ its Postgres)', 'embedded µs/reading', 'peer µs/reading', 'Vigil ÷ peer', 'embedded ÷ peer', 'Vigil / embedded / peer cores',
        'PUBACK p99 Vigil / embedded / peer', 'held'],
      ...ss.rows.map((row) => {
        const own = row.vigil?.cpuUsPerReading ?? null
        const postgres = smallSitePostgresUs(row)
        const v = smallSiteVigilUs(row)
        const e = row.embedded?.cpuUsPerReading ?? null
        const p = row.peer?.cpuUsPerReading ?? null
        const cores = (us: number | null): string => us === null ? '?' : (us * row.rate / 1e6).toFixed(3)
        const p99 = (s: StepResult | null | undefined): string => s === null || s === undefined ? '–' : fmtMs(s.load.puback.p99Ms)
        return [
          `${int(row.rate)} msg/s`, postgres === null ? int(own) : `${int(v)} (${int(own)} + ${int(postgres)})`, int(e), int(p), ratio(v, p), ratio(e, p), `${cores(v)} / ${cores(e)} / ${cores(p)}`,
          `${p99(row.vigil)} / ${p99(row.embedded)} / ${p99(row.peer)}`,
          `${held(row.vigil)} / ${held(row.embedded)} / ${held(row.peer)}`
        ]
      })
    ]))
    // The embedded default's store (PGlite) runs inside its process, so its figure counts it;
    // influxd, the store of the other two, is a process of its own that the figures above leave out.
    const withStore = ss.rows.map((row) => {
      const v = smallSiteVigilUs(row)
      const vi = row.vigil?.influxdCpuUsPerReading ?? null
      const e = row.embedded?.cpuUsPerReading ?? null
      const p = row.peer?.cpuUsPerReading ?? null
      const pi = row.peer?.influxdCpuUsPerReading ?? null
      const vs = v === null || vi === null ? null : v + vi
      const ps = p === null || pi === null ? null : p + pi
      return `${int(row.rate)} msg/s: Vigil ${int(vs)}, embedded ${int(e)}, peer ${int(ps)} µs (${ratio(vs, ps)}, ${ratio(e, ps)})`
    })
    out.push('  With each pipeline\'s store counted (the embedded default\'s PGlite is inside its process; influxd serves the other two and is', `  left out above): ${withStore.join('; ')}`)
  }

  const q = r.querySide
  if (q !== null) {
    out.push('', `5. Query side: ingest at ${int(q.rate)} msg/s (half of Vigil's max), ${q.queries.patients} patients, ${q.queries.concurrency} clients in a closed loop`)
    out.push(table([
      ['', 'p50 / p99', 'per second'],
      ['publish→PUBACK, ingest only', pair(q.ingestOnly.load.puback.p50Ms, q.ingestOnly.load.puback.p99Ms), ''],
      ['publish→queryable, ingest only', pair(q.ingestOnly.queryable?.p50Ms ?? null, q.ingestOnly.queryable?.p99Ms ?? null), ''],
      ['publish→PUBACK, with queries', pair(q.withQueries.load.puback.p50Ms, q.withQueries.load.puback.p99Ms), ''],
      ['fdatasync probe, ingest only / with queries (p99)', pair(q.ingestOnly.fsync.p99Ms, q.withQueries.fsync.p99Ms), ''],
      ['GET …/readings/latest', pair(q.queries.latest.p50Ms, q.queries.latest.p99Ms), q.queries.latest.perSecond.toFixed(0)],
      ['GET …/readings/aggregate (24 h, 1 h mean)', pair(q.queries.aggregate24h.p50Ms, q.queries.aggregate24h.p99Ms), q.queries.aggregate24h.perSecond.toFixed(0)]
    ]))
    if (q.inside !== undefined) {
      const one = (name: string, i: QueryInside): string => `${name} ${fmtMs(i.answerMs)} (the store's read ${fmtMs(i.storeMs)})`
      out.push(`  Inside Vigil, mean: ${one('latest', q.inside.latest)}, ${one('aggregate', q.inside.aggregate24h)}; the rest of a query's time is the client's`,
        '  and the network\'s, and the wait before Vigil read the request.')
    }
    if (q.queries.refused > 0) out.push(`  ${q.queries.refused} queries refused with 429/503 (Vigil's rate limit or load shedding)`)
    if (q.queries.errors > 0) out.push(`  ${q.queries.errors} query errors, first: ${q.queries.firstError}`)
    if (!q.ingestOnly.held || !q.withQueries.held) {
      out.push(`  half-max ingest ${q.ingestOnly.held ? 'held' : 'NOT held'} alone and ${q.withQueries.held ? 'held' : 'NOT held'} with queries` +
        `: ${[...q.ingestOnly.reasons, ...q.withQueries.reasons].join('; ')}`)
    }
  }

  if (r.scaleOut !== null) out.push(...renderScaleOut(r, r.scaleOut))

  if (r.targets.length > 0) {
    out.push('', 'Targets (issue 18)')
    out.push(table(r.targets.map((t) => [t.status, t.name, t.value]), 3))
  }

  const pr = r.profile
  if (pr !== null) {
    out.push('', `Vigil CPU profile (${(pr.totalMs / 1000).toFixed(1)} s of samples over the measured steps of scenarios 1 and 5; ${pr.file})`)
    out.push(table([['area', 'self time', 'share'], ...pr.byArea.map((a) => [a.area, `${Math.round(a.selfMs)} ms`, `${(100 * a.share).toFixed(1)} %`])]))
    out.push('')
    out.push(table([['function', 'where', 'self time', 'share'], ...pr.byFunction.map((f) => [f.name, f.where, `${Math.round(f.selfMs)} ms`, `${(100 * f.share).toFixed(1)} %`])], 2))
  }
  const al = r.allocations
  if (al !== null && al.messages > 0) {
    const perMessage = (bytes: number): string => `${(bytes / al.messages / 1024).toFixed(2)} KB`
    out.push('', `Vigil allocations, main thread (sampled over ${al.seconds.toFixed(1)} s of scenario 1's measured steps: ` +
      `${(al.totalBytes / al.seconds / 1e6).toFixed(0)} MB/s, ${perMessage(al.totalBytes)} a message acknowledged, freed or not)`)
    out.push(table([['function', 'where', 'a message', 'share'], ...al.sites.map((s) => [s.name, s.where, perMessage(s.bytes), `${(100 * s.share).toFixed(1)} %`])], 2))
  }
  return out.join('\n') + '\n'
}

function allSteps (r: BenchResults): StepResult[] {
  return [
    ...(r.ingest.vigil?.steps ?? []), ...(r.ingest.peer?.steps ?? []), ...(r.ingest.aedes?.steps ?? []),
    ...(r.querySide === null ? [] : [r.querySide.ingestOnly, r.querySide.withQueries]),
    ...(r.costGrowth ?? []).map((row) => row.step),
    ...(r.scaleOut?.multi.steps ?? [])
  ]
}

const us = (n: number | null | undefined): string => n === null || n === undefined ? '–' : n < 10 ? n.toFixed(2) : Math.round(n).toLocaleString('en-US')

function renderScaleOut (r: BenchResults, s: ScaleOut): string[] {
  const out: string[] = []
  const n = s.instances
  const one = r.ingest.vigil?.best ?? null
  const many = s.multi.best
  const shared = (x: StepResult | null, name: string): number | null => x?.sharedCpuUsPerReading?.[name] ?? null
  const idle = (x: StepResult | null): string => x?.sharedIdleUsPerSecond === undefined
    ? '–'
    : `${((x.sharedIdleUsPerSecond.Redis ?? 0) / 1000).toFixed(1)} / ${((x.sharedIdleUsPerSecond.PostgreSQL ?? 0) / 1000).toFixed(1)}`
  const total = (x: StepResult | null): number | null => x === null || x.cpuUsPerReading === null
    ? null
    : x.cpuUsPerReading + (x.influxdCpuUsPerReading ?? 0) + (shared(x, 'Redis') ?? 0) + (shared(x, 'PostgreSQL') ?? 0)
  out.push('', `6. Scale-out: scenario 1 through 1 and ${n} Vigil processes, every one in cluster mode (REDIS_URL to ` +
    `${s.redis === 'private' ? 'a private redis-server' : 'the given Redis'}, one Postgres database, one influxd), so the two differ only in the ` +
    `number of processes; with ${n}, the devices are spread evenly over them, each device on one process`)
  const rows: string[][] = [
    ['', '1 process', `${n} processes`, `${n}/1`],
    ['max rate held with 0 loss (msg/s)', int(one?.rate), int(many?.rate), ratio(many?.rate, one?.rate)],
    ['  per process (msg/s)', int(one?.rate), int(many === null ? null : many.rate / n), ''],
    ['readings/s stored (counted in InfluxDB)', int(one?.storedPerSecond), int(many?.storedPerSecond), ratio(many?.storedPerSecond, one?.storedPerSecond)],
    ['publish→PUBACK p50 / p99', pair(one?.load.puback.p50Ms ?? null, one?.load.puback.p99Ms ?? null), pair(many?.load.puback.p50Ms ?? null, many?.load.puback.p99Ms ?? null),
      ratio(many?.load.puback.p99Ms, one?.load.puback.p99Ms)],
    ['CPU µs per reading: Vigil (all processes, all threads)', us(one?.cpuUsPerReading), us(many?.cpuUsPerReading), ratio(many?.cpuUsPerReading, one?.cpuUsPerReading)],
    ['  of which main threads (event loops)', us(one?.mainThreadCpuUsPerReading), us(many?.mainThreadCpuUsPerReading), ''],
    ['  influxd', us(one?.influxdCpuUsPerReading), us(many?.influxdCpuUsPerReading), ''],
    [`  Redis above idle${s.redis === 'given' ? ' (whole server, approximate)' : ''}`, us(shared(one, 'Redis')), us(shared(many, 'Redis')), ''],
    ['  PostgreSQL above idle (backends of the bench database)', us(shared(one, 'PostgreSQL')), us(shared(many, 'PostgreSQL')), ''],
    ['  server total', us(total(one)), us(total(many)), ratio(total(many), total(one))],
    ['idle, connected and silent: Redis / PostgreSQL (ms CPU per s)', idle(one), idle(many), ''],
    ['Vigil cores used (all processes)', one?.cpuCores.toFixed(2) ?? '–', many?.cpuCores.toFixed(2) ?? '–', ''],
    ['busiest event loop (share of a core)', one?.busiestMainThreadCores?.toFixed(2) ?? '–', many?.busiestMainThreadCores?.toFixed(2) ?? '–', ''],
    ['generator CPU (share of one core)', genCpu(one), genCpu(many), ''],
    ['other processes\' CPU meanwhile (cores)', one?.otherCores.toFixed(2) ?? '–', many?.otherCores.toFixed(2) ?? '–', '']
  ]
  const same = one === null ? undefined : s.multi.steps.find((x) => x.rate === one.rate && x.held)
  if (one !== null && same !== undefined && same !== many) {
    rows.push(
      [`same rate as 1 process's max (${int(one.rate)} msg/s):`, '', '', ''],
      ['  publish→PUBACK p50 / p99', pair(one.load.puback.p50Ms, one.load.puback.p99Ms), pair(same.load.puback.p50Ms, same.load.puback.p99Ms), ratio(same.load.puback.p99Ms, one.load.puback.p99Ms)],
      ['  CPU µs per reading: Vigil / server total', `${us(one.cpuUsPerReading)} / ${us(total(one))}`, `${us(same.cpuUsPerReading)} / ${us(total(same))}`, ratio(total(same), total(one))]
    )
  }
  out.push(table(rows))
  out.push(...stepsLines(`${n} processes`, s.multi))
  if (one !== null && many !== null && Math.abs(one.otherCores - many.otherCores) >= 0.25) {
    // The two searches run one after the other: a change in everyone else's load moves the ratio.
    out.push(`  ⚠ other processes used ${one.otherCores.toFixed(2)} cores during the 1-process maximum and ${many.otherCores.toFixed(2)} during the ` +
      `${n}-process one: the ${n}/1 ratios measure that change as much as the number of processes`)
  }
  out.push(`  readings accepted per process over the ${n}-process run: ${s.acceptedPerProcess.map((a) => int(a)).join(', ')}`)
  out.push(...generatorNote(s.multi.steps))
  if (many !== null) {
    const cores = r.machine.cores
    const influxCores = (many.influxdCpuUsPerReading ?? 0) * many.rate / 1e6
    const generator = many.load.generatorCpu.reduce((a, b) => a + b, 0)
    out.push(`  On this machine the gain is bounded by its ${cores} cores: at ${int(many.rate)} msg/s Vigil used ${many.cpuCores.toFixed(2)} cores, influxd ~${influxCores.toFixed(2)}, ` +
      `the load generator ${generator.toFixed(2)}, other processes ${many.otherCores.toFixed(2)} — more processes only divide the same cores.`)
  }
  const p = s.projection
  if (p !== null) {
    const parts = p.coresAtRate.map((c) => `${c.name} ${c.cores.toFixed(1)}`).join(', ')
    out.push('', `  Projection to ${p.cores} cores, from the ${n}-process run's costs per reading at its maximum (model: bench/scale-projection.ts; ` +
      'an upper bound: every core busy, the load generator elsewhere, CPU per reading as measured here):')
    out.push(`    server CPU per reading: ${p.coresAtRate.map((c) => c.name).join(' + ')} = ${us(p.serverUs)} µs → all ${p.cores} cores busy at ${int(p.cpuBound)} readings/s`)
    out.push(p.perProcessRate === null
      ? '    one Vigil process: its main thread was not measured'
      : `    one Vigil process: its event loop (one thread) takes ${us(1e6 / p.perProcessRate)} µs per reading → at most ${int(p.perProcessRate)} readings/s, ` +
        `using ${p.coresPerProcess?.toFixed(1)} cores (workers, GC) when it is full`)
    out.push(`    Redis: one thread, ${us(shared(many, 'Redis'))} µs per reading → ${p.redisBound !== null ? `at most ${int(p.redisBound)} readings/s` : 'no measurable cost (telemetry does not cross Redis)'}` +
      (s.redis === 'given' ? ' (its CPU includes others\' use of that Redis)' : ''))
    out.push(`    → ${int(p.rate)} readings/s, bound by ${p.bottleneck}` + (p.processes === null ? '' : `, with ${p.processes} Vigil processes`) + `; cores at that rate: ${parts}`)
    out.push(`    with influxd, Redis and PostgreSQL on other machines, ${p.cores} cores of Vigil alone: ${int(p.vigilOnlyRate)} readings/s, needing elsewhere ` +
      p.elsewhereAtVigilOnlyRate.map((c) => `${c.name} ${c.cores.toFixed(1)} cores`).join(', ') +
      `: the next bottleneck is ${p.elsewhereAtVigilOnlyRate.reduce((a, b) => (b.cores > a.cores ? b : a)).name}`)
    out.push('    Not modelled: InfluxDB\'s and PostgreSQL\'s disk (WAL fsync, compaction), the network, the balancer in front of MQTT, and ' +
      'CPU per reading measured on a saturated 2-core machine (contention inflates it; batching at higher rates deflates it).')
  }
  return out
}

function genCpu (s: StepResult | null): string {
  if (s === null) return '–'
  return s.load.generatorCpu.map((c) => `${Math.round(c * 100)} %`).join(', ')
}

/** Evaluates the issue's targets against what the run measured. */
export function evaluateTargets (r: BenchResults): Target[] {
  const targets: Target[] = []
  const v = r.ingest.vigil?.best ?? null
  const p = r.ingest.peer?.best ?? null
  if (r.ingest.vigil !== null && r.ingest.peer !== null) {
    targets.push(v === null || p === null
      ? { name: 'Vigil ≥ 0.8× the peer pipeline\'s sustained rate', status: 'n/a', value: `no rate held by ${v === null ? 'Vigil' : 'the peer'}` }
      : {
          name: 'Vigil ≥ 0.8× the peer pipeline\'s sustained rate',
          status: v.rate >= 0.8 * p.rate ? 'met' : 'not met',
          value: `${(v.rate / p.rate).toFixed(2)}× (${int(v.rate)} vs ${int(p.rate)} msg/s), every Vigil reading fsync'd before PUBACK`
        })
  }
  if (v !== null) {
    targets.push({
      name: '≤ 35 µs of CPU per reading (Vigil\'s process, threads included) at its max',
      status: v.cpuUsPerReading !== null && v.cpuUsPerReading <= 35 ? 'met' : 'not met',
      value: `${int(v.cpuUsPerReading)} µs at ${int(v.rate)} msg/s`
    })
  }
  if (r.querySide !== null) {
    const p99 = r.querySide.ingestOnly.load.puback.p99Ms
    const withQueries = r.querySide.withQueries.load.puback.p99Ms
    targets.push({
      name: 'p99 publish→PUBACK ≤ 20 ms at half of Vigil\'s max, ≤ 50 ms with queries',
      status: p99 !== null && p99 <= 20 && withQueries !== null && withQueries <= 50 ? 'met' : 'not met',
      value: `${fmtMs(p99)} at ${int(r.querySide.rate)} msg/s (${fmtMs(withQueries)} with queries running)`
    })
    const q99 = Math.max(r.querySide.queries.latest.p99Ms ?? Infinity, r.querySide.queries.aggregate24h.p99Ms ?? Infinity)
    targets.push({
      name: 'query p99 ≤ 50 ms under that ingest',
      status: q99 <= 50 ? 'met' : 'not met',
      value: `latest ${fmtMs(r.querySide.queries.latest.p99Ms)}, aggregate ${fmtMs(r.querySide.queries.aggregate24h.p99Ms)}`
    })
  }
  const g = r.costGrowth
  if (g !== null && g.length > 0) {
    const largest = g[g.length - 1]!
    targets.push({
      name: 'RSS per connected device ≤ 20 KB at 5,000 devices',
      status: largest.devices < 5000 ? 'n/a' : largest.rssPerDeviceBytes <= 20 * 1024 ? 'met' : 'not met',
      value: `${kb(largest.rssPerDeviceBytes)} (${int(largest.devices)} devices)` + (largest.devices < 5000 ? ' (run --full for 5,000)' : '')
    })
    const first = g[0]!
    const growth = first.step.cpuUsPerReading !== null && largest.step.cpuUsPerReading !== null ? largest.step.cpuUsPerReading / first.step.cpuUsPerReading : null
    const reaches5000 = first.devices <= 100 && largest.devices >= 5000
    targets.push({
      name: 'CPU per reading grows ≤ 1.35× from 100 to 5,000 devices',
      status: growth === null || !reaches5000 ? 'n/a' : growth <= 1.35 ? 'met' : 'not met',
      value: growth === null
        ? 'not measured'
        : `${growth.toFixed(2)}× from ${int(first.devices)} to ${int(largest.devices)} devices` + (reaches5000 ? '' : ' (run --full for 5,000)')
    })
  }
  const ss = r.smallSite
  if (ss !== null) {
    // Both ways Vigil runs must be within 2×: on Postgres + InfluxDB and on its embedded default.
    const ratios = ss.rows.flatMap((row) => (['vigil', 'embedded'] as const).filter((k) => row[k] !== undefined).map((k) => {
      const v = k === 'vigil' ? smallSiteVigilUs(row) : row[k]?.cpuUsPerReading ?? null
      const p = row.peer?.cpuUsPerReading ?? null
      return { rate: row.rate, key: k, ratio: v === null || p === null || p <= 0 ? null : v / p }
    }))
    const measured = ratios.filter((x) => x.ratio !== null)
    targets.push({
      name: 'small site: CPU per reading at 100 and 1,000 msg/s within 2× the peer\'s',
      status: measured.length === 0 ? 'n/a' : measured.length === ratios.length && measured.every((x) => x.ratio! <= 2) ? 'met' : 'not met',
      value: ratios.map((x) => `${x.ratio === null ? '?' : `${x.ratio.toFixed(2)}×`} at ${int(x.rate)} msg/s${x.key === 'embedded' ? ' (embedded)' : ''}`).join(', ')
    })
  }
  return targets
}
