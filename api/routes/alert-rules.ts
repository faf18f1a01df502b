import { Type } from '@fastify/type-provider-typebox'
import type { FastifyRequest } from 'fastify'
import type { RuleStateStore } from '../../alerts/engine/rule-state-store.ts'
import type { News2State, RuleOverride } from '../../alerts/engine/evaluate.ts'
import { news2Parameters, scoreNews2 } from '../../alerts/engine/news2.ts'
import type { News2Parameter } from '../../alerts/engine/news2.ts'
import { RulesInvalidError, RulesNotWritableError } from '../../alerts/engine/rules-file.ts'
import type { RulesFile } from '../../alerts/engine/rules-file.ts'
import type { ApiInstance, RouteDeps } from './route-deps.ts'
import { VigilError } from '../../errors/catalogue.ts'
import { IdParams, Uuid, errorResponses, instantMs } from '../schemas/common.ts'

/** What the alert engine gives the API (startAlertEngine's handle fits). */
export interface AlertRulesApi {
  rulesFile: RulesFile
  store: RuleStateStore
  /** Rule state as the engine last evaluated it, saved or not yet (AlertEngine.currentStates). */
  currentStates: (patientIds: readonly string[]) => Promise<Map<string, Record<string, unknown>>>
}

// An override is a temporary clinical decision: it must be renewed, not forgotten.
const MAX_OVERRIDE_MS = 90 * 86_400_000

const Problem = Type.Object({
  path: Type.String(),
  message: Type.String(),
  line: Type.Optional(Type.Integer({ description: '1-based line in the document' })),
  column: Type.Optional(Type.Integer())
})
const RulesVersion = Type.Object({
  id: Type.String({ description: 'GET /v1/alert-rules/versions/{id} shows this version' }),
  version: Type.String({ description: 'sha256 of the document' }),
  loadedAt: Type.String({ format: 'date-time' }),
  loadedBy: Type.String({ description: '`file (uid N)` for edits on disk, `token:<id>` or `user:<id>` through this API' }),
  loadedByName: Type.Union([Type.String(), Type.Null()], { description: 'The display name of the user in loadedBy, if a user' }),
  source: Type.String(),
  added: Type.Array(Type.String()),
  removed: Type.Array(Type.String()),
  changed: Type.Array(Type.String())
})
const RulesState = Type.Object({
  version: Type.String({ description: 'sha256 of the active document' }),
  loadedAt: Type.String({ format: 'date-time' }),
  loadedBy: Type.String(),
  source: Type.String(),
  rules: Type.Array(Type.Unknown(), { description: 'Active rules, durations in ms, defaults filled in' }),
  escalationPolicies: Type.Array(Type.Unknown()),
  webhooks: Type.Array(Type.Unknown(), { description: 'url is null unless the caller is an admin (users:admin): a webhook URL may carry a capability' }),
  document: Type.Union([Type.String(), Type.Null()], { description: 'The active rules file as written; null unless the caller is an admin (it holds the webhook URLs)' }),
  lastError: Type.Union([Type.Null(), Type.Object({
    at: Type.String({ format: 'date-time' }),
    version: Type.String({ description: 'sha256 of the rejected document' }),
    problems: Type.Array(Problem)
  })], { description: 'The last rejected edit (the previous rules keep running); null once a valid version loads' }),
  history: Type.Object({
    items: Type.Array(RulesVersion),
    nextCursor: Type.Union([Type.String(), Type.Null()])
  })
})
const HistoryQuery = Type.Object({
  limit: Type.Integer({ minimum: 1, maximum: 100, default: 20 }),
  cursor: Type.Optional(Type.String({ pattern: '^[0-9]{1,18}$', description: 'history.nextCursor of the previous page' }))
}, { additionalProperties: false })

const OverrideParams = Type.Object({ id: Uuid, ruleId: Type.String({ pattern: '^[a-z0-9][a-z0-9_-]{0,63}$' }) }, { additionalProperties: false })
const Threshold = Type.Union([Type.Number(), Type.Null()])
const OverrideRequest = Type.Object({
  above: Type.Optional(Threshold),
  below: Type.Optional(Threshold),
  fallBy: Type.Optional(Type.Union([Type.Number({ exclusiveMinimum: 0 }), Type.Null()])),
  riseBy: Type.Optional(Type.Union([Type.Number({ exclusiveMinimum: 0 }), Type.Null()])),
  reason: Type.String({ minLength: 1, maxLength: 1000, description: 'Why (shown to clinicians only; never logged)' }),
  expiresAt: Type.String({ format: 'date-time', description: 'At most 90 days ahead' })
}, { additionalProperties: false })
const Override = Type.Object({
  patientId: Uuid,
  ruleId: Type.String(),
  parameters: Type.Object({
    above: Type.Optional(Threshold), below: Type.Optional(Threshold), fallBy: Type.Optional(Threshold), riseBy: Type.Optional(Threshold)
  }),
  reason: Type.String(),
  setBy: Type.String(),
  setAt: Type.String({ format: 'date-time' }),
  expiresAt: Type.String({ format: 'date-time' }),
  active: Type.Boolean({ description: 'false once expired, or when the rule is no longer in the rules file' })
})
const ScaleRequest = Type.Object({
  spo2Scale: Type.Union([Type.Literal(1), Type.Literal(2)]),
  reason: Type.String({ minLength: 1, maxLength: 1000 })
}, { additionalProperties: false })

function actor (request: FastifyRequest): string {
  const p = request.principal!
  return p.userId !== null ? `user:${p.userId}` : `token:${p.tokenId}`
}

/** GET/PUT /alert-rules, per-patient rule overrides and the NEWS2 SpO2 scale. Registers nothing without an alert engine. */
export function alertRuleRoutes (app: ApiInstance, deps: RouteDeps): void {
  const engine = deps.alertRules
  if (engine === undefined) return
  const { rulesFile, store } = engine
  const iso = (ms: number): string => new Date(ms).toISOString()
  /** `user:<id>` → that user's display name (authors of rule versions). */
  async function namesOf (authors: string[]): Promise<Map<string, string>> {
    const ids = [...new Set(authors.filter((a) => /^user:[0-9a-f-]{36}$/i.test(a)).map((a) => a.slice(5)))]
    const names = ids.length === 0 ? new Map<string, string | null>() : await deps.access.people.displayNames(ids)
    return new Map([...names].filter((e): e is [string, string] => e[1] !== null).map(([id, name]) => [`user:${id}`, name]))
  }

  async function rulesState (request: FastifyRequest, limit: number, cursor: string | undefined) {
    const active = rulesFile.current()
    const error = rulesFile.lastError()
    // Webhook URLs (and the document and problems that quote them) are for admins only.
    const admin = request.principal?.permissions.has('users:admin') === true
    const aboutWebhooks = (p: { path: string }): boolean => p.path.startsWith('webhook')
    const history = await rulesFile.history({ limit, before: cursor === undefined ? undefined : Number(cursor) })
    const names = await namesOf(history.items.map((h) => h.loadedBy))
    return {
      version: active.version,
      loadedAt: iso(active.loadedAt),
      loadedBy: active.loadedBy,
      source: active.source,
      rules: active.ruleSet.rules,
      escalationPolicies: active.ruleSet.escalationPolicies,
      webhooks: admin ? active.ruleSet.webhooks : active.ruleSet.webhooks.map((w) => ({ ...w, url: null })),
      document: admin ? active.document : null,
      lastError: error === null
        ? null
        : {
            at: iso(error.at),
            version: error.version,
            problems: admin ? error.problems : error.problems.map((p) => aboutWebhooks(p) ? { path: p.path, message: `${p.path}: a webhook problem (details for admins only)` } : p)
          },
      history: {
        items: history.items.map((h) => ({ ...h, id: String(h.id), loadedAt: iso(h.loadedAt), loadedByName: names.get(h.loadedBy) ?? null })),
        nextCursor: history.nextCursor === null ? null : String(history.nextCursor)
      }
    }
  }

  app.get('/alert-rules', {
    config: { permission: 'rules:read' },
    schema: {
      tags: ['alerts'],
      summary: 'Active alert rules, the last rejected edit, and the version history',
      querystring: HistoryQuery,
      response: { 200: RulesState, ...errorResponses() }
    }
  }, async (request) => await rulesState(request, request.query.limit, request.query.cursor))

  app.put('/alert-rules', {
    config: { permission: 'rules:write' },
    schema: {
      tags: ['alerts'],
      summary: 'Replace the rules file',
      description: 'Validates the YAML document, writes the rules file atomically and loads it; recorded in the history with the caller as author. ' +
        'A document that is not YAML (or JSON) gives 400 VIGIL_ERR_RULES_SYNTAX, a valid YAML document that is not a valid rules file ' +
        '400 VIGIL_ERR_RULES_INVALID; both with one detail per problem (path, message, line and column), and change nothing; ' +
        'a rules file Vigil may not write (read-only mount) gives 409 VIGIL_ERR_CONFLICT.',
      body: Type.Object({ document: Type.String({ minLength: 1, maxLength: 60_000 }) }, { additionalProperties: false }),
      response: { 200: RulesState, ...errorResponses(413) }
    }
  }, async (request) => {
    try {
      await rulesFile.replace(request.body.document, actor(request))
    } catch (err) {
      if (err instanceof RulesInvalidError) throw new VigilError(err.kind === 'syntax' ? 'VIGIL_ERR_RULES_SYNTAX' : 'VIGIL_ERR_RULES_INVALID', err.message, err.problems)
      if (err instanceof RulesNotWritableError) throw new VigilError('VIGIL_ERR_CONFLICT', err.message)
      throw err
    }
    return await rulesState(request, 20, undefined)
  })

  app.get('/alert-rules/versions/:id', {
    config: { permission: 'rules:read' },
    schema: {
      tags: ['alerts'],
      summary: 'One version of the rules file from the history, as written',
      description: 'document is null unless the caller is an admin (users:admin): it holds the webhook URLs.',
      params: Type.Object({ id: Type.String({ pattern: '^[0-9]{1,18}$' }) }, { additionalProperties: false }),
      response: { 200: Type.Object({ ...RulesVersion.properties, document: Type.Union([Type.String(), Type.Null()]), active: Type.Boolean() }), ...errorResponses(404) }
    }
  }, async (request) => {
    const found = await rulesFile.version(Number(request.params.id))
    if (found === null) throw new VigilError('VIGIL_ERR_NOT_FOUND', 'no rules version with this id')
    const admin = request.principal?.permissions.has('users:admin') === true
    return {
      ...found, id: String(found.id), loadedAt: iso(found.loadedAt), loadedByName: (await namesOf([found.loadedBy])).get(found.loadedBy) ?? null,
      document: admin ? found.document : null,
      active: found.version === rulesFile.current().version
    }
  })

  const toBody = (o: RuleOverride, nowMs: number) => ({
    patientId: o.patientId, ruleId: o.ruleId, parameters: o.parameters, reason: o.reason, setBy: o.setBy,
    setAt: iso(o.setAt), expiresAt: iso(o.expiresAt),
    active: o.expiresAt > nowMs && rulesFile.current().ruleSet.rules.some((r) => r.id === o.ruleId)
  })

  app.get('/patients/:id/rule-overrides', {
    config: { permission: 'rules:read' },
    schema: {
      tags: ['alerts'],
      summary: "A patient's rule overrides (expired ones included, marked inactive)",
      params: IdParams,
      response: { 200: Type.Object({ items: Type.Array(Override) }), ...errorResponses(404) }
    }
  }, async (request) => {
    await deps.patientAccess.require(request, request.params.id, { action: 'rules:read', fields: ['rule_override_reason'] })
    const overrides = (await store.overridesOf([request.params.id])).get(request.params.id) ?? []
    const nowMs = Date.now()
    return { items: overrides.map((o) => toBody(o, nowMs)) }
  })

  app.put('/patients/:id/rule-overrides/:ruleId', {
    config: { permission: 'overrides:write' },
    schema: {
      tags: ['alerts'],
      summary: "Override a rule's thresholds for one patient",
      description: 'Threshold rules take above/below, rate-of-change rules fallBy/riseBy (null removes that bound). ' +
        'A reason and an expiry (at most 90 days) are required; the override stops applying at expiresAt. ' +
        '404 VIGIL_ERR_UNKNOWN_RULE when the rule is not in the active rules.',
      params: OverrideParams,
      body: OverrideRequest,
      response: { 200: Override, ...errorResponses(404, 413) }
    }
  }, async (request) => {
    const { id, ruleId } = request.params
    await deps.patientAccess.require(request, id, { action: 'overrides:write', fields: ['rule_override_reason'] })
    const rule = rulesFile.current().ruleSet.rules.find((r) => r.id === ruleId)
    if (rule === undefined) throw new VigilError('VIGIL_ERR_UNKNOWN_RULE', 'no rule with this id in the active rules')
    const { reason, expiresAt: expiresText, ...parameters } = request.body
    const invalid = (path: string, message: string): VigilError =>
      new VigilError('VIGIL_ERR_VALIDATION', `${path.replace('body/', '')} ${message}`, [{ path, message }])
    const allowed = rule.kind === 'threshold' ? ['above', 'below'] : rule.kind === 'rate_of_change' ? ['fallBy', 'riseBy'] : []
    if (allowed.length === 0) throw invalid('body', `rule ${ruleId} is a ${rule.kind} rule: it has no thresholds to override`)
    for (const key of Object.keys(parameters)) {
      if (!allowed.includes(key)) throw invalid(`body/${key}`, `does not apply to a ${rule.kind} rule (use ${allowed.join(' or ')})`)
    }
    if (Object.keys(parameters).length === 0) throw invalid('body', `must set ${allowed.join(' or ')}`)
    if (rule.kind === 'threshold') {
      const above = parameters.above === undefined ? rule.above : parameters.above
      const below = parameters.below === undefined ? rule.below : parameters.below
      if (above === null && below === null) throw invalid('body', 'would leave the rule with neither above nor below')
      if (above !== null && below !== null && below >= above) throw invalid('body/below', 'must be less than above')
    }
    const expiresAt = instantMs(expiresText, 'body/expiresAt')
    const nowMs = Date.now()
    if (expiresAt <= nowMs) throw invalid('body/expiresAt', 'must be in the future')
    if (expiresAt > nowMs + MAX_OVERRIDE_MS) throw invalid('body/expiresAt', 'must be at most 90 days ahead')
    const saved = await store.putOverride({ patientId: id, ruleId, parameters, reason, setBy: actor(request), expiresAt })
    // Ids only: the reason may name a medication.
    request.log.info({ patientId: id, ruleId, expiresAt }, 'rule override set')
    return toBody(saved, nowMs)
  })

  app.delete('/patients/:id/rule-overrides/:ruleId', {
    config: { permission: 'overrides:write' },
    schema: {
      tags: ['alerts'],
      summary: 'Remove an override: the rule applies its own thresholds again',
      params: OverrideParams,
      response: { 204: Type.Null({ description: 'Removed' }), ...errorResponses(404) }
    }
  }, async (request, reply) => {
    const { id, ruleId } = request.params
    await deps.patientAccess.require(request, id, { action: 'overrides:write' })
    if (!await store.deleteOverride(id, ruleId)) throw new VigilError('VIGIL_ERR_NOT_FOUND', 'this patient has no override of this rule')
    request.log.info({ patientId: id, ruleId }, 'rule override removed')
    return await reply.code(204).send(null)
  })

  const News2Score = Type.Object({
    ruleId: Type.String(),
    at: Type.String({ format: 'date-time', description: 'Time of the newest parameter reading' }),
    total: Type.Integer(),
    band: Type.String({ description: 'low, low_medium, medium or high (RCP 2017 chart 2)' }),
    complete: Type.Boolean({ description: 'false: parameters are missing and total and band are lower bounds' }),
    missing: Type.Array(Type.String()),
    subScores: Type.Record(Type.String(), Type.Integer()),
    redScores: Type.Array(Type.String({ description: 'Parameters scoring 3' })),
    spo2Scale: Type.Integer(),
    parameters: Type.Record(Type.String(), Type.Object({ value: Type.Number(), ts: Type.String({ format: 'date-time' }) }))
  })

  app.get('/patients/:id/news2', {
    config: { permission: 'readings:read' },
    schema: {
      tags: ['alerts'],
      summary: "The patient's current NEWS2, with sub-scores",
      description: 'From the latest value of each parameter within the news2 rule\'s freshness window, as the alert engine last evaluated it. ' +
        'One item per news2 rule; empty when no NEWS2 parameter has been seen.',
      params: IdParams,
      response: { 200: Type.Object({ items: Type.Array(News2Score) }), ...errorResponses(404) }
    }
  }, async (request) => {
    const id = request.params.id
    await deps.patientAccess.require(request, id, { action: 'readings:read' })
    const [states, scales] = await Promise.all([engine.currentStates([id]), store.spo2Scales([id])])
    const state = states.get(id) ?? {}
    const items = []
    for (const rule of rulesFile.current().ruleSet.rules) {
      if (rule.kind !== 'news2') continue
      const held = state[rule.id] as News2State | undefined
      if (held?.kind !== 'news2') continue
      const times = Object.values(held.latest).map(([ts]) => ts)
      if (times.length === 0) continue
      const newest = Math.max(...times)
      const values: Partial<Record<News2Parameter, number>> = {}
      const parameters: Record<string, { value: number, ts: string }> = {}
      for (const parameter of news2Parameters) {
        const entry = held.latest[parameter]
        if (entry === undefined || newest - entry[0] > rule.freshnessMs) continue
        values[parameter] = entry[1]
        parameters[parameter] = { value: entry[1], ts: iso(entry[0]) }
      }
      const result = scoreNews2(values, scales.get(id) ?? 1)
      items.push({ ruleId: rule.id, at: iso(newest), ...result, parameters })
    }
    return { items }
  })

  app.put('/patients/:id/news2-scale', {
    config: { permission: 'overrides:write' },
    schema: {
      tags: ['alerts'],
      summary: 'Set the NEWS2 SpO2 scale for a patient',
      description: 'Scale 2 is for patients with hypercapnic respiratory failure (RCP 2017), on a clinician\'s decision; 1 is the default.',
      params: IdParams,
      body: ScaleRequest,
      response: { 200: Type.Object({ patientId: Uuid, spo2Scale: Type.Integer(), setBy: Type.String() }), ...errorResponses(404, 413) }
    }
  }, async (request) => {
    const id = request.params.id
    await deps.patientAccess.require(request, id, { action: 'overrides:write', fields: ['news2_scale_reason'] })
    const setBy = actor(request)
    await store.setSpo2Scale(id, request.body.spo2Scale, setBy, request.body.reason)
    return { patientId: id, spo2Scale: request.body.spo2Scale, setBy }
  })
}
