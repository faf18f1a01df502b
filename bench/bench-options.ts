import { parseArgs } from 'node:util'

export interface BenchOptions {
  mode: 'quick' | 'full'
  /** Measured window of each load step, ms. */
  durationMs: number
  /** Devices (one MQTT connection each) for the ingest, peer, ceiling and query scenarios. */
  devices: number
  /** Offered rates (msg/s) to step through; null: a geometric search from startRate. */
  rates: number[] | null
  startRate: number
  stepFactor: number
  costDevices: number[]
  /** Fixed total rate of the cost-growth scenario; null: 1,000 msg/s, or half of Vigil's max if lower. */
  costRate: number | null
  generators: number
  scenarios: Set<number>
  profile: boolean
  /** Sample Vigil's allocations (freed ones included) during scenario 1's measured steps. */
  allocProfile: boolean
  /** Extra Node.js flags for Vigil's process (e.g. a V8 heap setting to compare against the default). */
  vigilNodeArgs: string[]
  /** --vigil-env: environment variables for every Vigil of the run (after the bench's own). */
  vigilEnv: Record<string, string>
  /** Readings per message: 1 (default), 6 (the simulator's shape), 50 (a backlog upload). */
  readingsPerMessage: number
  /**
   * Scale-out (issue 16): the ingest search also through this many Vigil processes (devices
   * spread over them), beside the 1-process one; every Vigil of the run in cluster mode
   * (REDIS_URL). Null: one process, no Redis.
   */
  instances: number | null
  /** An existing Redis for cluster mode; null: a private redis-server the bench starts. */
  redisUrl: string | null
  /** Cores of the machine the scale-out figures are projected to. */
  projectCores: number
  /** Scenario 7 (small site): these total rates (msg/s), Vigil and the peer each, from smallSiteDevices devices. */
  smallSiteRates: number[]
  smallSiteDevices: number
}

export const usage = `Usage: npm run bench -- [options]

Runs Vigil, a Mosquitto + Node consumer peer pipeline, bare Aedes and InfluxDB side by side on
this machine and prints a table (and writes bench/results/<timestamp>.json).

  --full              longer steps and 5,000 devices in the cost-growth scenario (~10 min)
  --duration S        seconds per measured load step (quick 4, full 20)
  --devices N         devices for the ingest, peer, ceiling and query scenarios (default 1000)
  --rates R1,R2,...   offered rates (msg/s) to step through, lowest first, instead of the search
                      (default: from 1,000 msg/s up in ×1.5 steps — down if 1,000 is not
                      held — then one step between the last rate held and the first not held)
  --start-rate R      where the search starts (default 1000)
  --cost-devices A,B  device counts for the cost-growth scenario (quick 100,1000; full 100,1000,5000)
  --cost-rate R       total msg/s for the cost-growth scenario (default 1000, or half of Vigil's max if lower)
  --generators K      load-generator processes (default 1)
  --scenarios 1,2,..  run only these: 1 Vigil ingest, 2 peer pipeline, 3 ceilings, 4 cost growth,
                      5 query side (5 needs 1), 7 small site (Vigil and the peer at low rates)
  --small-site-rates R1,R2  scenario 7's total rates, msg/s (default 100,1000)
  --small-site-devices N    scenario 7's devices (default 100)
  --readings-per-message N  readings in each message (default 1; 6 is the simulator's shape,
                      50 a backlog upload): rates stay in msg/s, "readings/s stored" counts readings
  --profile           CPU-profile Vigil during scenarios 1 and 5 and print where its time goes
  --vigil-node-arg F  a Node.js flag for Vigil's process (repeatable), e.g. --vigil-node-arg=--max-semi-space-size=8
  --vigil-env K=V     an environment variable for every Vigil of the run (repeatable), e.g.
                      --vigil-env INFLUX_WRITE_GZIP=true (the bench sets ports, stores and data dirs itself)
  --alloc-profile     sample Vigil's allocations (freed ones too) during scenario 1's measured
                      steps and print which functions allocate how much a message (not with --profile)
  --instances N       scale-out: after scenario 1 (1 process), the same search through N Vigil
                      processes, devices spread over them; every Vigil of the run in cluster mode
                      (REDIS_URL, same Postgres and influxd). Runs scenario 1 only unless
                      --scenarios says more. Prints the per-process figures projected to
                      --project-cores
  --redis-url URL     with --instances: this Redis (a prefix of its own, keys deleted after; its
                      CPU from INFO, approximate if others use it) instead of a private redis-server
  --project-cores C   cores of the machine to project to (default 16)
  --help
`

function list (name: string, raw: string, integer: boolean): number[] {
  const values = raw.split(',').map((s) => Number(s.trim()))
  if (values.length === 0 || values.some((v) => !Number.isFinite(v) || v <= 0 || (integer && !Number.isInteger(v)))) {
    throw new Error(`--${name} must be a comma-separated list of positive ${integer ? 'integers' : 'numbers'} (got "${raw}")`)
  }
  return values
}

function positive (name: string, raw: string | undefined, fallback: number, integer = false): number {
  if (raw === undefined) return fallback
  const value = Number(raw)
  if (!Number.isFinite(value) || value <= 0 || (integer && !Number.isInteger(value))) {
    throw new Error(`--${name} must be a positive ${integer ? 'integer' : 'number'} (got "${raw}")`)
  }
  return value
}

/** Parses the command line; throws with a message naming the option on a bad value. */
export function parseBenchOptions (argv: string[]): BenchOptions | 'help' {
  const { values } = parseArgs({
    args: argv,
    options: {
      full: { type: 'boolean', default: false },
      duration: { type: 'string' },
      devices: { type: 'string' },
      rates: { type: 'string' },
      'start-rate': { type: 'string' },
      'cost-devices': { type: 'string' },
      'cost-rate': { type: 'string' },
      generators: { type: 'string' },
      scenarios: { type: 'string' },
      profile: { type: 'boolean', default: false },
      'alloc-profile': { type: 'boolean', default: false },
      'vigil-node-arg': { type: 'string', multiple: true },
      'vigil-env': { type: 'string', multiple: true },
      'readings-per-message': { type: 'string' },
      instances: { type: 'string' },
      'redis-url': { type: 'string' },
      'project-cores': { type: 'string' },
      'small-site-rates': { type: 'string' },
      'small-site-devices': { type: 'string' },
      help: { type: 'boolean', default: false }
    },
    strict: true
  })
  if (values.help) return 'help'
  const full = values.full
  const instances = values.instances === undefined ? null : positive('instances', values.instances, 2, true)
  if (instances !== null && instances < 2) throw new Error('--instances must be at least 2 (1 process is scenario 1 itself)')
  if (instances === null && values['redis-url'] !== undefined) throw new Error('--redis-url needs --instances')
  if (values['redis-url'] !== undefined && !/^rediss?:\/\//.test(values['redis-url'])) {
    throw new Error(`--redis-url must be a redis:// or rediss:// URL (got "${values['redis-url']}")`)
  }
  const scenarios = values.scenarios === undefined ? (instances === null ? [1, 2, 3, 4, 5, 7] : [1]) : list('scenarios', values.scenarios, true)
  if (scenarios.some((s) => s > 7 || s === 6)) throw new Error('--scenarios takes 1 to 5 and 7 (scale-out is --instances)')
  if (instances !== null && !scenarios.includes(1)) throw new Error('--instances needs scenario 1 (its 1-process baseline)')
  if (scenarios.includes(5) && !scenarios.includes(1)) throw new Error('--scenarios: 5 (query side) needs 1 (it runs at half of the maximum 1 finds)')
  if (values['alloc-profile'] === true && !scenarios.includes(1)) throw new Error('--alloc-profile needs scenario 1')
  // Each would bill its own overhead to the other.
  if (values['alloc-profile'] === true && values.profile === true) throw new Error('--alloc-profile and --profile: one at a time')
  const vigilNodeArgs = values['vigil-node-arg'] ?? []
  const badFlag = vigilNodeArgs.find((a) => !/^--[a-z]/.test(a))
  if (badFlag !== undefined) throw new Error(`--vigil-node-arg takes one Node.js flag such as --max-semi-space-size=8 (got "${badFlag}")`)
  const vigilEnv: Record<string, string> = {}
  for (const pair of values['vigil-env'] ?? []) {
    const m = /^([A-Z][A-Z0-9_]*)=(.*)$/s.exec(pair)
    if (m === null) throw new Error(`--vigil-env takes NAME=VALUE, e.g. INFLUX_WRITE_GZIP=true (got "${pair}")`)
    if (/^(HTTP_PORT|MQTT_PORT|INFLUX_URL|INFLUX_BUCKET|DATABASE_URL|VIGIL_DATA_DIR|VIGIL_ADMIN_TOKEN|VIGIL_SECRET_KEY|REDIS_URL|REDIS_PREFIX)$/.test(m[1]!)) {
      throw new Error(`--vigil-env: the bench sets ${m[1]!} itself`)
    }
    vigilEnv[m[1]!] = m[2]!
  }
  return {
    mode: full ? 'full' : 'quick',
    durationMs: positive('duration', values.duration, full ? 20 : 4) * 1000,
    devices: positive('devices', values.devices, 1000, true),
    rates: values.rates === undefined ? null : list('rates', values.rates, false).sort((a, b) => a - b),
    startRate: positive('start-rate', values['start-rate'], 1000),
    stepFactor: 1.5,
    costDevices: values['cost-devices'] === undefined ? (full ? [100, 1000, 5000] : [100, 1000]) : list('cost-devices', values['cost-devices'], true),
    costRate: values['cost-rate'] === undefined ? null : positive('cost-rate', values['cost-rate'], 1000),
    generators: positive('generators', values.generators, 1, true),
    scenarios: new Set(scenarios),
    profile: values.profile,
    allocProfile: values['alloc-profile'],
    vigilNodeArgs,
    vigilEnv,
    readingsPerMessage: positive('readings-per-message', values['readings-per-message'], 1, true),
    instances,
    redisUrl: values['redis-url'] ?? null,
    projectCores: positive('project-cores', values['project-cores'], 16, true),
    smallSiteRates: values['small-site-rates'] === undefined ? [100, 1000] : list('small-site-rates', values['small-site-rates'], false).sort((a, b) => a - b),
    smallSiteDevices: positive('small-site-devices', values['small-site-devices'], 100, true)
  }
}
