import type { FastifyRequest } from 'fastify'
import { VigilError } from '../../errors/catalogue.ts'
import { parseObservationId } from '../../fhir/observation-ids.ts'
import { createReadingGrouper, news2Breakdown, observationOf, searchsetOf } from '../../fhir/resources.ts'
import type { News2Breakdown, Observation, ReadingGroup } from '../../fhir/resources.ts'
import {
  countOf, dateInterval, invalidParameter, patientIdOf, refuseUnknown, searchParameters, single, tokensOf
} from '../../fhir/search-params.ts'
import { metricsForCode } from '../../fhir/vital-signs.ts'
import { news2Parameters } from '../../alerts/engine/news2.ts'
import type { Spo2Scale } from '../../alerts/engine/news2.ts'
import { compareReadingPositions } from '../../readings/reading-store.ts'
import type { ReadingPosition, ReadingStore } from '../../readings/reading-store.ts'
import type { StoredReading } from '../../readings/reading.ts'
import { decodeReadingCursor, encodeReadingCursor } from '../schemas/common.ts'
import { fhirBase } from './fhir-context.ts'
import type { FhirRouteDeps } from './fhir-context.ts'
import type { ApiInstance } from './route-deps.ts'

const SEARCH_PARAMETERS = ['patient', 'subject', 'code', 'date', '_count', '_sort', '_cursor', '_format'] as const
const DEFAULT_COUNT = 100
const MAX_COUNT = 1000

interface MetricsQuery { patientId: string, metrics: readonly string[] | undefined, from?: number, to?: number, limit: number, after?: ReadingPosition }

/**
 * Readings of several metrics in ReadingPosition order: one store query per metric, merged.
 * The first `limit` of the union are within the first `limit` of each.
 */
async function queryMetrics (store: ReadingStore, q: MetricsQuery): Promise<StoredReading[]> {
  const { metrics, ...rest } = q
  if (metrics === undefined || metrics.length === 1) return await store.query({ ...rest, metric: metrics?.[0] })
  const lists = await Promise.all(metrics.map((metric) => store.query({ ...rest, metric })))
  return lists.flat().sort(compareReadingPositions).slice(0, q.limit)
}

const lastOf = (group: ReadingGroup): StoredReading => [...group].sort(compareReadingPositions).at(-1)!

/**
 * One page of Observations from `count + 2` readings: readings become groups (a BP pair is one);
 * when more readings follow, a lone diastolic at the end is left for the next page (its
 * systolic may be the next reading). Short pages can happen; every page makes progress.
 */
export function pageOfGroups (rows: readonly StoredReading[], count: number, moreRows: boolean): { groups: ReadingGroup[], last: StoredReading | null } {
  const grouper = createReadingGrouper()
  const groups: ReadingGroup[] = []
  for (const r of rows) groups.push(...grouper.push(r))
  groups.push(...grouper.flush())
  if (moreRows && groups.length > 1) {
    const tail = groups.at(-1)!
    if (tail.length === 1 && tail[0].metric === 'bp_diastolic') groups.pop()
  }
  const taken = groups.slice(0, count)
  const more = moreRows || taken.length < groups.length
  return { groups: taken, last: more && taken.length > 0 ? lastOf(taken.at(-1)!) : null }
}

export function fhirObservationRoutes (app: ApiInstance, deps: FhirRouteDeps): void {
  const { patientAccess, readings } = deps

  /** The NEWS2 rule's freshness and the patient's SpO2 scale, when the alert engine is wired in. */
  async function news2Context (patientId: string): Promise<{ freshnessMs: number, spo2Scale: Spo2Scale } | null> {
    const rules = deps.alertRules
    if (rules === undefined) return null
    const rule = rules.rulesFile.current().ruleSet.rules.find((r) => r.kind === 'news2') as { freshnessMs?: number } | undefined
    if (rule?.freshnessMs === undefined) return null
    const scales = await rules.store.spo2Scales([patientId])
    return { freshnessMs: rule.freshnessMs, spo2Scale: scales.get(patientId) ?? 1 }
  }

  /** Each NEWS2 parameter's latest reading within the freshness window before the score. */
  async function breakdownOf (score: StoredReading, context: { freshnessMs: number, spo2Scale: Spo2Scale }): Promise<News2Breakdown | null> {
    const inputs = await Promise.all(news2Parameters.map((metric) => readings.query({
      patientId: score.patientId, metric, from: score.ts - context.freshnessMs, to: score.ts + 1, limit: 1
    })))
    return news2Breakdown(score, inputs.flat(), context.freshnessMs, context.spo2Scale)
  }

  async function observationsOf (groups: readonly ReadingGroup[], patientId: string): Promise<Observation[]> {
    const hasNews2 = groups.some((g) => g[0].metric === 'news2_score')
    const context = hasNews2 ? await news2Context(patientId) : null
    const out: Observation[] = []
    for (const group of groups) {
      const breakdown = context !== null && group[0].metric === 'news2_score' ? await breakdownOf(group[0], context) : null
      out.push(observationOf(group, breakdown))
    }
    return out
  }

  app.get('/Observation', {
    config: { permission: 'readings:read' },
    schema: { hide: true, summary: 'Search a patient\'s Observations (newest first)' }
  }, async (request: FastifyRequest) => {
    const params = searchParameters(request.query)
    refuseUnknown(params, SEARCH_PARAMETERS)
    if (params.has('patient') && params.has('subject')) throw invalidParameter('subject', 'cannot be combined with patient')
    const reference = single(params, 'patient') ?? single(params, 'subject')
    if (reference === undefined) throw invalidParameter('patient', 'is required: Observations are searched per patient')
    const patientId = patientIdOf(reference, params.has('patient') ? 'patient' : 'subject')
    const codeValue = single(params, 'code')
    const tokens = codeValue === undefined ? undefined : tokensOf(codeValue, 'code')
    const { from, to } = dateInterval(params.get('date') ?? [], 'date')
    const sort = single(params, '_sort')
    if (sort !== undefined && sort !== '-date') throw invalidParameter('_sort', 'must be -date (newest first), the only order supported')
    const count = countOf(params, DEFAULT_COUNT, MAX_COUNT)
    const cursor = single(params, '_cursor')
    const after = cursor === undefined ? undefined : decodeReadingCursor(cursor)

    // Which metrics to read, and which Observation codes to keep (a BP code needs both halves read).
    let metrics: string[] | undefined
    let keep: Set<string> | undefined
    if (tokens !== undefined) {
      metrics = []
      keep = new Set()
      for (const token of tokens) {
        const found = metricsForCode(token.system, token.code)
        if (found === undefined) continue
        for (const m of found.metrics) if (!metrics.includes(m)) metrics.push(m)
        for (const c of found.codes) keep.add(`${c.system}|${c.code}`)
      }
    }

    const limit = count + 2
    // Read while the audit row is written (requireAnd); a code that names no metric reads nothing.
    const rows = await patientAccess.requireAnd(request, patientId, { action: 'readings:read' }, async () =>
      metrics !== undefined && metrics.length === 0 ? [] : await queryMetrics(readings, { patientId, metrics, from, to, limit, after }))

    const base = fhirBase(request)
    const link = (extra: Record<string, string>) => {
      const q = new URLSearchParams({ patient: patientId })
      if (codeValue !== undefined) q.set('code', codeValue)
      for (const d of params.get('date') ?? []) q.append('date', d)
      q.set('_count', String(count))
      q.set('_sort', '-date')
      for (const [k, v] of Object.entries(extra)) q.set(k, v)
      return `${base}/Observation?${q.toString()}`
    }
    const self = link(cursor === undefined ? {} : { _cursor: cursor })
    if (metrics !== undefined && metrics.length === 0) return searchsetOf({ self, base, resources: [] })

    const { groups, last } = pageOfGroups(rows, count, rows.length === limit)
    const observations = (await observationsOf(groups, patientId))
      .filter((o) => keep === undefined || keep.has(`${o.code.coding![0]!.system!}|${o.code.coding![0]!.code!}`))
    return searchsetOf({
      self,
      base,
      resources: observations,
      ...(last === null ? {} : { next: link({ _cursor: encodeReadingCursor(last) }) })
    })
  })

  app.get('/Observation/:id', {
    config: { permission: 'readings:read' },
    schema: { hide: true, summary: 'One Observation' }
  }, async (request: FastifyRequest) => {
    const key = parseObservationId((request.params as { id: string }).id)
    if (key === null) throw new VigilError('VIGIL_ERR_NOT_FOUND', 'no Observation with this id')
    const metrics = key.metric === 'bp' || key.metric === 'bp_systolic' || key.metric === 'bp_diastolic' ? ['bp_diastolic', 'bp_systolic'] : [key.metric]
    const rows = (await patientAccess.requireAnd(request, key.patientId, { action: 'readings:read' },
      async () => await queryMetrics(readings, { patientId: key.patientId, metrics, from: key.ts, to: key.ts + 1, limit: 1000 })))
      .filter((r) => r.deviceId === key.deviceId)
    const { groups } = pageOfGroups(rows, rows.length, false)
    const id = (request.params as { id: string }).id
    const observation = (await observationsOf(groups, key.patientId)).find((o) => o.id === id)
    if (observation === undefined) throw new VigilError('VIGIL_ERR_NOT_FOUND', 'no Observation with this id')
    return observation
  })
}
