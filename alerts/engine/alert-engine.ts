import type pg from 'pg'
import type { Keyring } from '../../crypto/field-encryption.ts'
import type { Logger } from 'pino'
import { Counter, Histogram } from 'prom-client'
import type { Registry } from 'prom-client'
import type { StoredReading } from '../../readings/reading.ts'
import type { Position, RecordSpan, SpooledRecord } from '../../readings/spool.ts'
import { createWorkerPool, taskFile } from '../../workers/pool.ts'
import { createRuleStateStore, versionOf, marksOf } from './rule-state-store.ts'
import type { LockedReads, RuleStateStore } from './rule-state-store.ts'
import type { AlertEngineSeam, ConditionChange, ConditionSink, DevicePresence, DevicePresenceSource, Schedule, ScheduledJob } from '../contract.ts'
import type { EvalReading, EvaluatedTask, EvaluateTaskInput, EvaluateTaskOutput, PatientRuleState, TaskPatient } from './evaluate.ts'
import { applyChangedStates, createEvaluateTask, DERIVED_DEVICE_ID } from './evaluate.ts'
import { evaluateNoData } from './no-data.ts'
import type { ActiveRules, RulesFile } from './rules-file.ts'

export interface AlertEngineOptions {
  /** The metadata database (migration 005's tables). */
  pool: pg.Pool
  /** Encrypts rule-override and SpO2-scale reasons (clinical free text). */
  keyring: Keyring
  /** The rules file (VIGIL_ALERT_RULES), started by the caller, who closes it after the engine. */
  rulesFile: RulesFile
  /** WORKER_THREADS: evaluation runs in a Piscina pool of at most this many threads. */
  workerThreads: number
  /** The alert lifecycle: receives every condition change. */
  sink: ConditionSink
  /** Device presence for the no_data rules (the lifecycle's presence). */
  presence?: DevicePresenceSource
  /** node-cron's schedule: with `presence`, the no-data check runs every 30 s; absent, only checkNoData() runs it (tests). */
  schedule?: Schedule
  /** Stores derived readings (NEWS2 scores): the reading store, or the spool in front of it. */
  writeDerived: (readings: StoredReading[]) => Promise<void>
  log: Logger
  /** The instance's metrics registry (metrics.registry). */
  registry: Registry
  now?: () => number
  /** Readings wait at most this long for a batch (default 50 ms)… */
  flushIntervalMs?: number
  /** …or until this many are queued (default 2,500). */
  batchSize?: number
  /** Readings queued beyond this (evaluation stalled, e.g. database down) are dropped from evaluation, oldest first; they stay stored. */
  maxQueued?: number
  /**
   * Several processes may evaluate readings of one patient (a Postgres server with REDIS_URL):
   * each batch loads its patients' rule state from the database under their advisory locks and
   * saves it before they are released, instead of trusting this process's cache.
   */
  sharedState?: boolean
  /**
   * One process (no sharedState): a batch that changes no condition leaves its patients' rule
   * state in memory, saved with the next batch that changes one, or at most this long after it
   * (default 1000 ms); a batch that changes one saves it before the batch ends, and flush() and
   * close() save it. With a spool (onEvaluated) a crash loses none of it: the evaluation mark
   * moves only with a save, and the spool replays what follows. Without one a crash loses at
   * most this long of window updates, so vigil.ts passes 0 there: every batch saves its state.
   */
  stateSaveIntervalMs?: number
  /**
   * A batch of at most this many readings is evaluated on the event loop instead of in a worker
   * thread (default 256; 0: always a thread). At a small site a batch is a few readings, and
   * handing it to a thread and back cost more than evaluating it; 256 readings take ~2 ms (at
   * 1,000 msg/s a 250 ms window gathers 250).
   */
  inlineReadings?: number
  /**
   * Readings handed over with their spool record (onAccepted's `span`): called with a position
   * before which every such record was evaluated and the state that came of it saved (the state
   * is committed, not yet necessarily synced: the caller makes it durable before the spool may
   * record the mark). After a crash the spool replays what follows it (replay).
   */
  onEvaluated?: (through: Position) => void
}

export interface AlertEngine extends AlertEngineSeam {
  /**
   * ingest's onAccepted hook: queues readings for evaluation; never blocks or throws. `span`:
   * where the spool put them (records must come in the order the spool wrote them);
   * `receivedAt`: when they were accepted (default now).
   */
  onAccepted (readings: readonly StoredReading[], span?: RecordSpan | null, receivedAt?: number): void
  /**
   * Evaluates the spool's records that were not evaluated (or their state not saved) before the
   * last stop, as when they were accepted, then resolves with how many readings it read. Derived
   * readings in them (NEWS2 scores) are not evaluated. Readings whose rules had seen them (the
   * state was saved after them) are skipped by every rule, as any reading not newer than the
   * last one is; so a condition change is handed over again at most (the lifecycle takes a
   * change twice as once). Run before the broker takes readings. When it throws (a batch failed,
   * the spool could not be read) no evaluation mark is reported again until the next start, which
   * replays from the same place.
   */
  replay (backlog: AsyncIterable<SpooledRecord[]>): Promise<number>
  /** One no-data pass: the presence source's devices through evaluateNoData (what the schedule runs). */
  checkNoData (): Promise<ConditionChange[]>
  rules (): ActiveRules
  /**
   * Each patient's rule state as the engine last evaluated it: this process's copy where it
   * holds one alone (it may not be saved yet), else the stored rows.
   */
  currentStates (patientIds: readonly string[]): Promise<Map<string, PatientRuleState>>
  readonly rulesFile: RulesFile
  readonly store: RuleStateStore
  /** Resolves once every reading queued so far is evaluated (tests, shutdown). */
  flush (): Promise<void>
  close (): Promise<void>
}

/** `from`: the start of the reading's spool record (null: not spooled). */
type Queued = EvalReading & { patientId: string, from: Position | null }

/** Every 30 s: no-data windows are minutes long. */
export const NO_DATA_CRON = '*/30 * * * * *'

/** Readings a lane's task gets at least before a batch is split across one more lane. */
const READINGS_PER_LANE = 250

/** The holder (alert-engine's `stamps`) of a state the event loop's task keeps, beside the lanes 0, 1, … */
const INLINE = -1

/** Which of `parts` parts a patient's readings go to: the same one for as long as `parts` is the same. */
export function partOf (patientId: string, parts: number): number {
  if (parts <= 1) return 0
  let h = 0
  for (let i = 0; i < patientId.length; i++) h = (h * 31 + patientId.charCodeAt(i)) | 0
  return (h >>> 0) % parts
}

/** The pure evaluation (in a worker) threw: not an outage, so not retried. */
class EvaluationError extends Error {
  constructor (cause: unknown) {
    super('alert evaluation failed', { cause })
    this.name = 'EvaluationError'
  }
}

/**
 * The alert engine: queues accepted readings, evaluates them in batches in worker threads
 * (pure rules: alerts/engine/evaluate.ts), hands condition changes to the sink, stores derived NEWS2
 * readings, and persists rule state (each batch, or once a second: stateSaveIntervalMs) so a
 * restart resumes windows and sustained-since times. Batches run one at a time, so no two
 * evaluations of one patient overlap.
 */
export async function startAlertEngine (options: AlertEngineOptions): Promise<AlertEngine> {
  const log = options.log.child({ component: 'alert-engine' })
  const now = options.now ?? Date.now
  const flushIntervalMs = options.flushIntervalMs ?? 50
  const batchSize = options.batchSize ?? 2500
  const maxQueued = options.maxQueued ?? 100_000
  // Under sharedState another process reads the state under the patients' locks: saved each batch.
  const stateSaveIntervalMs = options.sharedState === true ? 0 : options.stateSaveIntervalMs ?? 1000
  // One process (no sharedState): it writes every override and scale, so they can be kept.
  const store = createRuleStateStore(options.pool, options.keyring, { cacheSettings: options.sharedState !== true })
  const metrics = {
    evaluationSeconds: new Histogram({
      name: 'vigil_alert_evaluation_seconds',
      help: 'Time to evaluate one batch of readings against the alert rules (worker threads, state load and save)',
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [options.registry]
    }),
    latencySeconds: new Histogram({
      name: 'vigil_alert_reading_to_condition_seconds',
      help: 'From a reading accepted to the condition change it caused handed to the alert lifecycle (stored)',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [options.registry]
    }),
    readingsEvaluated: new Counter({ name: 'vigil_alert_readings_evaluated_total', help: 'Readings evaluated against the alert rules', registers: [options.registry] }),
    changes: new Counter({ name: 'vigil_alert_condition_changes_total', help: 'Condition changes emitted, by kind and status', labelNames: ['kind', 'status'] as const, registers: [options.registry] }),
    dropped: new Counter({ name: 'vigil_alert_readings_dropped_total', help: 'Readings not evaluated (still stored): the evaluation queue was full, or their batch evaluation threw', registers: [options.registry] }),
    failures: new Counter({ name: 'vigil_alert_batch_failures_total', help: 'Evaluation batches that failed and were retried', registers: [options.registry] }),
    resent: new Counter({ name: 'vigil_alert_tasks_resent_total', help: 'Evaluation tasks sent to a worker thread again with patient states it did not hold (another thread evaluated them last, or it was restarted)', registers: [options.registry] }),
    stateSaveFailures: new Counter({ name: 'vigil_alert_state_save_failures_total', help: 'Saves of rule state kept in memory since earlier batches that failed (tried again after the save interval)', registers: [options.registry] }),
    statesSent: new Counter({ name: 'vigil_alert_states_sent_total', help: 'Patient rule states copied into evaluation tasks (the thread did not keep them: first evaluation, changed elsewhere, or a resend)', registers: [options.registry] }),
    batches: new Counter({ name: 'vigil_alert_batches_total', help: 'Evaluation batches evaluated, by where: on the event loop (small batches) or in worker threads', labelNames: ['on'], registers: [options.registry] }),
    replayed: new Counter({ name: 'vigil_alert_readings_replayed_total', help: 'Readings evaluated again at start from the spool (accepted before a stop whose evaluation was not saved, or may not have been)', registers: [options.registry] })
  }

  const rulesFile = options.rulesFile
  // One lane per thread (WORKER_THREADS), each its own one-thread pool: while a batch uses the
  // same number of lanes, a patient's readings go to the same one (partOf its id), so the thread
  // asked for a state it keeps is the one keeping it. One pool of N threads handed a task to
  // whichever thread was free, and a state kept by the other was sent again
  // (`vigil_alert_tasks_resent_total`). A lane starts its thread
  // with the first batch too big for the event loop (starting one takes a second or more under
  // tsx); the first lane keeps it, the others end after a minute idle, so a quiet site does not
  // hold WORKER_THREADS idle threads (~30 MB each). A process that has received no such batch
  // holds none: that batch waits for the threads' start.
  const lanes = Array.from({ length: Math.max(1, Math.floor(options.workerThreads)) }, (_, i) =>
    createWorkerPool<EvaluateTaskInput, EvaluateTaskOutput>({
      filename: taskFile(import.meta.url, 'evaluate-task'), threads: 1, minThreads: i === 0 ? 1 : 0, startOnFirstTask: true
    }))

  // Small batches: the same task as a thread's, on the event loop, keeping states as a thread
  // would (so the stamps below hold for it too). Its input and answer are copied as a thread's
  // are, so nothing it keeps is shared with this process's copies.
  const inlineReadings = options.inlineReadings ?? 256
  const inlineTask = createEvaluateTask()
  const runInline = async (input: EvaluateTaskInput): Promise<EvaluateTaskOutput> =>
    structuredClone(inlineTask({ ...input, patients: structuredClone(input.patients) }))

  const states = new Map<string, PatientRuleState>()
  // The stamp under which a task may keep a patient's state (createEvaluateTask), and who keeps it
  // (a lane's index, or INLINE for the event loop's task): set when a batch's new state is stored,
  // deleted whenever the state here changes any other way (loaded, a no-data pass, a rule
  // removed), so the next task sends the state again.
  const stamps = new Map<string, { stamp: number, holder: number }>()
  let lastStamp = 0
  // Under sharedState: the version (stateVersions) of each patient's rows that this process's
  // copy in `states` equals. Dropped with the stamp whenever the copy changes any other way.
  const versions = new Map<string, string>()
  /** The copy of a patient's state changed other than by a stored batch: neither its stamp nor its version holds. */
  const forgetCopy = (patientId: string): void => {
    stamps.delete(patientId)
    versions.delete(patientId)
  }
  let queue: Queued[] = []
  // The end of the last spool record handed over (onAccepted's span).
  let handedEnd: Position | null = null
  // A start-up replay that did not finish: the records it did not reach lie behind readings
  // accepted since, so no mark is reported until the next start replays them.
  let markHeld = false
  let timer: NodeJS.Timeout | null = null
  // Rule states evaluated but not saved yet (stateSaveIntervalMs): by patient, each rule whose
  // state changed since the last save, as it is now.
  let unsaved = new Map<string, PatientRuleState>()
  let saveTimer: NodeJS.Timeout | null = null
  let closed = false
  // Set once close() has drained the queue: nothing is scheduled after it.
  let closedHard = false
  let failuresInRow = 0
  let chain: Promise<void> = Promise.resolve()
  const exclusive = <T>(task: () => Promise<T>): Promise<T> => {
    const run = chain.then(task)
    chain = run.then(() => {}, () => {})
    return run
  }

  /**
   * Where the spool may resume evaluation after a crash once everything evaluated so far is
   * saved: the record of the oldest reading still queued, else the end of the last record handed
   * over (records come in the order the spool wrote them). Null for readings without a spool.
   */
  function evaluatedThrough (): Position | null {
    return queue.length > 0 ? queue[0]!.from : handedEnd
  }

  function reportEvaluated (through: Position | null): void {
    if (through === null || markHeld || options.onEvaluated === undefined) return
    try {
      options.onEvaluated(through)
    } catch (err) {
      log.error({ err }, 'onEvaluated listener failed')
    }
  }

  async function deliver (changes: ConditionChange[], triggeredAt: number[] | null): Promise<void> {
    if (changes.length === 0) return
    await options.sink.apply(changes)
    const at = now()
    changes.forEach((c, i) => {
      // Restatements of a condition already firing (re-alert reminders, NEWS2 updates) are not changes of state.
      if (c.ongoing === undefined) metrics.changes.inc({ kind: c.kind, status: c.status })
      if (triggeredAt !== null) metrics.latencySeconds.observe(Math.max(0, at - triggeredAt[i]!) / 1000)
    })
  }

  async function statesFor (patientIds: string[]): Promise<void> {
    const missing = patientIds.filter((id) => !states.has(id))
    if (missing.length === 0) return
    loaded(await store.loadStates(missing))
  }

  /** States read from the database replace this process's: no thread holds them under a stamp. */
  function loaded (fromDatabase: Map<string, PatientRuleState>): void {
    for (const [id, s] of fromDatabase) {
      states.set(id, s)
      forgetCopy(id)
    }
  }

  /**
   * Under sharedState each batch checks its patients' states under their locks (another process
   * may have evaluated them): by version, not content. A state whose rows are as this process
   * last read or wrote them keeps its copy and its stamp, so the thread that holds it is not sent
   * it again (at 1,000 msg/s copying states into tasks was ~8 % of the event loop); only the
   * others are read, replacing the copy and dropping the stamp. Reading every state back and
   * comparing it was another ~8 %.
   */
  async function checkedStates (patientIds: string[], client: pg.ClientBase, current: Map<string, string>): Promise<void> {
    const stale = patientIds.filter((id) => !states.has(id) || versions.get(id) !== current.get(id))
    if (stale.length === 0) return
    // Under the same locks: no batch of another process writes these rows between the two reads.
    loaded(await store.loadStates(stale, client))
    for (const id of stale) versions.set(id, current.get(id)!)
  }

  /** The version a patient's rows have once this batch's save commits (null: not known, read them next time). */
  function versionAfterSave (known: string | undefined, written: readonly string[], mark: string | null, kept: PatientRuleState): string | null {
    if (known === undefined || (written.length > 0 && mark === null)) return null
    const marks = marksOf(known)
    for (const ruleId of written) marks.set(ruleId, mark!)
    // A rule dropped from the copy (no longer in the rules file) while its row remains: the
    // versions differ, so the next batch reads the rows, as it did before it was dropped.
    for (const ruleId of [...marks.keys()]) if (kept[ruleId] === undefined) marks.delete(ruleId)
    return versionOf(marks)
  }

  /** One task, sent again with every state when the thread did not hold one it left out (another thread had it, or it restarted). */
  async function runTask (input: EvaluateTaskInput, lane: number | null): Promise<EvaluatedTask> {
    const run = lane === null ? runInline : async (i: EvaluateTaskInput) => await lanes[lane]!.run(i)
    const first = await run(input)
    if (first.missing === undefined) return first
    metrics.resent.inc()
    metrics.statesSent.inc(input.patients.length)
    const again = await run({ ...input, patients: input.patients.map((p) => ({ ...p, state: states.get(p.patientId) ?? {} })) })
    if (again.missing !== undefined) throw new Error('alert worker asked for states it was sent')
    return again
  }

  async function runBatch (batch: Queued[]): Promise<void> {
    const end = metrics.evaluationSeconds.startTimer()
    const byPatient = new Map<string, EvalReading[]>()
    for (const r of batch) {
      const list = byPatient.get(r.patientId) ?? []
      list.push({ metric: r.metric, value: r.value, ts: r.ts, deviceId: r.deviceId, receivedAt: r.receivedAt })
      byPatient.set(r.patientId, list)
    }
    const ids = [...byPatient.keys()]
    const inline = batch.length <= inlineReadings
    const evaluateBatch = async (client: pg.ClientBase | undefined, reads: LockedReads | null): Promise<{ t0: number, t1: number, t2: number, tasks: number }> => {
      const t0 = performance.now()
      if (client === undefined) await statesFor(ids)
      // The versions and settings came with the locks (one round trip).
      else await checkedStates(ids, client, reads!.versions)
      const { overrides, scales } = reads ?? await store.settingsOf(ids)
      const rules = rulesFile.current().ruleSet.rules
      const nowMs = now()
      // As many lanes as keep each busy for a millisecond or so (a thread evaluates ~160,000
      // readings/s): on a many-core host a batch of 300 is not cut into 32 tasks of 10. While that
      // number stays the same (batches of about one size), a patient goes to the same lane each
      // time; a state its task keeps (its stamp, with the same holder) is not sent.
      const used = inline ? 1 : Math.min(lanes.length, Math.ceil(batch.length / READINGS_PER_LANE))
      const laneOf = (id: string): number => inline ? 0 : partOf(id, used)
      const holderOf = (id: string): number => inline ? INLINE : laneOf(id)
      const patients: TaskPatient[] = ids.map((id) => {
        const kept = stamps.get(id)
        const stamp = kept !== undefined && kept.holder === holderOf(id) ? kept.stamp : null
        return {
          patientId: id,
          ...(stamp === null ? { state: states.get(id) ?? {} } : {}),
          stamp,
          next: ++lastStamp,
          readings: byPatient.get(id)!,
          overrides: overrides.get(id) ?? [],
          spo2Scale: scales.get(id) ?? 1
        }
      })
      metrics.statesSent.inc(patients.reduce((n, p) => n + (p.state === undefined ? 0 : 1), 0))
      // One task per lane at most (batches, not one task per reading), each patient in its own
      // lane; a small batch is one task on the event loop.
      const chunks: TaskPatient[][] = Array.from({ length: used }, () => [])
      for (const p of patients) chunks[laneOf(p.patientId)]!.push(p)
      const t1 = performance.now()
      let results: EvaluatedTask[]
      try {
        results = await Promise.all(chunks.flatMap((chunk, lane) => chunk.length === 0 ? [] : [runTask({ rules, patients: chunk, nowMs }, inline ? null : lane)]))
      } catch (err) {
        throw new EvaluationError(err)
      }
      const t2 = performance.now()
      const derived = results.flatMap((r) => r.derivedReadings)
      // Derived readings and changes before the state: after a failure the batch is evaluated
      // again from the old state, so the sink may see a change twice but never misses one.
      if (derived.length > 0) await options.writeDerived(derived)
      const changes = results.flatMap((r) => r.changes)
      await deliver(changes, results.flatMap((r) => r.triggeredAt))
      const newStates = results.flatMap((r) => r.states)
      // Only the rules whose state changed come back, and only they are written (a reading touches few of them).
      const changedStates = newStates.filter((s) => Object.keys(s.changed).length > 0)
      const mark = stateSaveIntervalMs > 0
        ? null
        : await store.saveStates(changedStates.map(({ patientId, changed }) => ({ patientId, state: changed })), client)
      // Stored: now the cache (on a failure it keeps the old state, which the retry starts from).
      const ruleIds = new Set(rules.map((r) => r.id))
      const nextStamp = new Map(patients.map((p) => [p.patientId, p.next]))
      for (const { patientId, changed } of newStates) {
        const kept = applyChangedStates(states.get(patientId) ?? {}, changed, ruleIds)
        states.set(patientId, kept)
        // The thread that evaluated it keeps the same state under this stamp.
        stamps.set(patientId, { stamp: nextStamp.get(patientId)!, holder: holderOf(patientId) })
        if (client !== undefined) {
          const version = versionAfterSave(versions.get(patientId), Object.keys(changed), mark, kept)
          if (version === null) versions.delete(patientId)
          else versions.set(patientId, version)
        }
      }
      if (stateSaveIntervalMs > 0) await keepUnsaved(changedStates, changes.length > 0)
      return { t0, t1, t2, tasks: results.length }
    }
    const { t0, t1, t2, tasks } = options.sharedState === true
      ? await store.withPatientsLocked(ids, evaluateBatch, { read: true })
      : await evaluateBatch(undefined, null)
    metrics.readingsEvaluated.inc(batch.length)
    metrics.batches.inc({ on: inline ? 'event_loop' : 'threads' })
    end()
    log.debug({
      readingCount: batch.length, patientCount: ids.length, tasks,
      loadMs: Math.round(t1 - t0), evaluateMs: Math.round(t2 - t1), storeMs: Math.round(performance.now() - t2)
    }, 'alert batch evaluated')
  }

  /**
   * One process: a batch's new states are in the cache already (the thread that evaluated them
   * keeps them too); here they wait in `unsaved`, saved now when the batch changed a condition
   * (the change and the state that made it are stored together, as when every batch saved), else
   * by the save timer. Saving every batch rewrote each patient's changed rules once per batch: at
   * 8,500 msg/s, 4,000 rows three or four times a second, Postgres' largest job for Vigil.
   * A failed save does not fail the batch (it was evaluated and its changes delivered: evaluating
   * it again would count its readings twice): its states stay unsaved and are tried again later.
   */
  async function keepUnsaved (changedStates: EvaluatedTask['states'], changedCondition: boolean): Promise<void> {
    for (const { patientId, changed } of changedStates) {
      const pending = unsaved.get(patientId)
      if (pending === undefined) unsaved.set(patientId, { ...changed })
      else Object.assign(pending, changed)
    }
    if (!changedCondition) {
      scheduleSave()
      return
    }
    await saveUnsaved().catch(saveFailed)
  }

  function saveFailed (err: unknown): void {
    metrics.stateSaveFailures.inc()
    log.error({ err, patientCount: unsaved.size }, 'saving alert rule state failed: kept in memory, trying again')
    scheduleSave()
  }

  function scheduleSave (): void {
    if (saveTimer !== null || closedHard || unsaved.size === 0) return
    saveTimer = setTimeout(() => {
      saveTimer = null
      // Between batches: two saves of one patient's rows never overlap.
      exclusive(saveUnsaved).catch(saveFailed)
    }, stateSaveIntervalMs)
  }

  /** Saves every unsaved state (in `exclusive`, or from a batch); on failure they stay unsaved. */
  async function saveUnsaved (): Promise<void> {
    if (saveTimer !== null) {
      clearTimeout(saveTimer)
      saveTimer = null
    }
    // What is evaluated now is what this save stores (batches wait for it).
    const through = evaluatedThrough()
    if (unsaved.size > 0) {
      const taken = unsaved
      unsaved = new Map()
      try {
        await store.saveStates([...taken].map(([patientId, state]) => ({ patientId, state })))
      } catch (err) {
        // Nothing was evaluated meanwhile (batches and saves run one at a time): put them back.
        unsaved = taken
        throw err
      }
    }
    reportEvaluated(through)
  }

  /**
   * Evaluates the queue a batch at a time. From the timer (`all` false) it goes on past the first
   * batch only while a full batch is waiting: readings that arrived during a batch have a window
   * of their own (onAccepted set the timer), so they wait it out for company instead of following
   * as a batch of one or two (at 100 readings/s that made 33 batches a second instead of 20, each
   * several database round trips). flush() and close() drain everything.
   */
  async function drain (all: boolean): Promise<void> {
    let first = true
    while (queue.length > 0 && !closedHard && (all || first || queue.length >= batchSize)) {
      first = false
      const batch = queue.splice(0, batchSize * 10)
      try {
        await runBatch(batch)
        failuresInRow = 0
        // Nothing waits unsaved (a shared-state batch saves in its transaction): the mark moves.
        if (unsaved.size === 0) reportEvaluated(evaluatedThrough())
      } catch (err) {
        if (err instanceof EvaluationError) {
          // Evaluation is pure: the same batch would fail the same way, and retrying it would
          // hold up every later reading. Skip it, loudly (a bug in a rule kind, not an outage).
          metrics.dropped.inc(batch.length)
          log.error({ err: err.cause, readingCount: batch.length, patientIds: [...new Set(batch.map((r) => r.patientId))].slice(0, 20) },
            'alert evaluation threw: batch skipped')
          continue
        }
        queue = batch.concat(queue)
        failuresInRow++
        metrics.failures.inc()
        log.error({ err, readingCount: batch.length, failuresInRow }, 'alert evaluation failed: retrying')
        if (closed) return
        const delay = Math.min(30_000, 250 * 2 ** Math.min(failuresInRow, 7))
        schedule(delay)
        return
      }
    }
    if (queue.length > 0 && timer === null) schedule(flushIntervalMs)
  }

  function schedule (delayMs: number): void {
    if (closedHard) return
    if (timer !== null) {
      // A full batch goes at once, unless a failed batch is backing off.
      if (delayMs > 0 || failuresInRow > 0) return
      clearTimeout(timer)
    }
    timer = setTimeout(() => {
      timer = null
      exclusive(async () => { await drain(false) }).catch((err) => log.error({ err }, 'alert evaluation loop failed'))
    }, delayMs)
  }

  rulesFile.onChange((next, previous) => {
    const kept = next.ruleSet.rules.map((r) => r.id)
    const removed = previous.ruleSet.rules.filter((r) => !kept.includes(r.id))
    if (removed.length === 0) return
    // A removed rule's open conditions end: the lifecycle resolves their alerts.
    exclusive(async () => {
      // The rows decide which open conditions end: they must hold what this process knows.
      await saveUnsaved()
      const rows = await store.deleteStatesExcept(kept)
      for (const s of states.values()) for (const r of removed) delete s[r.id]
      stamps.clear()
      versions.clear()
      const changes: ConditionChange[] = []
      for (const row of rows) {
        const rule = removed.find((r) => r.id === row.ruleId)
        if (rule === undefined || row.state?.firing !== true) continue
        changes.push({
          patientId: row.patientId, ruleId: rule.id, kind: rule.kind, status: 'cleared', severity: rule.severity,
          escalationPolicy: rule.escalationPolicy, at: now(), summary: `rule ${rule.id} removed from the rules file`, details: { reason: 'rule_removed' }
        })
      }
      await deliver(changes, null)
    }).catch((err) => log.error({ err }, 'clearing removed rules failed'))
  })

  function noDataPass (presence: readonly DevicePresence[]): Promise<ConditionChange[]> {
    return exclusive(async () => {
      const rules = rulesFile.current().ruleSet.rules
      const ids = rules.filter((r) => r.kind === 'no_data').map((r) => r.id)
      if (ids.length === 0) return []
      const current = await store.statesOfRules(ids)
      if (options.sharedState !== true) {
        for (const [patientId, s] of states) {
          const merged = current.get(patientId) ?? {}
          for (const id of ids) if (s[id] !== undefined) merged[id] = s[id]
          current.set(patientId, merged)
        }
      }
      let result = evaluateNoData({ rules, presence, states: current, nowMs: now() })
      const save = async (db?: pg.ClientBase): Promise<void> => {
        await deliver(result.changes, null)
        const changed = [...result.states].map(([patientId, state]) => ({ patientId, state }))
        await store.saveStates(changed, db)
        for (const { patientId, state } of changed) {
          const cached = states.get(patientId)
          if (cached !== undefined) Object.assign(cached, state)
          forgetCopy(patientId)
          // Saved newer than an unsaved copy (the pass started from the cache): not written back later.
          const pending = unsaved.get(patientId)
          if (pending !== undefined) for (const ruleId of Object.keys(state)) delete pending[ruleId]
        }
      }
      const touched = [...new Set([...result.states.keys(), ...result.changes.map((c) => c.patientId)])]
      if (options.sharedState !== true || touched.length === 0) {
        await save()
      } else {
        // Another process may have evaluated a reading of these patients since they were read:
        // again under their locks, from the state as it is now; only these patients are kept.
        await store.withPatientsLocked(touched, async (client) => {
          const fresh = await store.loadStates(touched, client)
          const again = evaluateNoData({ rules, presence, states: fresh, nowMs: now() })
          const keep = new Set(touched)
          result = { changes: again.changes.filter((c) => keep.has(c.patientId)), states: new Map([...again.states].filter(([id]) => keep.has(id))) }
          await save(client)
        })
      }
      return result.changes
    })
  }

  function onAccepted (readings: readonly StoredReading[], span: RecordSpan | null = null, receivedAt: number = now()): void {
    if (closed) return
    // A record with nothing to evaluate (all derived readings) moves the mark as well.
    if (span !== null) handedEnd = span.end
    if (readings.length === 0) return
    const from = span?.start ?? null
    for (const r of readings) queue.push({ patientId: r.patientId, metric: r.metric, value: r.value, ts: r.ts, deviceId: r.deviceId, receivedAt, from })
    if (queue.length > maxQueued) {
      // A tenth at a time: one splice per many messages while evaluation is stalled.
      const dropped = queue.length - Math.floor(maxQueued * 0.9)
      queue.splice(0, dropped)
      metrics.dropped.inc(dropped)
      log.error({ dropped, queued: queue.length }, 'alert evaluation queue full: oldest readings not evaluated')
    }
    schedule(queue.length >= batchSize ? 0 : flushIntervalMs)
  }

  async function flush (): Promise<void> {
    if (timer !== null) {
      clearTimeout(timer)
      timer = null
    }
    await exclusive(async () => {
      await drain(true)
      await saveUnsaved().catch((err: unknown) => {
        saveFailed(err)
        throw err
      })
    })
  }

  let checking: Promise<ConditionChange[]> | null = null
  function checkNoData (): Promise<ConditionChange[]> {
    if (options.presence === undefined) return Promise.resolve([])
    const source = options.presence
    // One pass at a time: a slow pass is not overlapped by the next tick.
    checking ??= (async () => await noDataPass(await source.presence()))().finally(() => { checking = null })
    return checking
  }
  const noDataJob: ScheduledJob | undefined = options.presence === undefined
    ? undefined
    : options.schedule?.(NO_DATA_CRON, async () => {
      await checkNoData().catch((err: Error) => log.error({ err }, 'no-data check failed'))
    })

  return {
    rulesFile,
    store,
    rules: () => rulesFile.current(),
    async currentStates (patientIds) {
      if (stateSaveIntervalMs === 0) return await store.loadStates([...patientIds])
      // One process: its copy of a patient it evaluated is the whole current state (loaded
      // whole, changed by every batch and pass); a patient it never evaluated has no unsaved state.
      const out = await store.loadStates(patientIds.filter((id) => !states.has(id)))
      for (const id of patientIds) if (states.has(id)) out.set(id, states.get(id)!)
      return out
    },
    rulesView () {
      const active = rulesFile.current()
      return { version: active.version, escalationPolicies: active.ruleSet.escalationPolicies, webhooks: active.ruleSet.webhooks }
    },
    onAccepted,
    async replay (backlog) {
      let count = 0
      try {
        for await (const records of backlog) {
          for (const record of records) {
            const own = record.readings.filter((r) => r.deviceId !== DERIVED_DEVICE_ID)
            count += own.length
            onAccepted(own, record, record.appendedAt)
          }
          // A batch at a time: the queue never overflows, and the mark follows.
          await flush()
          // A batch failed (its database is down): it waits in the queue for its retry; reading
          // on would only fill the queue until it drops readings.
          if (failuresInRow > 0) throw new Error('alert evaluation failed while replaying the spool')
        }
      } catch (err) {
        markHeld = true
        throw err
      } finally {
        metrics.replayed.inc(count)
      }
      return count
    },
    evaluateNoData: noDataPass,
    checkNoData,
    flush,
    async close () {
      closed = true
      await noDataJob?.stop()
      await checking?.catch(() => {})
      if (timer !== null) clearTimeout(timer)
      timer = null
      // Evaluate what was accepted before shutdown (one attempt), then stop.
      await exclusive(async () => { await drain(true) }).catch(() => {})
      closedHard = true
      await exclusive(saveUnsaved).catch((err) => log.error({ err, patientCount: unsaved.size }, 'saving alert rule state at shutdown failed: the last window updates are lost'))
      await chain
      await Promise.all(lanes.map(async (lane) => { await lane.close() }))
    }
  }
}
