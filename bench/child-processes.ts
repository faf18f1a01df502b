import { execFileSync, fork, spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { createWriteStream, readFileSync, readdirSync } from 'node:fs'
import fs from 'node:fs/promises'
import net from 'node:net'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'

/** The checkout's root: Vigil's sources, dist/ and node_modules live there. */
export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')

const clockTicksPerSecond = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100
  } catch {
    return 100
  }
})()

export interface ProcessUsage {
  /**
   * User + system CPU time since the process started, µs, with that of its children it has
   * waited for (cutime + cstime) and of its live descendants: the helper shell of Vigil's
   * embedded default, which runs `sync -f` for it (store/filesystem-sync.ts).
   */
  cpuUs: number
  /** The process's own resident set (VmRSS), descendants not included. */
  rssBytes: number
}

/**
 * The fields of a /proc/<pid>/stat text after the command name, which may hold spaces: they start
 * at its closing parenthesis, so [0] is field 3 (state), [1] the ppid, [11] utime (proc(5)).
 */
function statFields (stat: string): string[] {
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')
}

/** utime + stime + cutime + cstime of one process (the text of its /proc/<pid>/stat), clock ticks. */
function cpuTicks (stat: string): number {
  const fields = statFields(stat)
  return Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14])
}

/** Every live process's pid and /proc/<pid>/stat text (those that exit during the scan are skipped). */
function * liveProcesses (): Generator<{ pid: number, stat: string }> {
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    let stat: string
    try {
      stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
    } catch { continue /* exited meanwhile */ }
    yield { pid: Number(entry), stat }
  }
}

/** CPU ticks of every live descendant of `pid` (children, their children …). */
function descendantTicks (pid: number): number {
  const children = new Map<number, number[]>()
  const ticks = new Map<number, number>()
  for (const { pid: child, stat } of liveProcesses()) {
    const ppid = Number(statFields(stat)[1])
    const siblings = children.get(ppid)
    if (siblings === undefined) children.set(ppid, [child])
    else siblings.push(child)
    ticks.set(child, cpuTicks(stat))
  }
  let total = 0
  const stack = [...(children.get(pid) ?? [])]
  while (stack.length > 0) {
    const next = stack.pop()!
    total += ticks.get(next) ?? 0
    stack.push(...(children.get(next) ?? []))
  }
  return total
}

/**
 * CPU (utime + stime + cutime + cstime from /proc/<pid>/stat, plus its live descendants') and
 * RSS (VmRSS) of one process; null when it is gone. A descendant that exits between two readings
 * moves its CPU into its parent's cutime when reaped, so differences stay whole.
 */
export function processUsage (pid: number): ProcessUsage | null {
  try {
    const ticks = cpuTicks(readFileSync(`/proc/${pid}/stat`, 'utf8')) + descendantTicks(pid)
    const status = readFileSync(`/proc/${pid}/status`, 'utf8')
    const rssKb = Number(/^VmRSS:\s+(\d+)\s+kB/m.exec(status)?.[1] ?? 0)
    return { cpuUs: ticks * 1e6 / clockTicksPerSecond, rssBytes: rssKb * 1024 }
  } catch {
    return null
  }
}

/**
 * CPU (µs, utime + stime) of a process's main thread alone (/proc/<pid>/task/<pid>/stat): for
 * Node, the event loop, which no number of cores makes faster. Null when the process is gone.
 */
export function mainThreadCpuUs (pid: number): number | null {
  try {
    const fields = statFields(readFileSync(`/proc/${pid}/task/${pid}/stat`, 'utf8'))
    return (Number(fields[11]) + Number(fields[12])) * 1e6 / clockTicksPerSecond
  } catch {
    return null
  }
}

/** CPU time (µs) all cores of the machine spent busy since boot, from /proc/stat. */
export function machineBusyCpuUs (): number {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!
  // cpu  user nice system idle iowait irq softirq steal guest guest_nice
  const [user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).slice(1).map(Number)
  return ((user ?? 0) + (nice ?? 0) + (system ?? 0) + (irq ?? 0) + (softirq ?? 0) + (steal ?? 0)) * 1e6 / clockTicksPerSecond
}

/**
 * Milliseconds the machine's disks have spent with I/O in flight (/proc/diskstats, field 13),
 * the largest over real disks: its rate of change is the busiest disk's utilization.
 */
export function diskBusyMs (): number {
  let busiest = 0
  try {
    for (const line of readFileSync('/proc/diskstats', 'utf8').split('\n')) {
      const fields = line.trim().split(/\s+/)
      const name = fields[2] ?? ''
      // Whole disks only (not partitions, loop or zram devices).
      if (!/^(vd[a-z]+|sd[a-z]+|xvd[a-z]+|nvme\d+n\d+)$/.test(name)) continue
      busiest = Math.max(busiest, Number(fields[12]) || 0)
    }
  } catch { /* not Linux: reported as 0 */ }
  return busiest
}

/** Sums processUsage over several processes (a pipeline made of more than one). */
export function totalUsage (pids: readonly number[]): ProcessUsage {
  let cpuUs = 0
  let rssBytes = 0
  for (const pid of pids) {
    const u = processUsage(pid)
    if (u !== null) {
      cpuUs += u.cpuUs
      rssBytes += u.rssBytes
    }
  }
  return { cpuUs, rssBytes }
}

/** Our direct child whose command name is `comm` (e.g. the influxd that test/helpers/influxd.ts spawned). */
export function findChildPid (comm: string): number | null {
  for (const { pid, stat } of liveProcesses()) {
    const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'))
    if (name === comm && Number(statFields(stat)[1]) === process.pid) return pid
  }
  return null
}

export async function freePort (): Promise<number> {
  return await new Promise((resolve, reject) => {
    const server = net.createServer()
    server.unref()
    server.on('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() => {
        if (address !== null && typeof address === 'object') resolve(address.port)
        else reject(new Error('no port assigned'))
      })
    })
  })
}

/** A child we started, stopped by signal and awaited. */
export interface ManagedProcess {
  readonly name: string
  readonly pid: number
  readonly child: ChildProcess
  readonly exited: Promise<void>
  /** SIGTERM (or `signal`), then SIGKILL after `graceMs`; resolves once it has exited. */
  stop (signal?: NodeJS.Signals, graceMs?: number): Promise<void>
}

const running = new Set<ManagedProcess>()

function manage (name: string, child: ChildProcess): ManagedProcess {
  if (child.pid === undefined) throw new Error(`${name} could not be started`)
  let done = child.exitCode !== null || child.signalCode !== null
  const exited = done ? Promise.resolve() : new Promise<void>((resolve) => child.once('exit', () => { done = true; resolve() }))
  const managed: ManagedProcess = {
    name,
    pid: child.pid,
    child,
    exited,
    async stop (signal = 'SIGTERM', graceMs = 5000) {
      if (!done) {
        child.kill(signal)
        const finished = await Promise.race([exited.then(() => true), sleep(graceMs, false, { ref: false })])
        if (!finished) {
          child.kill('SIGKILL')
          await exited
        }
      }
      running.delete(managed)
    }
  }
  running.add(managed)
  void exited.then(() => running.delete(managed))
  return managed
}

/** Every child still running (for cleanup on exit and Ctrl-C). */
export function runningProcesses (): ManagedProcess[] {
  return [...running]
}

// Whatever happens to this process, no child outlives it (SIGKILL is synchronous to send).
process.on('exit', () => {
  for (const p of running) p.child.kill('SIGKILL')
})

/** Forks a TypeScript file of bench/ under tsx with an IPC channel. */
export function forkTypeScript (name: string, file: string, args: string[] = [], env: NodeJS.ProcessEnv = process.env): ManagedProcess {
  const child = fork(path.join(repoRoot, 'bench', file), args, {
    cwd: repoRoot,
    execArgv: ['--import', 'tsx'],
    env,
    stdio: ['ignore', 'inherit', 'inherit', 'ipc']
  })
  return manage(name, child)
}

function logTail (file: string, lines = 20): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n')
  } catch {
    return ''
  }
}

export interface VigilProcess extends ManagedProcess {
  readonly httpPort: number
  readonly mqttPort: number
  readonly baseUrl: string
  readonly logFile: string
}

export interface StartVigilOptions {
  dataDir: string
  /** Null for both: the embedded default (PGlite in the data directory), as `npm start` runs. */
  databaseUrl: string | null
  influxUrl: string | null
  influxBucket: string
  adminToken: string
  logFile: string
  /** Extra arguments for node before the script (e.g. --cpu-prof). */
  nodeArgs?: string[]
  /** More environment (e.g. REDIS_URL and REDIS_PREFIX for cluster mode). */
  env?: Record<string, string>
}

let built = false
/** Compiles the service into dist/ once per bench run (scripts/build.mjs, as `npm start` does). */
function buildOnce (): void {
  if (built) return
  execFileSync(process.execPath, [path.join(repoRoot, 'scripts/build.mjs'), '--quiet'], { cwd: repoRoot, stdio: 'inherit' })
  built = true
}

/**
 * Starts Vigil as its own process, as `npm start` and the image run it (`node dist/main.js`,
 * compiled once per run: no TypeScript loader in the process measured), and waits for the
 * listening.json it writes once everything is up.
 */
export async function startVigil (options: StartVigilOptions): Promise<VigilProcess> {
  buildOnce()
  const listeningFile = path.join(options.dataDir, 'listening.json')
  await fs.mkdir(options.dataDir, { recursive: true })
  await fs.rm(listeningFile, { force: true })
  const env: NodeJS.ProcessEnv = { ...process.env }
  for (const key of Object.keys(env)) {
    if (/^(HTTP_|MQTT_|INFLUX_|VIGIL_|REDIS_|DATABASE_URL$|LOG_LEVEL$|WORKER_THREADS$)/.test(key)) delete env[key]
  }
  Object.assign(env, {
    ...(options.databaseUrl === null ? {} : { DATABASE_URL: options.databaseUrl }),
    ...(options.influxUrl === null ? {} : { INFLUX_URL: options.influxUrl, INFLUX_BUCKET: options.influxBucket }),
    HTTP_PORT: '0',
    MQTT_PORT: '0',
    VIGIL_DATA_DIR: options.dataDir,
    VIGIL_ADMIN_TOKEN: options.adminToken,
    LOG_LEVEL: 'warn',
    // Every simulated device connects from 127.0.0.1: a per-address connect rate limit meant for
    // the internet would throttle the fleet (0 = no limit; ignored by versions without it).
    MQTT_CONNECT_RATE_PER_ADDRESS: '0'
  }, options.env)
  const log = createWriteStream(options.logFile, { flags: 'a' })
  const child = spawn(process.execPath, [...(options.nodeArgs ?? []), path.join(repoRoot, 'dist', 'main.js')], {
    cwd: repoRoot, env, stdio: ['ignore', 'pipe', 'pipe']
  })
  child.stdout!.pipe(log)
  child.stderr!.pipe(log)
  const managed = manage('vigil', child)
  // A first embedded start makes its database (initdb in a child process): longer on a busy machine.
  const deadline = Date.now() + (options.databaseUrl === null ? 180_000 : 60_000)
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`Vigil exited (${child.exitCode ?? child.signalCode}) while starting; its log (${options.logFile}):\n${logTail(options.logFile)}`)
    }
    try {
      const listening = JSON.parse(await fs.readFile(listeningFile, 'utf8')) as { pid: number, httpPort: number, mqttPort: number }
      if (listening.pid === child.pid) {
        return Object.assign(managed, {
          httpPort: listening.httpPort,
          mqttPort: listening.mqttPort,
          baseUrl: `http://127.0.0.1:${listening.httpPort}`,
          logFile: options.logFile
        })
      }
    } catch { /* not written yet */ }
    await sleep(100)
  }
  await managed.stop('SIGKILL')
  throw new Error(`Vigil did not write ${listeningFile} in time; its log:\n${logTail(options.logFile)}`)
}

export interface MosquittoProcess extends ManagedProcess {
  readonly port: number
}

/**
 * A private Mosquitto on a free loopback port (the machine's own, on 1883, is left alone).
 * Queue limits are raised from the defaults (1000 queued, 20 in flight per client) so a
 * consumer that falls briefly behind is not handed silent drops: the peer gets a fair setup.
 */
export async function startMosquitto (dir: string): Promise<MosquittoProcess> {
  const port = await freePort()
  const configFile = path.join(dir, 'mosquitto.conf')
  const logFile = path.join(dir, 'mosquitto.log')
  await fs.writeFile(configFile, [
    `listener ${port} 127.0.0.1`,
    'allow_anonymous true',
    'persistence false',
    'max_queued_messages 1000000',
    'max_inflight_messages 1000',
    'log_dest stderr',
    'log_type error',
    'log_type warning',
    ''
  ].join('\n'))
  await fs.chmod(dir, 0o755)
  await fs.chmod(configFile, 0o644)
  const log = createWriteStream(logFile, { flags: 'a' })
  const child = spawn('/usr/sbin/mosquitto', ['-c', configFile], { stdio: ['ignore', 'pipe', 'pipe'] })
  child.stdout!.pipe(log)
  child.stderr!.pipe(log)
  const managed = manage('mosquitto', child)
  const deadline = Date.now() + 10_000
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`mosquitto exited (${child.exitCode}) while starting:\n${logTail(logFile)}`)
    const open = await new Promise<boolean>((resolve) => {
      const socket = net.connect({ host: '127.0.0.1', port }, () => { socket.destroy(); resolve(true) })
      socket.on('error', () => resolve(false))
    })
    if (open) return Object.assign(managed, { port })
    await sleep(50)
  }
  await managed.stop('SIGKILL')
  throw new Error(`mosquitto did not listen on ${port} within 10 s:\n${logTail(logFile)}`)
}

/** Resolves with the next IPC message of `type` from the child (rejects on its `error` report or exit). */
export function nextMessage<T extends { type: string }> (proc: ManagedProcess, type: T['type'], timeoutMs = 600_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const onMessage = (message: { type: string, message?: string }): void => {
      if (message.type === type) {
        done()
        resolve(message as unknown as T)
      } else if (message.type === 'error') {
        done()
        reject(new Error(`${proc.name}: ${message.message ?? 'failed'}`))
      }
    }
    const onExit = (code: number | null, signal: string | null): void => {
      done()
      reject(new Error(`${proc.name} exited (${code ?? signal}) while the bench waited for '${type}'`))
    }
    const timer = setTimeout(() => {
      done()
      reject(new Error(`${proc.name}: no '${type}' within ${timeoutMs} ms`))
    }, timeoutMs)
    const done = (): void => {
      clearTimeout(timer)
      proc.child.off('message', onMessage)
      proc.child.off('exit', onExit)
    }
    proc.child.on('message', onMessage)
    proc.child.on('exit', onExit)
  })
}
