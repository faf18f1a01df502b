import http from 'node:http'
import { processUsage } from './child-processes.ts'
import { createDatabase } from './influx-queries.ts'

export interface WriteCeilingResult {
  database: string
  batchLines: number
  concurrency: number
  durationMs: number
  lines: number
  linesPerSecond: number
  batches: number
  batchP50Ms: number | null
  batchP99Ms: number | null
  influxdCpuUsPerLine: number | null
  /** CPU of influxd over the run, in cores. */
  influxdCores: number | null
}

/**
 * InfluxDB's own write ceiling on this machine: batches of line protocol shaped like Vigil's
 * readings (measurement `reading`, tags device_id/metric/patient_id, fields value/unit/seq)
 * posted straight to /write by `concurrency` requests in a loop, for `durationMs`.
 */
export async function measureInfluxWriteCeiling (
  baseUrl: string, influxdPid: number | null, ids: ReadonlyArray<{ deviceId: string, patientId: string }>,
  options: { durationMs: number, batchLines?: number, concurrency?: number, database?: string }
): Promise<WriteCeilingResult> {
  const batchLines = options.batchLines ?? 5000
  const concurrency = options.concurrency ?? 2
  const database = options.database ?? 'ceiling'
  await createDatabase(baseUrl, database)
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency })
  const url = new URL(`/write?db=${database}&precision=ms`, baseUrl)
  // Tag part of each series, computed once; timestamps advance per batch so every point is new.
  const seriesKeys = ids.map((d) => `reading,device_id=${d.deviceId},metric=heart_rate,patient_id=${d.patientId}`)
  let batchNumber = 0
  const base = Date.now() - 3_600_000
  const body = (): string => {
    const b = batchNumber++
    const lines = new Array<string>(batchLines)
    for (let j = 0; j < batchLines; j++) {
      const ts = base + b * Math.ceil(batchLines / seriesKeys.length) + Math.floor(j / seriesKeys.length)
      lines[j] = `${seriesKeys[j % seriesKeys.length]} value=${60 + (j % 40)},unit="/min",seq=${b * batchLines + j}i ${ts}`
    }
    return lines.join('\n')
  }
  const post = (payload: string): Promise<number> => new Promise((resolve, reject) => {
    const started = performance.now()
    const req = http.request(url, { method: 'POST', agent, headers: { 'content-type': 'text/plain; charset=utf-8' } }, (res) => {
      res.resume()
      res.on('end', () => {
        if (res.statusCode === 204) resolve(performance.now() - started)
        else reject(new Error(`InfluxDB /write → HTTP ${res.statusCode}`))
      })
    })
    req.on('error', reject)
    req.end(payload)
  })

  const latencies: number[] = []
  let lines = 0
  const cpuBefore = influxdPid === null ? null : processUsage(influxdPid)
  const started = performance.now()
  const deadline = started + options.durationMs
  const worker = async (): Promise<void> => {
    while (performance.now() < deadline) {
      latencies.push(await post(body()))
      lines += batchLines
    }
  }
  try {
    await Promise.all(Array.from({ length: concurrency }, worker))
  } finally {
    agent.destroy()
  }
  const elapsed = performance.now() - started
  const cpuAfter = influxdPid === null ? null : processUsage(influxdPid)
  latencies.sort((a, b) => a - b)
  const at = (q: number): number | null => latencies.length === 0 ? null : latencies[Math.min(latencies.length - 1, Math.ceil(q * latencies.length) - 1)]!
  const cpuUs = cpuBefore !== null && cpuAfter !== null ? cpuAfter.cpuUs - cpuBefore.cpuUs : null
  return {
    database,
    batchLines,
    concurrency,
    durationMs: elapsed,
    lines,
    linesPerSecond: lines / (elapsed / 1000),
    batches: latencies.length,
    batchP50Ms: at(0.5),
    batchP99Ms: at(0.99),
    influxdCpuUsPerLine: cpuUs === null || lines === 0 ? null : cpuUs / lines,
    influxdCores: cpuUs === null ? null : cpuUs / 1000 / elapsed
  }
}
