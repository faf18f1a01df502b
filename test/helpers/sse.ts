/** One event of a server-sent event stream: its `id:` and its parsed `data:`. */
export interface SseEvent { id: string | null, data: any, receivedAt: number }

/** A real SSE reader over fetch: GET `url`, collecting `data:` events (with their `id:`) as they arrive. */
export async function openSse (url: string, headers: Record<string, string>) {
  const controller = new AbortController()
  const res = await fetch(url, { headers, signal: controller.signal })
  const events: SseEvent[] = []
  let heartbeats = 0
  let buffer = ''
  const decoder = new TextDecoder()
  const reading = (async () => {
    try {
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        buffer += decoder.decode(chunk, { stream: true })
        let end: number
        while ((end = buffer.indexOf('\n\n')) !== -1) {
          const block = buffer.slice(0, end)
          buffer = buffer.slice(end + 2)
          let id: string | null = null
          let data: string | null = null
          for (const line of block.split('\n')) {
            if (line.startsWith('id: ')) id = line.slice(4)
            else if (line.startsWith('data: ')) data = line.slice(6)
          }
          if (data !== null) events.push({ id, data: JSON.parse(data), receivedAt: performance.now() })
          else if (block === ': heartbeat') heartbeats++
        }
      }
    } catch {}
  })()
  return {
    res,
    events,
    /** Heartbeat comments received so far (the server refreshes the visible patients before each). */
    heartbeats: () => heartbeats,
    async close () {
      controller.abort()
      await reading
    }
  }
}
