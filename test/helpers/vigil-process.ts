import { spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..')

export interface VigilProcess {
  readonly child: ChildProcess
  readonly httpPort: number
  readonly mqttPort: number
  /** Resolves with the exit code (null when killed by a signal). */
  readonly exited: Promise<number | null>
  output (): string
}

/** Ports from the `vigil started` log line (LOG_LEVEL info or lower), for when listening.json cannot be written (full disk). */
function portsFromLog (out: string): { httpPort: number, mqttPort: number } | undefined {
  for (const line of out.split('\n')) {
    if (!line.includes('"vigil started"')) continue
    try {
      const entry = JSON.parse(line) as { http?: string, mqtt?: string }
      const httpPort = Number(new URL(entry.http ?? '').port)
      const mqttPort = Number(new URL(entry.mqtt ?? '').port)
      if (httpPort > 0 && mqttPort > 0) return { httpPort, mqttPort }
    } catch {
      // not a JSON log line
    }
  }
  return undefined
}

/**
 * Runs the real entry point (`node --import tsx main.ts`, or `node <entry>`) and waits until it listens: until it
 * wrote listening.json, or logged `vigil started` (LOG_LEVEL info); 60 s by
 * default (an embedded first start runs PGlite's initdb, which takes tens of seconds on a busy machine).
 * Load shedding is off unless `env` sets API_MAX_EVENT_LOOP_DELAY_MS: a busy machine must not fail tests with 503.
 */
export async function spawnVigil (env: Record<string, string>, dataDir: string, options: { startTimeoutMs?: number, entry?: string } = {}): Promise<VigilProcess> {
  const listeningFile = path.join(dataDir, 'listening.json')
  await fs.rm(listeningFile, { force: true })
  // `entry`: a compiled main.js (scripts/build.mjs), run by plain node; by default the sources.
  const child = spawn(process.execPath, options.entry === undefined ? ['--import', 'tsx', 'main.ts'] : [options.entry], {
    cwd: root,
    env: { ...process.env, HTTP_PORT: '0', MQTT_PORT: '0', LOG_LEVEL: 'warn', VIGIL_DATA_DIR: dataDir, API_MAX_EVENT_LOOP_DELAY_MS: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let out = ''
  child.stdout!.on('data', (d: Buffer) => { out += d.toString() })
  child.stderr!.on('data', (d: Buffer) => { out += d.toString() })
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  const deadline = Date.now() + (options.startTimeoutMs ?? 60_000)
  for (;;) {
    const ports = await fs.readFile(listeningFile, 'utf8').then((t) => JSON.parse(t) as { pid: number, httpPort: number, mqttPort: number }, () => undefined)
    if (ports !== undefined && ports.pid === child.pid) {
      return { child, httpPort: ports.httpPort, mqttPort: ports.mqttPort, exited, output: () => out }
    }
    const logged = portsFromLog(out)
    if (logged !== undefined) return { child, ...logged, exited, output: () => out }
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL')
      throw new Error(`vigil did not start within ${options.startTimeoutMs ?? 60_000} ms (exit ${child.exitCode}):\n${out}`)
    }
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}
