import pino, { type Logger } from 'pino'

/**
 * Anything that could carry PHI or a secret is censored, wherever it appears in a log object.
 * Logging such a field is a bug; this list is the safety net, not the policy.
 */
export const redactPaths = [
  'password', '*.password', 'token', '*.token', 'authorization', '*.authorization',
  'req.headers.authorization', 'req.headers.cookie', 'headers.authorization',
  'displayName', '*.displayName', 'payload', '*.payload', 'body', '*.body',
  'value', '*.value', 'readings', '*.readings',
  'email', '*.email', 'accessToken', '*.accessToken', 'refreshToken', '*.refreshToken',
  // Free text people write about patients (break-glass and override reasons, comments) and transcripts.
  // Not 'reason': that is the refusal reason of every MQTT and ingest rejection, which must be logged.
  'breakGlassReason', '*.breakGlassReason', 'comment', '*.comment', 'text', '*.text',
  'transcript', '*.transcript', 'words', '*.words'
]

export function createLogger (level: string, destination?: pino.DestinationStream): Logger {
  return pino({
    level,
    base: { service: 'vigil' },
    redact: { paths: redactPaths, censor: '[redacted]' },
    timestamp: pino.stdTimeFunctions.isoTime
  }, destination)
}
