import { Type } from '@fastify/type-provider-typebox'
import type { Static, TSchema } from '@fastify/type-provider-typebox'
import { Ajv } from 'ajv'
import type { ErrorObject, ValidateFunction } from 'ajv'
import { LineCounter, isMap, isSeq, parseDocument } from 'yaml'
import type { Document } from 'yaml'
import { lookupMetric } from '../../readings/vitals-catalogue.ts'
import type { EscalationPolicy, Severity, WebhookTarget } from '../contract.ts'
import { news2BandOrder } from './news2.ts'
import type { News2Band } from './news2.ts'
import { originOf, WEBHOOK_SECRET_PREFIX, webhookUrlProblem } from '../webhook-address.ts'

// ---------------------------------------------------------------------------------------
// The rules file as written (YAML), schema first. README "Alert rules" documents every field.
// ---------------------------------------------------------------------------------------

const DURATION_PATTERN = '^[0-9]{1,9}(ms|s|m|h|d)$'
const Duration = Type.String({ pattern: DURATION_PATTERN, description: 'e.g. 30s, 5m, 2h, 1d' })
// An enum, not a union of literals: one error ("must be one of …") instead of one per literal.
const SeverityName = Type.Unsafe<Severity>({ type: 'string', enum: ['low', 'medium', 'high', 'critical'] })
const RULE_ID_PATTERN = '^[a-z0-9][a-z0-9_-]{0,63}$'
const NAME_PATTERN = '^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$'
const ENV_PATTERN = '^[A-Z_][A-Z0-9_]{0,127}$'
const URL_PATTERN = '^https?://'
const RuleId = Type.String({ pattern: RULE_ID_PATTERN, description: 'lower case letters, digits, _ and -' })
const Name = Type.String({ pattern: NAME_PATTERN })
const Metric = Type.String({ minLength: 1, maxLength: 64 })

const common = {
  id: RuleId,
  description: Type.Optional(Type.String({ maxLength: 500 })),
  escalation: Type.Optional(Name),
  reAlertAfter: Type.Optional(Type.String({ pattern: DURATION_PATTERN, description: 'An alert resolved by hand while the condition holds re-opens after this (default 45s)' }))
}

const ThresholdDocument = Type.Object({
  ...common,
  kind: Type.Literal('threshold'),
  severity: SeverityName,
  metric: Metric,
  above: Type.Optional(Type.Number()),
  below: Type.Optional(Type.Number()),
  for: Type.Optional(Duration),
  nOfM: Type.Optional(Type.Object({ n: Type.Integer({ minimum: 1 }), m: Type.Integer({ minimum: 1, maximum: 100 }) }, { additionalProperties: false })),
  hysteresis: Type.Optional(Type.Number({ minimum: 0 })),
  clearAfter: Type.Optional(Duration)
}, { additionalProperties: false })

const RateOfChangeDocument = Type.Object({
  ...common,
  kind: Type.Literal('rate_of_change'),
  severity: SeverityName,
  metric: Metric,
  window: Duration,
  fallBy: Type.Optional(Type.Number({ exclusiveMinimum: 0 })),
  riseBy: Type.Optional(Type.Number({ exclusiveMinimum: 0 })),
  minReadings: Type.Optional(Type.Integer({ minimum: 2, maximum: 10_000 })),
  hysteresis: Type.Optional(Type.Number({ minimum: 0 })),
  clearAfter: Type.Optional(Duration)
}, { additionalProperties: false })

const NoDataDocument = Type.Object({
  ...common,
  kind: Type.Literal('no_data'),
  severity: SeverityName,
  metric: Type.Optional(Metric),
  after: Duration,
  lowBatteryPercent: Type.Optional(Type.Integer({ minimum: 0, maximum: 100 }))
}, { additionalProperties: false })

const News2Document = Type.Object({
  ...common,
  kind: Type.Literal('news2'),
  freshness: Duration,
  bands: Type.Object({
    low: Type.Optional(SeverityName),
    low_medium: Type.Optional(SeverityName),
    medium: Type.Optional(SeverityName),
    high: Type.Optional(SeverityName)
  }, { additionalProperties: false, description: 'Severity per NEWS2 response band; a band left out does not alert' }),
  minParameters: Type.Optional(Type.Integer({ minimum: 1, maximum: 7, description: 'Fewer fresh parameters than this: no alert change (default 1)' })),
  clearAfter: Type.Optional(Duration)
}, { additionalProperties: false })

const EscalationDocument = Type.Object({
  id: Name,
  tiers: Type.Array(Type.Object({
    notify: Type.Array(Name, { minItems: 1, maxItems: 32 }),
    escalateAfter: Duration
  }, { additionalProperties: false }), { minItems: 1, maxItems: 16 })
}, { additionalProperties: false })

const WebhookDocument = Type.Object({
  id: Name,
  url: Type.String({ pattern: URL_PATTERN, maxLength: 2048 }),
  secretEnv: Type.String({ pattern: ENV_PATTERN }),
  minSeverity: Type.Optional(SeverityName)
}, { additionalProperties: false })

export const RuleSetDocument = Type.Object({
  rules: Type.Array(Type.Unknown(), { maxItems: 1000 }),
  escalationPolicies: Type.Optional(Type.Array(Type.Unknown(), { maxItems: 100 })),
  webhooks: Type.Optional(Type.Array(Type.Unknown(), { maxItems: 100 })),
  // Origins (scheme://host[:port]) webhooks may reach although not https or not public.
  webhookAllowList: Type.Optional(Type.Array(Type.String({ maxLength: 2048 }), { maxItems: 100 }))
}, { additionalProperties: false })

const kindSchemas: Record<string, TSchema> = {
  threshold: ThresholdDocument,
  rate_of_change: RateOfChangeDocument,
  no_data: NoDataDocument,
  news2: News2Document
}

// ---------------------------------------------------------------------------------------
// The rules as the engine uses them: durations in ms, defaults filled in.
// ---------------------------------------------------------------------------------------

interface RuleCommon {
  id: string
  description: string | null
  severity: Severity
  escalationPolicy: string | null
  /** An alert resolved by hand while its condition still holds re-opens once this has passed. */
  reAlertMs: number
}

export interface ThresholdRule extends RuleCommon {
  kind: 'threshold'
  metric: string
  above: number | null
  below: number | null
  /** Breach must last this long (0: the first breaching reading fires). */
  forMs: number
  /** Or: at least n of the last m readings breach. */
  nOfM: { n: number, m: number } | null
  /** Clears only once the value is back past the bound by this much. */
  hysteresis: number
  /** …and stays there this long. */
  clearAfterMs: number
}

export interface RateOfChangeRule extends RuleCommon {
  kind: 'rate_of_change'
  metric: string
  windowMs: number
  fallBy: number | null
  riseBy: number | null
  minReadings: number
  hysteresis: number
  clearAfterMs: number
}

export interface NoDataRule extends RuleCommon {
  kind: 'no_data'
  /** null: any reading from the device counts. */
  metric: string | null
  afterMs: number
  lowBatteryPercent: number
}

export interface News2Rule extends RuleCommon {
  kind: 'news2'
  freshnessMs: number
  severityByBand: Partial<Record<News2Band, Severity>>
  /** A partial score from fewer parameters neither fires nor clears. */
  minParameters: number
  clearAfterMs: number
}

export type Rule = ThresholdRule | RateOfChangeRule | NoDataRule | News2Rule

export interface RuleSet {
  rules: Rule[]
  escalationPolicies: EscalationPolicy[]
  webhooks: WebhookTarget[]
}

export interface RuleSetProblem {
  /** Where, e.g. `rules[3].above`. */
  path: string
  /** Names the rule and field: `rules[3] (id "tachy"): above must be a number`. */
  message: string
  /** 1-based line and column in the document where the problem is (the nearest node that exists). */
  line?: number
  column?: number
}

/** syntax: the text is not YAML (or JSON); schema: it is, but not a valid rules file. */
export type ParseResult = { ok: true, ruleSet: RuleSet } | { ok: false, kind: 'syntax' | 'schema', problems: RuleSetProblem[] }

// The file is the operator's, not the network's: report every problem at once.
const ajv = new Ajv({ allErrors: true, strict: false })
const validators = new Map<TSchema, ValidateFunction>()
function validatorFor (schema: TSchema): ValidateFunction {
  let v = validators.get(schema)
  if (v === undefined) {
    v = ajv.compile(schema)
    validators.set(schema, v)
  }
  return v
}

/**
 * Default re-alert interval. The engine restates a firing condition every third of it, so a
 * hand-resolved alert whose condition persists is back 45–60 s after the resolve (given a
 * reading at least every 15 s): alarm practice wants a persisting cause back within a minute.
 */
export const DEFAULT_RE_ALERT_MS = 45_000

const UNITS_MS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const

export function parseDuration (text: string): number {
  const match = /^([0-9]{1,9})(ms|s|m|h|d)$/.exec(text)
  if (match === null) throw new RangeError(`not a duration: ${text}`)
  return Number(match[1]) * UNITS_MS[match[2] as keyof typeof UNITS_MS]
}

/** A metric's default hysteresis: 2 % of its plausible range in the vitals catalogue. */
export function defaultHysteresis (metric: string): number {
  const entry = lookupMetric(metric)
  return entry === undefined ? 0 : Number(((entry.max - entry.min) * 0.02).toPrecision(6))
}

/** Parses and validates a rules document (YAML, JSON being YAML too). Pure. */
export function parseRuleSet (text: string): ParseResult {
  const lines = new LineCounter()
  const doc = parseDocument(text, { prettyErrors: false, uniqueKeys: true, lineCounter: lines })
  const at = (offset: number): { line: number, column: number } => {
    const { line, col } = lines.linePos(offset)
    return { line, column: col }
  }
  if (doc.errors.length > 0) {
    return { ok: false, kind: 'syntax', problems: doc.errors.map((e) => ({ path: '', message: `YAML: ${e.message.split('\n')[0]}`, ...at(e.pos[0]) })) }
  }
  let data: unknown
  try {
    data = doc.toJS({ maxAliasCount: 100 })
  } catch (err) {
    // yaml throws a ReferenceError past maxAliasCount ("billion laughs"): a bad document, not a crash.
    if (err instanceof ReferenceError) return { ok: false, kind: 'syntax', problems: [{ path: '', message: `YAML: ${err.message.split('\n')[0]}` }] }
    throw err
  }
  const result = validateRuleSet(data)
  if (result.ok) return result
  // Each schema problem at the line of the node it names, or of its nearest ancestor that exists
  // (a missing field: the object that lacks it).
  return { ok: false, kind: 'schema', problems: result.problems.map((p) => ({ ...p, ...positionOf(doc, p.path, at) })) }
}

/** Line and column of the node at a problem path (`rules[3].nOfM.n`), or of its nearest existing ancestor. */
function positionOf (doc: Document, problemPath: string, at: (offset: number) => { line: number, column: number }): { line: number, column: number } | Record<string, never> {
  const segments: Array<string | number> = []
  for (const m of problemPath.matchAll(/([^.[\]]+)|\[(\d+)\]/g)) segments.push(m[2] !== undefined ? Number(m[2]) : m[1]!)
  let node: unknown = doc.contents
  let found = node
  for (const segment of segments) {
    if (isMap(node)) node = node.get(segment, true)
    else if (isSeq(node) && typeof segment === 'number') node = node.get(segment, true)
    else break
    if (node === undefined || node === null) break
    found = node
  }
  const range = (found as { range?: [number, number, number] } | null)?.range
  return range === undefined ? {} : at(range[0])
}

function validateRuleSet (data: unknown): ParseResult {
  const problems: RuleSetProblem[] = []
  const top = validatorFor(RuleSetDocument)
  if (!top(data)) {
    for (const e of top.errors ?? []) problems.push(problem('', '', e))
    return { ok: false, kind: 'schema', problems }
  }
  const raw = data as Static<typeof RuleSetDocument>

  const escalationPolicies: EscalationPolicy[] = []
  const policyIds = new Set<string>()
  ;(raw.escalationPolicies ?? []).forEach((item, i) => {
    const at = `escalationPolicies[${i}]`
    const p = check(EscalationDocument, item, at, labelOf(item), problems)
    if (p === null) return
    if (policyIds.has(p.id)) problems.push({ path: `${at}.id`, message: `${at}${labelOf(item)}: id is used twice` })
    policyIds.add(p.id)
    escalationPolicies.push({ id: p.id, tiers: p.tiers.map((tier) => ({ notify: tier.notify, afterMs: parseDuration(tier.escalateAfter) })) })
  })

  const allowList = new Set<string>()
  ;(raw.webhookAllowList ?? []).forEach((entry, i) => {
    const origin = originOf(entry)
    if (origin === null || origin === 'null' || origin !== entry.replace(/\/$/, '')) {
      problems.push({ path: `webhookAllowList[${i}]`, message: `webhookAllowList[${i}] must be an origin such as http://127.0.0.1:8080 (scheme, host and port only)` })
    } else {
      allowList.add(origin)
    }
  })
  const webhooks: WebhookTarget[] = []
  const webhookIds = new Set<string>()
  ;(raw.webhooks ?? []).forEach((item, i) => {
    const at = `webhooks[${i}]`
    const w = check(WebhookDocument, item, at, labelOf(item), problems)
    if (w === null) return
    if (webhookIds.has(w.id)) problems.push({ path: `${at}.id`, message: `${at}${labelOf(item)}: id is used twice` })
    webhookIds.add(w.id)
    const urlProblem = webhookUrlProblem(w.url, allowList)
    if (urlProblem !== null) problems.push({ path: `${at}.url`, message: `${at}${labelOf(item)}: ${urlProblem}` })
    if (!w.secretEnv.startsWith(WEBHOOK_SECRET_PREFIX)) {
      problems.push({ path: `${at}.secretEnv`, message: `${at}${labelOf(item)}: secretEnv must begin with ${WEBHOOK_SECRET_PREFIX}` })
    }
    const origin = originOf(w.url)
    // Named in a tier without a minSeverity: the webhook is that tier (only alerts that reach it).
    const tier = escalationPolicies.some((p) => p.tiers.some((t) => t.notify.includes(w.id)))
    webhooks.push({
      id: w.id, url: w.url, secretEnv: w.secretEnv, minSeverity: w.minSeverity ?? 'low', allowListed: origin !== null && allowList.has(origin),
      ...(tier && w.minSeverity === undefined ? { tierOnly: true } : {})
    })
  })

  const rules: Rule[] = []
  const ruleIds = new Set<string>()
  raw.rules.forEach((item, i) => {
    const at = `rules[${i}]`
    const label = labelOf(item)
    const kind = typeof item === 'object' && item !== null ? (item as { kind?: unknown }).kind : undefined
    const schema = typeof kind === 'string' ? kindSchemas[kind] : undefined
    if (schema === undefined) {
      problems.push({ path: `${at}.kind`, message: `${at}${label}: kind must be one of ${Object.keys(kindSchemas).join(', ')}` })
      return
    }
    const r = check(schema, item, at, label, problems) as Record<string, any> | null
    if (r === null) return
    const fail = (field: string, message: string): void => { problems.push({ path: `${at}.${field}`, message: `${at}${label}: ${field} ${message}` }) }
    if (ruleIds.has(r.id)) fail('id', 'is used twice')
    ruleIds.add(r.id)
    if (r.escalation !== undefined && !policyIds.has(r.escalation)) fail('escalation', `names no escalation policy ("${r.escalation}")`)
    if (r.metric !== undefined && lookupMetric(r.metric) === undefined) fail('metric', `is not in the vitals catalogue ("${r.metric}")`)
    const reAlertMs = r.reAlertAfter === undefined ? DEFAULT_RE_ALERT_MS : parseDuration(r.reAlertAfter)
    if (reAlertMs < 3000) fail('reAlertAfter', 'must be at least 3s')
    const base = { id: r.id as string, description: r.description ?? null, escalationPolicy: r.escalation ?? null, reAlertMs }
    if (kind === 'threshold') {
      if (r.above === undefined && r.below === undefined) fail('above', 'or below must be set')
      if (r.above !== undefined && r.below !== undefined && r.below >= r.above) fail('below', 'must be less than above')
      if (r.for !== undefined && r.nOfM !== undefined) fail('nOfM', 'cannot be combined with for')
      if (r.nOfM !== undefined && r.nOfM.n > r.nOfM.m) fail('nOfM.n', 'must not exceed nOfM.m')
      // The default never makes a valid rule invalid: at most a quarter of the gap between the bounds.
      const gap = r.above !== undefined && r.below !== undefined ? r.above - r.below : Infinity
      const hysteresis = r.hysteresis ?? Math.min(defaultHysteresis(r.metric), gap / 4)
      if (gap > 0 && gap !== Infinity && hysteresis * 2 >= gap) fail('hysteresis', 'must be less than half the gap between below and above')
      rules.push({
        ...base, kind, severity: r.severity, metric: r.metric, above: r.above ?? null, below: r.below ?? null,
        forMs: r.for === undefined ? 0 : parseDuration(r.for), nOfM: r.nOfM ?? null, hysteresis,
        clearAfterMs: r.clearAfter === undefined ? 0 : parseDuration(r.clearAfter)
      })
    } else if (kind === 'rate_of_change') {
      if (r.fallBy === undefined && r.riseBy === undefined) fail('fallBy', 'or riseBy must be set')
      const windowMs = parseDuration(r.window)
      if (windowMs < 1000) fail('window', 'must be at least 1s')
      const smallest = Math.min(r.fallBy ?? Infinity, r.riseBy ?? Infinity)
      const hysteresis = r.hysteresis ?? Math.min(defaultHysteresis(r.metric), smallest / 4)
      if (hysteresis >= smallest) fail('hysteresis', 'must be less than fallBy and riseBy')
      rules.push({
        ...base, kind, severity: r.severity, metric: r.metric, windowMs, fallBy: r.fallBy ?? null, riseBy: r.riseBy ?? null,
        minReadings: r.minReadings ?? 3, hysteresis, clearAfterMs: r.clearAfter === undefined ? 0 : parseDuration(r.clearAfter)
      })
    } else if (kind === 'no_data') {
      const afterMs = parseDuration(r.after)
      if (afterMs < 1000) fail('after', 'must be at least 1s')
      rules.push({ ...base, kind, severity: r.severity, metric: r.metric ?? null, afterMs, lowBatteryPercent: r.lowBatteryPercent ?? 15 })
    } else {
      const severityByBand = r.bands as Partial<Record<News2Band, Severity>>
      const alerting = news2BandOrder.filter((b) => severityByBand[b] !== undefined)
      if (alerting.length === 0) fail('bands', 'must give a severity for at least one band')
      rules.push({
        ...base, kind: 'news2', severity: severityByBand[alerting[alerting.length - 1] ?? 'high'] ?? 'high',
        freshnessMs: parseDuration(r.freshness), severityByBand, minParameters: r.minParameters ?? 1, clearAfterMs: r.clearAfter === undefined ? 0 : parseDuration(r.clearAfter)
      })
    }
  })
  return problems.length > 0 ? { ok: false, kind: 'schema', problems } : { ok: true, ruleSet: { rules, escalationPolicies, webhooks } }
}

function labelOf (item: unknown): string {
  const id = typeof item === 'object' && item !== null ? (item as { id?: unknown }).id : undefined
  return typeof id === 'string' ? ` (id ${JSON.stringify(id.slice(0, 64))})` : ''
}

function check<T extends TSchema> (schema: T, item: unknown, at: string, label: string, problems: RuleSetProblem[]): Static<T> | null {
  const validate = validatorFor(schema)
  if (validate(item)) return item as Static<T>
  for (const e of validate.errors ?? []) problems.push(problem(at, label, e))
  return null
}

// Messages a person can act on, instead of "must match pattern …".
const PATTERN_MESSAGES: Record<string, string> = {
  [DURATION_PATTERN]: 'must be a duration such as 30s, 5m, 2h, 1d',
  [RULE_ID_PATTERN]: 'must be 1–64 lower-case letters, digits, _ or - (starting with a letter or digit)',
  [NAME_PATTERN]: 'must be 1–64 letters, digits, _ or - (starting with a letter or digit)',
  [ENV_PATTERN]: 'must be an environment variable name (upper case, digits, _)',
  [URL_PATTERN]: 'must be an http:// or https:// URL'
}

function problem (at: string, label: string, e: ErrorObject): RuleSetProblem {
  const params = e.params as { missingProperty?: string, additionalProperty?: string, type?: string }
  const segments = e.instancePath.split('/').filter((s) => s !== '').map((s) => /^\d+$/.test(s) ? `[${s}]` : `.${s}`)
  let field = segments.join('').replace(/^\./, '')
  let message = e.message ?? 'is invalid'
  if (params.missingProperty !== undefined) {
    field = field === '' ? params.missingProperty : `${field}.${params.missingProperty}`
    message = 'is required'
  } else if (params.additionalProperty !== undefined) {
    field = field === '' ? params.additionalProperty : `${field}.${params.additionalProperty}`
    message = 'is not a known field'
  } else if (e.keyword === 'type') {
    message = `must be ${/^[aeiou]/.test(params.type ?? '') ? 'an' : 'a'} ${params.type}`
  } else if (e.keyword === 'pattern' && PATTERN_MESSAGES[(e.params as { pattern: string }).pattern] !== undefined) {
    message = PATTERN_MESSAGES[(e.params as { pattern: string }).pattern]!
  } else if (e.keyword === 'enum') {
    message = `must be one of ${((e.params as { allowedValues?: unknown[] }).allowedValues ?? []).join(', ')}`
  }
  const path = at === '' ? field : field === '' ? at : `${at}.${field}`
  const where = at === '' ? (field === '' ? 'rules file' : field) : `${at}${label}: ${field === '' ? 'rule' : field}`
  return { path, message: `${where} ${message}` }
}
