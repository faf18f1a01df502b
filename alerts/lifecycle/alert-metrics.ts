import { Counter, type Registry } from 'prom-client'

/**
 * The lifecycle's Prometheus metrics, registered on Vigil's registry. Labels are catalogues
 * (event type, severity, channel, outcome): never patient, alert or rule ids.
 */
export function createAlertMetrics (registry: Registry) {
  // One registry may see two lifecycles (a restart inside one process, in tests): reuse.
  const counter = <L extends string>(name: string, help: string, labelNames: readonly L[]): Counter<L> =>
    (registry.getSingleMetric(name) as Counter<L> | undefined) ?? new Counter({ name, help, labelNames, registers: [registry] })
  return {
    alertEvents: counter('vigil_alert_events_total', 'Alert events committed, by type and alert severity', ['type', 'severity'] as const),
    notifications: counter('vigil_alert_notifications_total', 'Alert notification attempts, by channel and outcome (delivered, failed, gave_up)', ['channel', 'status'] as const)
  }
}

export type AlertMetrics = ReturnType<typeof createAlertMetrics>
