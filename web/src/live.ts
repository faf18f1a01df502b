// The alert stream (GET /v1/alerts/stream, authenticated by the session cookie). One
// EventSource per page; it reconnects by itself with Last-Event-ID.

export interface StreamEvent {
  eventId: string
  type: string
  at: string
  alert: { id: string, patientId: string, ruleId: string, severity: string, status: string, summary: string }
}

export function openAlertStream (onEvent: (event: StreamEvent) => void, onState: (connected: boolean) => void): () => void {
  const source = new EventSource('/v1/alerts/stream')
  source.onmessage = (message) => {
    try {
      onEvent(JSON.parse(message.data) as StreamEvent)
    } catch {
      // not an event of ours
    }
  }
  source.onopen = () => onState(true)
  source.onerror = () => onState(false)
  return () => source.close()
}
