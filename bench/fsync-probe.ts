import fs from 'node:fs/promises'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { LatencyHistogram, type LatencySummary } from './latency-histogram.ts'

/**
 * fdatasync latency of a 200-byte append, sampled every `intervalMs` while a step runs, on the
 * filesystem Vigil's spool uses. A durable-before-PUBACK pipeline cannot acknowledge faster than
 * this, and on a shared machine other processes' fsyncs (and syncfs) move it a lot: the probe
 * shows how much, at five small writes a second.
 */
export class FsyncProbe {
  private readonly latency = new LatencyHistogram()
  private running = false
  private loop: Promise<void> | null = null

  constructor (private readonly dir: string, private readonly intervalMs = 200) {}

  start (): void {
    this.running = true
    this.loop = this.run().catch(() => { this.running = false })
  }

  private async run (): Promise<void> {
    const file = path.join(this.dir, `fsync-probe-${process.pid}`)
    const handle = await fs.open(file, 'w')
    const record = Buffer.alloc(200, 1)
    try {
      while (this.running) {
        await handle.write(record)
        const started = performance.now()
        await handle.datasync()
        this.latency.recordMs(performance.now() - started)
        await sleep(this.intervalMs)
      }
    } finally {
      await handle.close()
      await fs.rm(file, { force: true })
    }
  }

  async stop (): Promise<LatencySummary> {
    this.running = false
    await this.loop
    return this.latency.summary()
  }
}
