/*
 * InfluxQL over /query (what Debian's influxd 1.6.7 speaks) for the bench's own checks: counting
 * the readings a step stored and finding sampled readings. Both pipelines write the measurement
 * `reading` with tags device_id and metric and an integer field seq, so one query fits both.
 */

export interface InfluxqlSeries {
  name?: string
  tags?: Record<string, string>
  columns: string[]
  values?: unknown[][]
}

export async function influxql (baseUrl: string, db: string, statement: string, method: 'GET' | 'POST' = 'GET'): Promise<InfluxqlSeries[]> {
  const params = new URLSearchParams({ db, epoch: 'ms', q: statement })
  const res = method === 'GET'
    ? await fetch(`${baseUrl}/query?${params.toString()}`, { signal: AbortSignal.timeout(30_000) })
    : await fetch(`${baseUrl}/query`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: params.toString(),
      signal: AbortSignal.timeout(30_000)
    })
  const body = await res.json() as { results?: Array<{ series?: InfluxqlSeries[], error?: string }>, error?: string }
  const error = body.error ?? body.results?.find((r) => r.error !== undefined)?.error
  if (!res.ok || error !== undefined) throw new Error(`InfluxQL failed (HTTP ${res.status}): ${error ?? 'no detail'}`)
  return (body.results ?? []).flatMap((r) => r.series ?? [])
}

export async function createDatabase (baseUrl: string, name: string): Promise<void> {
  await influxql(baseUrl, name, `CREATE DATABASE "${name}"`, 'POST')
}

/** Readings with a device timestamp in [fromMs, toMs]. */
export async function countReadings (baseUrl: string, db: string, fromMs: number, toMs: number): Promise<number> {
  const series = await influxql(baseUrl, db, `SELECT count("seq") FROM "reading" WHERE time >= ${fromMs}ms AND time <= ${toMs}ms`)
  const value = series[0]?.values?.[0]?.[1]
  return typeof value === 'number' ? value : 0
}

/** Which of these (device, seq) pairs with device timestamps in [fromMs, toMs] are stored; keys `${deviceId}:${seq}`. */
export async function findReadings (baseUrl: string, db: string, wanted: ReadonlyArray<{ deviceId: string, seq: number }>, fromMs: number, toMs: number): Promise<Set<string>> {
  const found = new Set<string>()
  if (wanted.length === 0) return found
  // Device ids come from our own provisioning (UUIDs); still, nothing unescaped reaches InfluxQL.
  const quote = (s: string): string => `'${s.replace(/[\\']/g, (c) => `\\${c}`)}'`
  const any = wanted.map((w) => `("device_id" = ${quote(w.deviceId)} AND "seq" = ${Math.trunc(w.seq)})`).join(' OR ')
  const series = await influxql(baseUrl, db,
    `SELECT "seq" FROM "reading" WHERE time >= ${fromMs}ms AND time <= ${toMs}ms AND (${any}) GROUP BY "device_id"`)
  for (const s of series) {
    const deviceId = s.tags?.device_id
    if (deviceId === undefined) continue
    for (const row of s.values ?? []) found.add(`${deviceId}:${String(row[1])}`)
  }
  return found
}
