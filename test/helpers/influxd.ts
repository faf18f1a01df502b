import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { accessSync, constants, createWriteStream, readFileSync } from 'node:fs'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { stablePort } from './ports.ts'

/** A real influxd (Debian's `influxdb` package, 1.6.7) owned by one test file. */
export interface Influxd {
  /** Base URL of its HTTP API, e.g. `http://127.0.0.1:41234`. */
  readonly url: string
  readonly port: number
  /** Holds meta/, data/, wal/, influxdb.conf and influxd.log. */
  readonly dir: string
  /** Starts it again on the same port and data (after stop() or kill()). */
  start (): Promise<void>
  /** SIGTERM, waits for exit. */
  stop (): Promise<void>
  /** SIGKILL, waits for exit: a crash, for recovery tests. */
  kill (): Promise<void>
  /** Stops it and removes its directory. */
  close (): Promise<void>
  /** Rewrites influxdb.conf with these options; they take effect at the next start(). */
  configure (options: InfluxdOptions): Promise<void>
}

export interface InfluxdOptions {
  /** [data] max-values-per-tag (InfluxDB's default 100000; 0 = unlimited). */
  maxValuesPerTag?: number
}

export const influxdBinary = process.env.INFLUXD ?? '/usr/bin/influxd'

const startTimeoutMs = 20_000


function configFile (dir: string, httpPort: number, rpcPort: number, options: InfluxdOptions = {}): string {
  // Everything that listens is either bound to 127.0.0.1 on a free port or disabled, so
  // parallel test files (and a system influxd on 8086/8088) never collide.
  // `reporting-disabled` is upstream's key, `reporting-enabled` Debian's patched one; unknown
  // keys are ignored, so both are set.
  return `reporting-disabled = true
reporting-enabled = false
bind-address = "127.0.0.1:${rpcPort}"

[meta]
  dir = "${path.join(dir, 'meta')}"
  logging-enabled = false

[data]
  dir = "${path.join(dir, 'data')}"
  wal-dir = "${path.join(dir, 'wal')}"
  wal-fsync-delay = "0s"
  query-log-enabled = false
${options.maxValuesPerTag === undefined ? '' : `  max-values-per-tag = ${options.maxValuesPerTag}\n`}
[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[continuous_queries]
  enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:${httpPort}"
  auth-enabled = false
  log-enabled = false
  pprof-enabled = false
  unix-socket-enabled = false

[ifql]
  enabled = false

[logging]
  level = "warn"
  suppress-logo = true

[[graphite]]
  enabled = false

[[collectd]]
  enabled = false

[[opentsdb]]
  enabled = false

[[udp]]
  enabled = false
`
}

/**
 * Starts a private influxd in a temp dir and waits until `/ping` answers. Fails loudly when
 * influxd is missing: these tests must talk to a real InfluxDB, never skip.
 */
export async function startInfluxd (options: InfluxdOptions = {}): Promise<Influxd> {
  try {
    accessSync(influxdBinary, constants.X_OK)
  } catch {
    throw new Error(`influxd not found at ${influxdBinary}: install it with \`apt-get install -y influxdb\` (Debian's InfluxDB 1.6.7), or set INFLUXD to its path`)
  }
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-influxd-'))
  const port = await stablePort()
  let rpcPort = await stablePort()
  while (rpcPort === port) rpcPort = await stablePort()
  const configPath = path.join(dir, 'influxdb.conf')
  const logPath = path.join(dir, 'influxd.log')
  await fs.writeFile(configPath, configFile(dir, port, rpcPort, options))
  const url = `http://127.0.0.1:${port}`

  let child: ChildProcess | null = null
  let exited: Promise<void> = Promise.resolve()
  // A test process that dies without teardown must not leave influxd running.
  const killOnExit = (): void => { child?.kill('SIGKILL') }
  process.on('exit', killOnExit)

  const logTail = (): string => {
    try {
      return readFileSync(logPath, 'utf8').split('\n').slice(-15).join('\n')
    } catch {
      return ''
    }
  }

  async function start (): Promise<void> {
    if (child !== null) throw new Error('influxd is already running')
    const log = createWriteStream(logPath, { flags: 'a' })
    const proc = spawn(influxdBinary, ['run', '-config', configPath], { stdio: ['ignore', 'pipe', 'pipe'] })
    proc.stdout.pipe(log)
    proc.stderr.pipe(log)
    child = proc
    let exitCode: number | string | null = null
    exited = new Promise((resolve) => {
      proc.on('exit', (code, signal) => {
        exitCode = code ?? signal
        if (child === proc) child = null
        resolve()
      })
    })
    const spawnError = new Promise<Error>((resolve) => proc.on('error', resolve))
    const deadline = Date.now() + startTimeoutMs
    while (Date.now() < deadline) {
      const failed = await Promise.race([spawnError, sleep(50, null)])
      if (failed !== null) throw new Error(`influxd could not be started: ${failed.message}`)
      if (exitCode !== null) throw new Error(`influxd exited (${String(exitCode)}) while starting:\n${logTail()}`)
      try {
        const res = await fetch(`${url}/ping`, { signal: AbortSignal.timeout(1000) })
        if (res.status === 204) return
      } catch {
        // not listening yet
      }
    }
    proc.kill('SIGKILL')
    await exited
    throw new Error(`influxd did not answer /ping within ${startTimeoutMs} ms:\n${logTail()}`)
  }

  async function signal (name: NodeJS.Signals): Promise<void> {
    const proc = child
    if (proc === null) return
    proc.kill(name)
    const done = await Promise.race([exited.then(() => true), sleep(10_000, false, { ref: false })])
    if (!done) {
      proc.kill('SIGKILL')
      await exited
    }
  }

  try {
    await start()
  } catch (err) {
    process.off('exit', killOnExit)
    await fs.rm(dir, { recursive: true, force: true })
    throw err
  }
  return {
    url,
    port,
    dir,
    start,
    stop: async () => { await signal('SIGTERM') },
    kill: async () => { await signal('SIGKILL') },
    configure: async (next) => { await fs.writeFile(configPath, configFile(dir, port, rpcPort, next)) },
    close: async () => {
      await signal('SIGTERM')
      process.off('exit', killOnExit)
      await fs.rm(dir, { recursive: true, force: true })
    }
  }
}
