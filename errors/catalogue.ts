/**
 * The one catalogue of API errors. Codes are stable: clients and tests match on them,
 * never on message text.
 */
export const errorCatalogue = {
  VIGIL_ERR_VALIDATION: 400,
  VIGIL_ERR_BAD_CURSOR: 400,
  VIGIL_ERR_RULES_INVALID: 400,
  // An alert rules document that is not YAML (or JSON) at all; details give line and column.
  VIGIL_ERR_RULES_SYNTAX: 400,
  VIGIL_ERR_UNAUTHENTICATED: 401,
  VIGIL_ERR_LOGIN_FAILED: 401,
  VIGIL_ERR_FORBIDDEN: 403,
  // A cookie-authenticated write without the page's X-CSRF-Token, or sent cross-site (the web app).
  VIGIL_ERR_CSRF: 403,
  VIGIL_ERR_NOT_FOUND: 404,
  VIGIL_ERR_UNKNOWN_DEVICE: 404,
  VIGIL_ERR_UNKNOWN_PATIENT: 404,
  VIGIL_ERR_UNKNOWN_ALERT: 404,
  VIGIL_ERR_UNKNOWN_RULE: 404,
  VIGIL_ERR_REQUEST_TIMEOUT: 408,
  VIGIL_ERR_DUPLICATE_MAC: 409,
  VIGIL_ERR_CONFLICT: 409,
  VIGIL_ERR_ALERT_RESOLVED: 409,
  VIGIL_ERR_ALERT_ACKNOWLEDGED: 409,
  VIGIL_ERR_UNKNOWN_USER: 404,
  VIGIL_ERR_UNKNOWN_ROLE: 404,
  VIGIL_ERR_DUPLICATE_EMAIL: 409,
  VIGIL_ERR_PAYLOAD_TOO_LARGE: 413,
  // An alert assignee who is not a clinician reaching the alert's patient.
  VIGIL_ERR_INVALID_ASSIGNEE: 422,
  VIGIL_ERR_URL_TOO_LONG: 414,
  VIGIL_ERR_UNSUPPORTED_MEDIA_TYPE: 415,
  VIGIL_ERR_RATE_LIMITED: 429,
  // Break-glass grants per clinician per hour (VIGIL_BREAK_GLASS_PER_HOUR), with Retry-After.
  VIGIL_ERR_BREAK_GLASS_LIMIT: 429,
  VIGIL_ERR_HEADERS_TOO_LARGE: 431,
  VIGIL_ERR_INTERNAL: 500,
  // A FHIR bulk export job that failed (its status URL; the reason is logged, not served).
  VIGIL_ERR_EXPORT_FAILED: 500,
  // PHI at rest: a stored record names a key the configuration lacks, or fails authentication.
  VIGIL_ERR_KEY_UNAVAILABLE: 500,
  VIGIL_ERR_DECRYPTION_FAILED: 500,
  VIGIL_ERR_UNAVAILABLE: 503,
  // The data directory is below its free-space reserve, or the database reports its disk full.
  VIGIL_ERR_DISK_LOW: 503
} as const

export type ErrorCode = keyof typeof errorCatalogue

export class VigilError extends Error {
  readonly statusCode: number
  constructor (readonly code: ErrorCode, message: string, readonly details?: unknown) {
    super(message)
    this.name = 'VigilError'
    this.statusCode = errorCatalogue[code]
  }
}
