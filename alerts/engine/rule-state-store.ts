import type pg from 'pg'
import { openClinicalText, sealClinicalText } from '../../crypto/clinical-text.ts'
import type { Keyring } from '../../crypto/field-encryption.ts'
import { isUuid } from '../../readings/reading-store.ts'
import { inTransaction } from '../../store/database.ts'
import type { PatientRuleState } from './evaluate.ts'
import type { OverrideParameters, RuleOverride } from './evaluate.ts'
import type { Spo2Scale } from './news2.ts'

/** First key of the per-patient rule-state advisory locks ("VgRs"); store/leadership.ts uses "VgLd". */
export const PATIENT_RULE_LOCK_SPACE = 0x56675273

/** Patients whose settings settingsOf keeps at most (each a few hundred bytes); past it the cache starts over. */
const SETTINGS_CACHE_PATIENTS = 100_000

/**
 * What marks a row's write in a state's version: its xmin (the transaction that wrote it; any
 * writer changes it) and its updated_at in microseconds (every write of this store sets it). The
 * xmin alone is 32 bits: after 2³² transactions, or once a database is restored to an earlier
 * point, a new write could carry an xmin a process remembers; not with the same write time too.
 */
const WRITTEN = `xmin::text || '.' || (extract(epoch FROM updated_at) * 1000000)::bigint::text`

/** Each patient's rule ids with their rows' WRITTEN marks, in rule-id order: stateVersions. */
const versionsSql = `SELECT patient_id, string_agg(rule_id || ' ' || ${WRITTEN}, ' ' ORDER BY rule_id COLLATE "C") AS v
     FROM alert_rule_state WHERE patient_id = ANY($1::uuid[]) GROUP BY patient_id`

/** Overrides and SpO₂ scales in one result (a scale's row has a null rule_id): readSettings. */
const settingsSql = `SELECT patient_id, rule_id, parameters, reason, reason_key_id, set_by, set_at, expires_at, NULL::smallint AS spo2_scale
     FROM patient_rule_overrides WHERE patient_id = ANY($1::uuid[])
   UNION ALL
   SELECT patient_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, spo2_scale
     FROM patient_news2_scale WHERE patient_id = ANY($1::uuid[])
   ORDER BY rule_id`

/**
 * versionsSql and settingsSql as one statement (a batch's reads under its locks): `k` says which a
 * row is, 'v' a patient's version, 's' a settings row (settingsSql's).
 */
const lockedReadsSql = `SELECT 'v' AS k, patient_id, v, NULL AS rule_id, NULL::jsonb AS parameters, NULL AS reason, NULL AS reason_key_id,
       NULL AS set_by, NULL::timestamptz AS set_at, NULL::timestamptz AS expires_at, NULL::smallint AS spo2_scale
     FROM (${versionsSql}) versions
   UNION ALL
   SELECT 's', patient_id, NULL, rule_id, parameters, reason, reason_key_id, set_by, set_at, expires_at, spo2_scale
     FROM (${settingsSql}) settings
   ORDER BY rule_id`

/** Volatile functions in the select list run after the sort: the locks are taken in id order. */
const lockSql = (space: string, ids: string): string => `SELECT pg_advisory_xact_lock(${space}, hashtext(id)) FROM unnest(${ids}) AS id ORDER BY id`

/** What a batch reads under its patients' locks, sent with the locks (withPatientsLocked's `read`). */
export interface LockedReads {
  /** stateVersions of the patients. */
  versions: Map<string, string>
  overrides: Map<string, RuleOverride[]>
  scales: Map<string, Spo2Scale>
}

/** A state's version as stateVersions spells it, from its rule ids and their rows' WRITTEN marks. */
export function versionOf (marks: ReadonlyMap<string, string>): string {
  return [...marks.keys()].sort().map((ruleId) => `${ruleId} ${marks.get(ruleId)!}`).join(' ')
}

/** The rule ids and WRITTEN marks of a version string (versionOf's inverse). */
export function marksOf (version: string): Map<string, string> {
  const out = new Map<string, string>()
  const parts = version === '' ? [] : version.split(' ')
  for (let i = 0; i + 1 < parts.length; i += 2) out.set(parts[i]!, parts[i + 1]!)
  return out
}

/**
 * The alert engine's tables (migration 005): rule state, overrides, NEWS2 scale. Override and
 * scale reasons are clinical free text (they may name a medication): encrypted, bound to the
 * patient and rule (crypto/clinical-text.ts).
 *
 * `cacheSettings`: this process is the only one writing overrides and scales (the embedded
 * default: one process per data directory), so settingsOf keeps what it read, and this store's
 * own writes drop a patient's entry. Several processes on one Postgres must not set it: another
 * process's override would go unseen.
 */
export function createRuleStateStore (pool: pg.Pool, keyring: Keyring, options: { cacheSettings?: boolean } = {}) {
  const settingsCache = options.cacheSettings === true ? new Map<string, { overrides: RuleOverride[], scale: Spo2Scale | null }>() : null
  // Counts this store's settings writes (started and ended): a read that saw it move is not cached.
  let settingsWrites = 0
  const addOverride = (out: Map<string, RuleOverride[]>, row: any): void => {
    const list = out.get(row.patient_id) ?? []
    list.push(overrideOf(keyring, row))
    out.set(row.patient_id, list)
  }
  /** overridesOf and spo2Scales from settingsSql's rows. */
  const settingsFrom = (rows: any[]): { overrides: Map<string, RuleOverride[]>, scales: Map<string, Spo2Scale> } => {
    const overrides = new Map<string, RuleOverride[]>()
    const scales = new Map<string, Spo2Scale>()
    for (const row of rows) {
      if (row.rule_id === null) scales.set(row.patient_id, scaleOf(row))
      else addOverride(overrides, row)
    }
    return { overrides, scales }
  }
  /** overridesOf and spo2Scales in one round trip (settingsOf without its cache). */
  async function readSettings (patientIds: readonly string[]): Promise<{ overrides: Map<string, RuleOverride[]>, scales: Map<string, Spo2Scale> }> {
    if (patientIds.length === 0) return { overrides: new Map(), scales: new Map() }
    const { rows } = await pool.query({ name: 'vigil-rule-settings', text: settingsSql, values: [patientIds] })
    return settingsFrom(rows)
  }
  const versionsFrom = (patientIds: readonly string[], rows: Array<{ patient_id: string, v: string }>): Map<string, string> => {
    const out = new Map<string, string>()
    for (const id of patientIds) out.set(id, '')
    for (const row of rows) out.set(row.patient_id, row.v)
    return out
  }
  /** A write of this store changes a patient's settings: read them again next time (before and after it, so a batch between does not keep the old). */
  async function changingSettings<T> (patientId: string, write: () => Promise<T>): Promise<T> {
    settingsWrites++
    settingsCache?.delete(patientId)
    try {
      return await write()
    } finally {
      settingsWrites++
      settingsCache?.delete(patientId)
    }
  }

  return {
    async loadStates (patientIds: readonly string[], db: pg.ClientBase | pg.Pool = pool): Promise<Map<string, PatientRuleState>> {
      const out = new Map<string, PatientRuleState>()
      if (patientIds.length === 0) return out
      const { rows } = await db.query<{ patient_id: string, rule_id: string, state: any }>({
        name: 'vigil-load-rule-states', text: 'SELECT patient_id, rule_id, state FROM alert_rule_state WHERE patient_id = ANY($1::uuid[])', values: [patientIds]
      })
      for (const id of patientIds) out.set(id, {})
      for (const row of rows) out.get(row.patient_id)![row.rule_id] = row.state
      return out
    },

    /**
     * Each patient's stored rows as one version string: every rule id with its row's WRITTEN
     * mark, in rule-id order, '' for a patient with none. Equal versions mean the same rows
     * unchanged, so a process that knows a state's version need not read the state again: at
     * 1,000 readings/s a batch read back every patient's whole state, and comparing it was ~8 %
     * of the event loop. Rule ids are [a-z0-9_-] (rule-set.ts), so the "C" collation orders
     * them as versionOf does.
     */
    async stateVersions (patientIds: readonly string[], db: pg.ClientBase | pg.Pool = pool): Promise<Map<string, string>> {
      if (patientIds.length === 0) return new Map()
      const { rows } = await db.query<{ patient_id: string, v: string }>({ name: 'vigil-rule-state-versions', text: versionsSql, values: [patientIds] })
      return versionsFrom(patientIds, rows)
    },

    /** Every stored state of these rules (the no-data scheduler's view). */
    async statesOfRules (ruleIds: readonly string[]): Promise<Map<string, PatientRuleState>> {
      const out = new Map<string, PatientRuleState>()
      if (ruleIds.length === 0) return out
      const { rows } = await pool.query<{ patient_id: string, rule_id: string, state: any }>(
        'SELECT patient_id, rule_id, state FROM alert_rule_state WHERE rule_id = ANY($1::text[])', [ruleIds])
      for (const row of rows) {
        const s = out.get(row.patient_id) ?? {}
        s[row.rule_id] = row.state
        out.set(row.patient_id, s)
      }
      return out
    },

    /**
     * Upserts each (patient, rule) state; one statement. Returns the WRITTEN mark every written
     * row now carries (stateVersions), or null when nothing was written or the rows differ.
     */
    async saveStates (states: ReadonlyArray<{ patientId: string, state: Record<string, unknown> }>, db: pg.ClientBase | pg.Pool = pool): Promise<string | null> {
      const rows: Array<{ p: string, r: string, s: unknown }> = []
      for (const { patientId, state } of states) {
        for (const [ruleId, s] of Object.entries(state)) rows.push({ p: patientId, r: ruleId, s })
      }
      if (rows.length === 0) return null
      // One JSON parameter: pg's array literals escape every quote of every JSON string on the
      // event loop (3 % of Vigil's CPU at 8,000 readings/s); jsonb_to_recordset unpacks it in Postgres.
      const { rows: written } = await db.query<{ v: string }>({
        name: 'vigil-save-rule-states',
        text: `WITH w AS (
           INSERT INTO alert_rule_state (patient_id, rule_id, state, updated_at)
           SELECT u.p, u.r, u.s, now() FROM jsonb_to_recordset($1::jsonb) AS u(p uuid, r text, s jsonb)
           ON CONFLICT (patient_id, rule_id) DO UPDATE SET state = EXCLUDED.state, updated_at = now()
           RETURNING ${WRITTEN} AS v)
         SELECT DISTINCT v FROM w`,
        values: [JSON.stringify(rows)]
      })
      return written.length === 1 ? written[0]!.v : null
    },

    /**
     * Runs `task` in a transaction holding each patient's advisory lock (taken in id order, so two
     * processes locking overlapping sets never deadlock; released at commit or rollback): the
     * load-state → evaluate → save-state of one patient never interleaves across processes.
     *
     * BEGIN and the locks go to Postgres as one simple query, and with `read` the patients' state
     * versions and settings follow as one prepared statement (lockedReadsSql): two round trips
     * instead of four (a loopback round trip costs each side ~0.1–0.2 ms of CPU on a small VM, and a
     * batch made six). The reads start after the locks are held, with a snapshot of their own, so
     * they see every commit made under these locks before. The ids are inlined in the lock
     * statement as an array literal, so each must be a uuid (patient ids are; anything else is
     * refused before a byte is sent). The reads stay a prepared statement: planned in every batch
     * as part of the simple query, they cost Postgres more than the round trip they saved, and a
     * session-level PREPARE would not pass a PgBouncer in transaction mode.
     */
    async withPatientsLocked<T> (patientIds: readonly string[], task: (client: pg.ClientBase, reads: LockedReads | null) => Promise<T>, options: { read?: boolean } = {}): Promise<T> {
      for (const id of patientIds) if (!isUuid(id)) throw new RangeError('patient ids must be uuids')
      return await inTransaction(pool, async (client) => {
        let reads: LockedReads | null = null
        if (options.read === true) {
          const { rows } = await client.query({ name: 'vigil-locked-reads', text: lockedReadsSql, values: [patientIds] })
          reads = { versions: versionsFrom(patientIds, rows.filter((r) => r.k === 'v')), ...settingsFrom(rows.filter((r) => r.k !== 'v')) }
        }
        return await task(client, reads)
      }, [lockSql(String(PATIENT_RULE_LOCK_SPACE), `'{${patientIds.join(',')}}'::text[]`)])
    },

    /** Removes the state of rules no longer in the rules file. */
    async deleteStatesExcept (ruleIds: readonly string[]): Promise<Array<{ patientId: string, ruleId: string, state: any }>> {
      const { rows } = await pool.query<{ patient_id: string, rule_id: string, state: any }>(
        'DELETE FROM alert_rule_state WHERE NOT (rule_id = ANY($1::text[])) RETURNING patient_id, rule_id, state', [ruleIds])
      return rows.map((r) => ({ patientId: r.patient_id, ruleId: r.rule_id, state: r.state }))
    },

    async overridesOf (patientIds: readonly string[]): Promise<Map<string, RuleOverride[]>> {
      const out = new Map<string, RuleOverride[]>()
      if (patientIds.length === 0) return out
      const { rows } = await pool.query(
        `SELECT patient_id, rule_id, parameters, reason, reason_key_id, set_by, set_at, expires_at FROM patient_rule_overrides
         WHERE patient_id = ANY($1::uuid[]) ORDER BY rule_id`, [patientIds])
      for (const row of rows) addOverride(out, row)
      return out
    },

    /**
     * overridesOf and spo2Scales in one round trip: what each evaluation batch reads besides
     * rule state (a small site's batches are a few readings each, so their queries are most of
     * the engine's cost).
     */
    async settingsOf (patientIds: readonly string[]): Promise<{ overrides: Map<string, RuleOverride[]>, scales: Map<string, Spo2Scale> }> {
      if (patientIds.length === 0 || settingsCache === null) return await readSettings(patientIds)
      // A small site's batches ask for the same few patients 20 times a second: each query was a
      // round trip into PGlite's WASM Postgres.
      const missing = patientIds.filter((id) => !settingsCache.has(id))
      if (missing.length > 0) {
        const generation = settingsWrites
        const read = await readSettings(missing)
        // A write while this read ran may have come before or after it: keep nothing of it.
        if (generation !== settingsWrites) return read
        if (settingsCache.size + missing.length > SETTINGS_CACHE_PATIENTS) settingsCache.clear()
        for (const id of missing) settingsCache.set(id, { overrides: read.overrides.get(id) ?? [], scale: read.scales.get(id) ?? null })
      }
      const overrides = new Map<string, RuleOverride[]>()
      const scales = new Map<string, Spo2Scale>()
      for (const id of patientIds) {
        const cached = settingsCache.get(id)
        if (cached === undefined) continue
        if (cached.overrides.length > 0) overrides.set(id, cached.overrides)
        if (cached.scale !== null) scales.set(id, cached.scale)
      }
      return { overrides, scales }
    },

    async putOverride (o: { patientId: string, ruleId: string, parameters: OverrideParameters, reason: string, setBy: string, expiresAt: number }): Promise<RuleOverride> {
      const { rows } = await changingSettings(o.patientId, async () => await pool.query(
        `INSERT INTO patient_rule_overrides (patient_id, rule_id, parameters, reason, reason_key_id, set_by, set_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, now(), $7)
         ON CONFLICT (patient_id, rule_id) DO UPDATE SET parameters = EXCLUDED.parameters, reason = EXCLUDED.reason,
           reason_key_id = EXCLUDED.reason_key_id, set_by = EXCLUDED.set_by, set_at = now(), expires_at = EXCLUDED.expires_at
         RETURNING patient_id, rule_id, parameters, reason, reason_key_id, set_by, set_at, expires_at`,
        [o.patientId, o.ruleId, JSON.stringify(o.parameters), sealClinicalText(keyring, o.reason, overrideReasonAt(o.patientId, o.ruleId)),
          keyring.activeKeyId, o.setBy, new Date(o.expiresAt)]))
      return overrideOf(keyring, rows[0])
    },

    async deleteOverride (patientId: string, ruleId: string): Promise<boolean> {
      const res = await changingSettings(patientId, async () => await pool.query('DELETE FROM patient_rule_overrides WHERE patient_id = $1 AND rule_id = $2', [patientId, ruleId]))
      return (res.rowCount ?? 0) > 0
    },

    async spo2Scales (patientIds: readonly string[]): Promise<Map<string, Spo2Scale>> {
      const out = new Map<string, Spo2Scale>()
      if (patientIds.length === 0) return out
      const { rows } = await pool.query('SELECT patient_id, spo2_scale FROM patient_news2_scale WHERE patient_id = ANY($1::uuid[])', [patientIds])
      for (const row of rows) out.set(row.patient_id, scaleOf(row))
      return out
    },

    async setSpo2Scale (patientId: string, scale: Spo2Scale, setBy: string, reason: string): Promise<void> {
      await changingSettings(patientId, async () => await pool.query(
        `INSERT INTO patient_news2_scale (patient_id, spo2_scale, set_by, reason, reason_key_id) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (patient_id) DO UPDATE SET spo2_scale = EXCLUDED.spo2_scale, set_by = EXCLUDED.set_by, reason = EXCLUDED.reason,
           reason_key_id = EXCLUDED.reason_key_id, set_at = now()`,
        [patientId, scale, setBy, sealClinicalText(keyring, reason, { table: 'patient_news2_scale', column: 'reason', rowId: patientId }), keyring.activeKeyId]))
    }
  }
}

export type RuleStateStore = ReturnType<typeof createRuleStateStore>

// The row id bound into the reason's envelope: crypto/clinical-text.ts spells the same in SQL.
function overrideReasonAt (patientId: string, ruleId: string) {
  return { table: 'patient_rule_overrides', column: 'reason', rowId: `${patientId}/${ruleId}` }
}

function overrideOf (keyring: Keyring, row: any): RuleOverride {
  const reason = openClinicalText(keyring, row.reason, row.reason_key_id ?? null, overrideReasonAt(row.patient_id, row.rule_id))
  return {
    patientId: row.patient_id, ruleId: row.rule_id, parameters: row.parameters, reason, setBy: row.set_by,
    setAt: new Date(row.set_at).getTime(), expiresAt: new Date(row.expires_at).getTime()
  }
}

function scaleOf (row: { spo2_scale: unknown }): Spo2Scale {
  return row.spo2_scale === 2 ? 2 : 1
}
