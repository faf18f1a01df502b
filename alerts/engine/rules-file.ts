import { createHash } from 'node:crypto'
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import path from 'node:path'
import type pg from 'pg'
import type { Logger } from 'pino'
import { inTransaction } from '../../store/database.ts'
import type { AlertRulesSource, EscalationPolicy } from '../contract.ts'
import { parseRuleSet } from './rule-set.ts'
import type { RuleSet, RuleSetProblem } from './rule-set.ts'

export interface ActiveRules {
  /** sha256 of the document. */
  version: string
  loadedAt: number
  loadedBy: string
  source: string
  ruleSet: RuleSet
  document: string
}

export interface RulesLoadError {
  at: number
  /** sha256 of the rejected document. */
  version: string
  problems: RuleSetProblem[]
}

export interface RulesVersion {
  id: number
  version: string
  loadedAt: number
  loadedBy: string
  source: string
  added: string[]
  removed: string[]
  changed: string[]
}

/** The rules file cannot be written (read-only mount, image file owned by another user). */
export class RulesNotWritableError extends Error {
  constructor (readonly file: string, readonly code: string) {
    super(`the rules file cannot be written (${code}): make ${path.basename(file)} writable by Vigil, or edit it on disk`)
    this.name = 'RulesNotWritableError'
  }
}

export class RulesInvalidError extends Error {
  constructor (readonly problems: RuleSetProblem[], readonly kind: 'syntax' | 'schema' = 'schema') {
    super(`the rules document is invalid: ${problems.slice(0, 3).map((p) => p.message).join('; ')}${problems.length > 3 ? ` (+${problems.length - 3} more)` : ''}`)
    this.name = 'RulesInvalidError'
  }
}

export interface RulesFileOptions {
  pool: pg.Pool
  /** VIGIL_ALERT_RULES. */
  path: string
  log: Logger
  /** Editors write a file in several steps (truncate, write, rename): wait for quiet. */
  debounceMs?: number
  now?: () => number
}

export interface RulesFile {
  current (): ActiveRules
  /** The last rejected edit, until a valid version is loaded. */
  lastError (): RulesLoadError | null
  history (page: { limit: number, before?: number }): Promise<{ items: RulesVersion[], nextCursor: number | null }>
  /** One recorded version with its document; null when there is none with this id. */
  version (id: number): Promise<(RulesVersion & { document: string }) | null>
  /** Validates, writes the file atomically (temp file + rename) and loads it. Throws RulesInvalidError. */
  replace (document: string, loadedBy: string): Promise<ActiveRules>
  /** Re-reads the file now (what the watcher does after an edit). */
  reload (): Promise<void>
  onChange (listener: (rules: ActiveRules, previous: ActiveRules) => void): void
  close (): Promise<void>
}

/** First key of the advisory lock that serializes recording a rules version ("VgAr"); see store/leadership.ts. */
const RULES_RECORD_LOCK_SPACE = 0x56674172

export function sha256 (text: string): string {
  return createHash('sha256').update(text).digest('hex')
}

/** Rule ids added, removed and changed between two rule sets. */
export function diffRuleSets (before: RuleSet | null, after: RuleSet): { added: string[], removed: string[], changed: string[] } {
  const old = new Map((before?.rules ?? []).map((r) => [r.id, JSON.stringify(r)]))
  const next = new Map(after.rules.map((r) => [r.id, JSON.stringify(r)]))
  return {
    added: [...next.keys()].filter((id) => !old.has(id)),
    removed: [...old.keys()].filter((id) => !next.has(id)),
    changed: [...next.keys()].filter((id) => old.has(id) && old.get(id) !== next.get(id))
  }
}

/** What the lifecycle reads of the active rules (escalation policies, webhooks), at each use so hot reloads apply. */
export function rulesSourceOf (rulesFile: Pick<RulesFile, 'current'>): AlertRulesSource {
  // The policies map is rebuilt once per rules version, not at every escalation tick.
  let byId: { version: string, policies: ReadonlyMap<string, EscalationPolicy> } | null = null
  return {
    policies () {
      const active = rulesFile.current()
      if (byId?.version !== active.version) byId = { version: active.version, policies: new Map(active.ruleSet.escalationPolicies.map((p) => [p.id, p])) }
      return byId.policies
    },
    webhooks: () => rulesFile.current().ruleSet.webhooks
  }
}

/**
 * The rules file, loaded, validated, watched and hot-reloaded. An invalid edit keeps the
 * previous rules running and is reported (lastError, logs); every accepted version is recorded
 * in alert_rule_versions. At start an invalid file falls back to the last accepted version
 * recorded in the database; with none, start-up fails naming the problems.
 */
export async function startRulesFile (options: RulesFileOptions): Promise<RulesFile> {
  const log = options.log.child({ component: 'alert-rules' })
  const now = options.now ?? Date.now
  const file = path.resolve(options.path)
  const debounceMs = options.debounceMs ?? 200
  const listeners: Array<(rules: ActiveRules, previous: ActiveRules) => void> = []
  let error: RulesLoadError | null = null
  let chain: Promise<void> = Promise.resolve()
  const serially = <T>(task: () => Promise<T>): Promise<T> => {
    const run = chain.then(task)
    chain = run.then(() => {}, () => {})
    return run
  }

  async function lastRecorded (): Promise<{ document: string, loadedAt: number, loadedBy: string, source: string } | null> {
    const { rows } = await options.pool.query('SELECT document, loaded_at, loaded_by, source FROM alert_rule_versions ORDER BY id DESC LIMIT 1')
    const row = rows[0]
    return row === undefined ? null : { document: row.document, loadedAt: new Date(row.loaded_at).getTime(), loadedBy: row.loaded_by, source: row.source }
  }

  /**
   * Records `rules` as the newest version, unless it already is (another process sharing the
   * database recorded the same file first: processes started together, or all reloading one
   * edit). Serialized by an advisory lock, so N processes record one row, not N. Returns when
   * and by whom the recorded version was loaded, for this process to report the same.
   */
  async function record (rules: ActiveRules): Promise<{ loadedAt: number, loadedBy: string }> {
    return await inTransaction(options.pool, async (client) => {
      await client.query('SELECT pg_advisory_xact_lock($1, 0)', [RULES_RECORD_LOCK_SPACE])
      const { rows: [latest] } = await client.query('SELECT version, document, loaded_at, loaded_by FROM alert_rule_versions ORDER BY id DESC LIMIT 1')
      if (latest !== undefined && latest.version === rules.version) {
        return { loadedAt: new Date(latest.loaded_at).getTime(), loadedBy: latest.loaded_by as string }
      }
      const before = latest === undefined ? null : parseRuleSet(latest.document as string)
      const diff = diffRuleSets(before?.ok === true ? before.ruleSet : null, rules.ruleSet)
      await client.query(
        `INSERT INTO alert_rule_versions (version, loaded_at, source, loaded_by, added, removed, changed, document)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
        [rules.version, new Date(rules.loadedAt), rules.source, rules.loadedBy, diff.added, diff.removed, diff.changed, rules.document])
      log.info({ version: rules.version, loadedBy: rules.loadedBy, ...diff }, 'alert rules loaded')
      return { loadedAt: rules.loadedAt, loadedBy: rules.loadedBy }
    })
  }

  async function fileOwner (): Promise<string> {
    try {
      return `file (uid ${(await fsp.stat(file)).uid})`
    } catch {
      return 'file'
    }
  }

  // Start: the file, else the last accepted version.
  let active: ActiveRules
  {
    const text = await fsp.readFile(file, 'utf8')
    const parsed = parseRuleSet(text)
    if (parsed.ok) {
      active = { version: sha256(text), loadedAt: now(), loadedBy: await fileOwner(), source: file, ruleSet: parsed.ruleSet, document: text }
      // Already the newest recorded version (an earlier start, or another process): its record stands.
      active = { ...active, ...await record(active) }
    } else {
      const recorded = await lastRecorded()
      const fallback = recorded === null ? null : parseRuleSet(recorded.document)
      if (recorded === null || fallback === null || !fallback.ok) {
        throw new Error(`VIGIL_ALERT_RULES (${file}) is invalid: ${parsed.problems.map((p) => p.message).join('; ')}`)
      }
      error = { at: now(), version: sha256(text), problems: parsed.problems }
      log.error({ problems: parsed.problems, file }, 'alert rules file invalid at start: running the last accepted version')
      active = { version: sha256(recorded.document), loadedAt: recorded.loadedAt, loadedBy: recorded.loadedBy, source: recorded.source, ruleSet: fallback.ruleSet, document: recorded.document }
    }
  }

  function accept (text: string, ruleSet: RuleSet, loadedBy: string): ActiveRules {
    const previous = active
    active = { version: sha256(text), loadedAt: now(), loadedBy, source: file, ruleSet, document: text }
    error = null
    for (const listener of listeners) {
      try {
        listener(active, previous)
      } catch (err) {
        log.error({ err }, 'alert rules listener failed')
      }
    }
    return active
  }

  async function reloadFromDisk (): Promise<void> {
    let text: string
    try {
      text = await fsp.readFile(file, 'utf8')
    } catch (err) {
      // Mid-rename, or deleted: keep the rules running; the next event retries.
      log.warn({ err: { code: (err as NodeJS.ErrnoException).code }, file }, 'alert rules file unreadable: keeping the current rules')
      return
    }
    const version = sha256(text)
    if (version === active.version) {
      error = null
      return
    }
    if (error !== null && error.version === version) return
    const parsed = parseRuleSet(text)
    if (!parsed.ok) {
      error = { at: now(), version, problems: parsed.problems }
      log.error({ problems: parsed.problems, file, activeVersion: active.version }, 'alert rules edit rejected: keeping the previous rules')
      return
    }
    const next = accept(text, parsed.ruleSet, await fileOwner())
    // Another process that reads the same file (or wrote it through the API) may have recorded it first.
    const recorded = await record(next)
    if (active.version === next.version) active = { ...active, ...recorded }
  }

  let timer: NodeJS.Timeout | null = null
  const schedule = (): void => {
    if (timer !== null) clearTimeout(timer)
    timer = setTimeout(() => {
      timer = null
      serially(reloadFromDisk).catch((err) => log.error({ err }, 'alert rules reload failed'))
    }, debounceMs)
  }
  // The directory, not the file: editors and `replace` swap the file by rename, which ends a
  // watch on the old inode.
  const watcher = fs.watch(path.dirname(file), (_event, name) => {
    if (name === null || name === path.basename(file)) schedule()
  })
  watcher.on('error', (err) => log.error({ err }, 'alert rules watcher failed'))
  // Directory events can be missed (network filesystems, some container bind mounts): a slow
  // stat poll as well. A reload of an unchanged file is a no-op.
  const poll = (): void => schedule()
  fs.watchFile(file, { interval: 5000, persistent: false }, poll)

  return {
    current: () => active,
    lastError: () => error,
    async history ({ limit, before }) {
      const { rows } = await options.pool.query(
        `SELECT id, version, loaded_at, loaded_by, source, added, removed, changed FROM alert_rule_versions
         WHERE ($1::bigint IS NULL OR id < $1) ORDER BY id DESC LIMIT $2`, [before ?? null, limit + 1])
      const items = rows.slice(0, limit).map((r) => ({
        id: Number(r.id), version: r.version, loadedAt: new Date(r.loaded_at).getTime(), loadedBy: r.loaded_by, source: r.source,
        added: r.added, removed: r.removed, changed: r.changed
      }))
      return { items, nextCursor: rows.length > limit ? items[items.length - 1]!.id : null }
    },
    async version (id) {
      const { rows } = await options.pool.query(
        'SELECT id, version, loaded_at, loaded_by, source, added, removed, changed, document FROM alert_rule_versions WHERE id = $1', [id])
      const r = rows[0]
      if (r === undefined) return null
      return {
        id: Number(r.id), version: r.version, loadedAt: new Date(r.loaded_at).getTime(), loadedBy: r.loaded_by, source: r.source,
        added: r.added, removed: r.removed, changed: r.changed, document: r.document
      }
    },
    replace (document, loadedBy) {
      return serially(async () => {
        const parsed = parseRuleSet(document)
        if (!parsed.ok) throw new RulesInvalidError(parsed.problems, parsed.kind)
        if (sha256(document) === active.version) return active
        const tmp = `${file}.${process.pid}.tmp`
        try {
          const handle = await fsp.open(tmp, 'w', 0o640)
          try {
            await handle.writeFile(document)
            await handle.sync()
          } finally {
            await handle.close()
          }
          await fsp.rename(tmp, file)
          // The rename itself is durable once the directory is synced.
          const directory = await fsp.open(path.dirname(file), 'r')
          try {
            await directory.sync()
          } finally {
            await directory.close()
          }
        } catch (err) {
          await fsp.rm(tmp, { force: true }).catch(() => {})
          const code = (err as NodeJS.ErrnoException).code
          if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') throw new RulesNotWritableError(file, code)
          throw err
        }
        const next = accept(document, parsed.ruleSet, loadedBy)
        await record(next)
        return next
      })
    },
    reload: () => serially(reloadFromDisk),
    onChange (listener) { listeners.push(listener) },
    async close () {
      watcher.close()
      fs.unwatchFile(file, poll)
      if (timer !== null) clearTimeout(timer)
      await chain
    }
  }
}
