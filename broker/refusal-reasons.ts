/**
 * Reasons the broker refuses a connection, packet or subscription: the `reason` label of
 * `vigil_mqtt_refused_total` and the `reason` field of the log line. A catalogue, not free text,
 * so dashboards and tests can rely on it.
 */
export const refusalReasons = [
  // connection level, before MQTT
  'connect_rate_limited', 'tls_protocol_version', 'tls_client_certificate', 'tls_handshake_failed',
  'packet_too_large', 'malformed_packet', 'connect_timeout', 'queue_limit', 'protocol_violation',
  // MQTT_PROXY_PROTOCOL: a connection from an address not in TRUST_PROXY, or without a valid PROXY header.
  'proxy_untrusted', 'proxy_header_invalid',
  // CONNECT
  'protocol_version', 'keepalive_not_allowed', 'client_id_empty', 'client_id_invalid', 'username_invalid',
  'locked_out', 'anonymous', 'client_id_mismatch', 'client_id_not_owned', 'certificate_mismatch', 'bad_credentials', 'auth_unavailable',
  // session
  'topic_invalid', 'topic_too_deep', 'topic_not_allowed', 'retain_not_allowed', 'publisher_unknown',
  'subscribe_not_allowed', 'qos2_inflight_exceeded', 'slow_subscriber', 'spool_full', 'store_unavailable',
  // The data directory is below its free-space reserve (VIGIL_DISK_RESERVE_MB).
  'disk_low',
  // A person's MQTT alert session whose token or patient access ended while connected.
  'access_revoked',
  // A packet for a person's session about a patient this connection's principal is not known
  // (now) to reach: a queued alert of a resumed session, or a decision not renewed in time.
  'forward_not_allowed'
] as const

export type RefusalReason = typeof refusalReasons[number]

// Aedes 1.2 and mqtt-packet 9 report these conditions only as Error messages (the CONNECT
// checks also set errorCode, the CONNACK return code sent).
const aedesMessages: ReadonlyArray<readonly [RegExp, RefusalReason]> = [
  [/^connect did not arrive in time$/, 'connect_timeout'],
  [/^topic has too many levels$/, 'topic_too_deep'],
  [/^maxInflightInbound exceeded/, 'qos2_inflight_exceeded'],
  [/^Client queue limit reached$/, 'queue_limit'],
  [/^drain timeout$/, 'slow_subscriber'],
  // MQTT-3.1.0-1 (first packet must be CONNECT), MQTT-3.1.0-2 (a second CONNECT)
  [/^Invalid protocol$/, 'protocol_violation'],
  // MQTT-3.3.2-2 (no wildcards in a PUBLISH topic), MQTT-4.7.3-1 (topics are not empty),
  // MQTT-4.7.1-2/-3 (where wildcards may stand in a filter)
  [/^(empty topic not allowed|# is not allowed|\+ is not allowed) in PUBLISH$/, 'topic_invalid'],
  [/^impossible to SUBSCRIBE to an empty topic$|^[#+] is only allowed in SUBSCRIBE/, 'topic_invalid']
]

// The peer went away or stopped answering: not a refusal.
const notRefusals = [/^connection closed$/, /^keep alive timeout$/, /^packet received not valid$/]

/**
 * Maps an error Aedes reports for a client or connection to the refusal it stands for, or null
 * when it is not a refusal (a dropped socket, a keepalive expiry). Anything else that reaches
 * here came from the packet parser: the peer sent bytes that are not MQTT 3.1.1.
 */
export function reasonOfAedesError (err: Error & { errorCode?: number, code?: unknown }): RefusalReason | null {
  if (typeof err.code === 'string') {
    // ws refuses a WebSocket message over maxPayload (RFC 6455 §7.4.1 close code 1009) or bad framing.
    if (err.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH') return 'packet_too_large'
    if (err.code.startsWith('WS_ERR_')) return 'malformed_packet'
    // System errors (ECONNRESET, EPIPE, ERR_STREAM_PREMATURE_CLOSE …): the peer went away.
    return null
  }
  if (err.errorCode === 1) return 'protocol_version' // MQTT-3.1.2-2
  if (err.errorCode === 6) return 'keepalive_not_allowed' // Aedes keepaliveLimit
  const message = typeof err.message === 'string' ? err.message : ''
  if (notRefusals.some((m) => m.test(message))) return null
  for (const [pattern, reason] of aedesMessages) {
    if (pattern.test(message)) return reason
  }
  return 'malformed_packet'
}

/** Maps a failed TLS handshake (the server's `tlsClientError`) to a refusal, or null for a dropped socket. */
export function reasonOfTlsError (err: Error & { code?: unknown }): RefusalReason | null {
  const code = typeof err.code === 'string' ? err.code : ''
  if (code === 'ECONNRESET' || code === 'EPIPE' || code === 'ERR_SSL_SHUTDOWN_WHILE_IN_INIT') return null
  if (code === 'ERR_TLS_HANDSHAKE_TIMEOUT') return 'connect_timeout'
  if (/PROTOCOL|VERSION/.test(code) || /unsupported protocol|version too low|wrong version/i.test(err.message)) return 'tls_protocol_version'
  if (/CERTIFICATE|CERT_/.test(code) || /certificate/i.test(err.message)) return 'tls_client_certificate'
  return 'tls_handshake_failed'
}
