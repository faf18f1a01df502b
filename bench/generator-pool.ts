import { forkTypeScript, nextMessage, processUsage, type ManagedProcess } from './child-processes.ts'
import type { ConnectResult, DeviceCredential, GeneratorCommand, RunResult, SampleReport } from './generator-protocol.ts'
import { LatencyHistogram, type LatencySummary } from './latency-histogram.ts'

/** Above this share of one core a generator process is the bottleneck it is meant to measure. */
export const generatorSaturatedFraction = 0.85

export interface ConnectSummary {
  connected: number
  refused: number
  failed: number
  firstError: string | null
  elapsedMs: number
}

export interface LoadSummary {
  offeredRate: number
  offered: number
  sent: number
  behind: number
  ackedInWindow: number
  acked: number
  lost: number
  unacked: number
  disconnects: number
  firstTs: number
  lastTs: number
  windowMs: number
  puback: LatencySummary
  /** Per generator process, share of one core over the window. */
  generatorCpu: number[]
  generatorSaturated: boolean
}

export interface RunLoadOptions {
  /** Total messages per second over all generator processes. */
  rate: number
  durationMs: number
  drainMs: number
  sampleEvery: number
  /** Readings per message (default 1). */
  readingsPerMessage?: number
  onSample?: (sample: SampleReport) => void
}

/**
 * One or more load-generator processes (bench/load-generator.ts) driven together: devices are
 * split between them and each offers its share of the rate.
 */
export class GeneratorPool {
  private readonly processes: ManagedProcess[]
  private readonly deviceCounts: number[]
  private sampleHandler: ((sample: SampleReport) => void) | null = null

  private constructor (processes: ManagedProcess[]) {
    this.processes = processes
    this.deviceCounts = processes.map(() => 0)
    for (const p of processes) {
      p.child.on('message', (message: { type: string }) => {
        if (message.type === 'sample') this.sampleHandler?.(message as SampleReport)
      })
    }
  }

  static async start (count: number): Promise<GeneratorPool> {
    const processes = Array.from({ length: count }, (_, i) => forkTypeScript(`load-generator-${i + 1}`, 'load-generator.ts'))
    await Promise.all(processes.map((p) => nextMessage(p, 'ready', 60_000)))
    return new GeneratorPool(processes)
  }

  get pids (): number[] { return this.processes.map((p) => p.pid) }

  /** RSS of the generator processes together (bytes). */
  rssBytes (): number {
    return this.processes.reduce((n, p) => n + (processUsage(p.pid)?.rssBytes ?? 0), 0)
  }

  /**
   * Connects the devices, split over the generator processes. With several ports (several
   * brokers), each generator process spreads its devices round-robin over the ports: every
   * broker gets an equal share of the devices, and so of the rate, from every generator.
   */
  async connect (host: string, port: number | readonly number[], devices: DeviceCredential[], concurrency = 64): Promise<ConnectSummary> {
    const ports = typeof port === 'number' ? [port] : port
    if (ports.length === 0) throw new Error('connect: no port')
    const k = this.processes.length
    // Generator i takes devices i, i + k, i + 2k, …: the port cycles along its own list.
    const assigned = ports.length === 1 ? devices : devices.map((d, j) => ({ ...d, port: ports[Math.floor(j / k) % ports.length]! }))
    const shares = this.processes.map((_, i) => assigned.filter((_, j) => j % this.processes.length === i))
    const replies = await Promise.all(this.processes.map((p, i) => {
      this.deviceCounts[i] = shares[i]!.length
      const reply = nextMessage<ConnectResult>(p, 'connected')
      p.child.send({ type: 'connect', host, port: ports[0]!, devices: shares[i]!, concurrency: Math.ceil(concurrency / this.processes.length) } satisfies GeneratorCommand)
      return reply
    }))
    return {
      connected: replies.reduce((n, r) => n + r.connected, 0),
      refused: replies.reduce((n, r) => n + r.refused, 0),
      failed: replies.reduce((n, r) => n + r.failed, 0),
      firstError: replies.find((r) => r.firstError !== null)?.firstError ?? null,
      elapsedMs: Math.max(...replies.map((r) => r.elapsedMs))
    }
  }

  async run (options: RunLoadOptions): Promise<LoadSummary> {
    const total = this.deviceCounts.reduce((a, b) => a + b, 0)
    this.sampleHandler = options.onSample ?? null
    try {
      const replies = await Promise.all(this.processes.map((p, i) => {
        const reply = nextMessage<RunResult>(p, 'ran')
        const share = total === 0 ? 0 : options.rate * this.deviceCounts[i]! / total
        p.child.send({
          type: 'run',
          ratePerSecond: share,
          durationMs: options.durationMs,
          drainMs: options.drainMs,
          // Each process samples its own 1-in-N, so the overall rate of samples is the same.
          sampleEvery: options.sampleEvery,
          readingsPerMessage: options.readingsPerMessage ?? 1
        } satisfies GeneratorCommand)
        return reply
      }))
      const latency = new LatencyHistogram()
      for (const r of replies) latency.add(r.latency)
      const sum = (key: keyof RunResult): number => replies.reduce((n, r) => n + (r[key] as number), 0)
      const generatorCpu = replies.map((r) => r.cpuFraction)
      return {
        offeredRate: options.rate,
        offered: sum('offered'),
        sent: sum('sent'),
        behind: sum('behind'),
        ackedInWindow: sum('ackedInWindow'),
        acked: sum('acked'),
        lost: sum('lost'),
        unacked: sum('unacked'),
        disconnects: sum('disconnects'),
        firstTs: Math.min(...replies.filter((r) => r.sent > 0).map((r) => r.firstTs)),
        lastTs: Math.max(...replies.map((r) => r.lastTs)),
        windowMs: Math.max(...replies.map((r) => r.windowMs)),
        puback: latency.summary(),
        generatorCpu,
        generatorSaturated: generatorCpu.some((c) => c > generatorSaturatedFraction)
      }
    } finally {
      this.sampleHandler = null
    }
  }

  async disconnect (): Promise<void> {
    await Promise.all(this.processes.map((p) => {
      const reply = nextMessage(p, 'disconnected', 30_000)
      p.child.send({ type: 'disconnect' } satisfies GeneratorCommand)
      return reply
    }))
    this.deviceCounts.fill(0)
  }

  async close (): Promise<void> {
    await Promise.all(this.processes.map((p) => p.stop('SIGTERM', 3000)))
  }
}
