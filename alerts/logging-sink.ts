import type { Logger } from 'pino'
import type { ConditionChange, ConditionSink } from './contract.ts'

/**
 * A stand-in ConditionSink that only logs, until the alert lifecycle (branch alerts2) supplies
 * the real one. Ids, rule and status only: summaries carry vital values.
 */
export function createLoggingSink (log: Logger): ConditionSink {
  const sinkLog = log.child({ component: 'alert-conditions' })
  return {
    async apply (changes: readonly ConditionChange[]) {
      for (const c of changes) {
        sinkLog.warn({ patientId: c.patientId, ruleId: c.ruleId, kind: c.kind, status: c.status, severity: c.severity, at: c.at }, 'alert condition changed')
      }
    }
  }
}
