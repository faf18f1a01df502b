/** A vital-sign reading after decoding, unit conversion and validation. */
export interface NormalizedReading {
  /** Catalogue name, e.g. `heart_rate`. */
  metric: string
  /** Value in the catalogue's canonical UCUM unit. */
  value: number
  /** Canonical UCUM unit of the metric (catalogue's), e.g. `/min`, `Cel`, `%`. */
  unit: string
  /** Device clock, ms since epoch. */
  ts: number
}

/** A reading as stored: keyed by patient (user) and device. */
export interface StoredReading extends NormalizedReading {
  patientId: string
  deviceId: string
  /** Device message sequence number, when the device sent one. */
  seq: number | null
}

/** Why ingest refused a payload. Stable strings: they are metric labels and API values. */
export type RejectionReason =
  | 'payload_not_json'
  | 'payload_schema'
  | 'senml_invalid'
  | 'unknown_metric'
  | 'unit_unsupported'
  | 'value_out_of_range'
  | 'timestamp_in_future'
  | 'timestamp_invalid'
  | 'device_unassigned'
  | 'payload_too_large'
  /** devices/{id}/status payload that is not the documented JSON (alerts/lifecycle/presence.ts). */
  | 'status_invalid'

/**
 * One message per reason quoting nothing the device sent: what a caller who may not see the
 * payload gets instead of the recorded message, which can name a metric, unit or key from it
 * (security pass F7).
 */
export const REJECTION_GENERIC_MESSAGES: Readonly<Record<RejectionReason, string>> = {
  payload_not_json: 'payload is not JSON',
  payload_schema: 'payload does not match the telemetry schema',
  senml_invalid: 'SenML pack is invalid',
  unknown_metric: 'a reading names a metric that is not in the vitals catalogue',
  unit_unsupported: 'a reading\'s unit is not supported for its metric',
  value_out_of_range: 'a value is outside the plausible range of its metric',
  timestamp_in_future: 'a timestamp is in the future',
  timestamp_invalid: 'a timestamp is invalid',
  device_unassigned: 'the device had no patient assignment when the payload arrived',
  payload_too_large: 'payload is too large',
  status_invalid: 'status payload is not the documented JSON'
}

export class PayloadRejection extends Error {
  constructor (readonly reason: RejectionReason, message: string) {
    super(message)
    this.name = 'PayloadRejection'
  }
}
