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
  /** devices/{id}/status payload that is not the documented JSON (alerts/presence.ts). */
  | 'status_invalid'

export class PayloadRejection extends Error {
  constructor (readonly reason: RejectionReason, message: string) {
    super(message)
    this.name = 'PayloadRejection'
  }
}
