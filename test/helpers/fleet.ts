import mqtt from 'mqtt'

export interface FleetDevice { deviceId: string, password: string, patientId: string }

export interface Fleet {
  /** Per device: every seq the broker acknowledged. */
  readonly acked: Map<string, Set<number>>
  sent (): number
  ackedCount (): number
  /** Points the devices at another broker port (after a restart) and lets them reconnect. */
  retarget (mqttPort: number): void
  stop (): Promise<void>
}

/** The device timestamp for a seq: unique per seq, inside the test assignment (from 1 h ago). */
export function tsOfSeq (base: number, seq: number): number {
  return base + seq * 10
}

/**
 * Simulated devices, each its own MQTT connection, publishing one reading per message at QoS 1
 * with increasing seq, and remembering which seqs the broker acknowledged. Devices reconnect on
 * their own (reconnectPeriod) so outages and restarts can be ridden through.
 */
export function startFleet (mqttPort: number, devices: FleetDevice[], intervalMs: number): Fleet {
  const base = Date.now() - 1_800_000
  const acked = new Map<string, Set<number>>()
  let port = mqttPort
  let sent = 0
  const clients: mqtt.MqttClient[] = []
  const timers: NodeJS.Timeout[] = []
  for (const d of devices) {
    const ackedSeqs = new Set<number>()
    acked.set(d.deviceId, ackedSeqs)
    const client = mqtt.connect({
      host: '127.0.0.1',
      port,
      clientId: d.deviceId,
      username: d.deviceId,
      password: d.password,
      protocolVersion: 4,
      reconnectPeriod: 200,
      connectTimeout: 5000,
      // Unacknowledged messages are resent after a reconnect, as a device would.
      clean: true
    })
    client.on('error', () => {})
    // Reconnect to wherever the broker is now.
    client.on('close', () => { client.options.port = port })
    clients.push(client)
    let seq = 0
    timers.push(setInterval(() => {
      if (!client.connected) return
      seq++
      sent++
      const s = seq
      const payload = JSON.stringify({ seq: s, readings: [{ metric: 'heart_rate', value: 60 + (s % 40), unit: '/min', ts: tsOfSeq(base, s) }] })
      client.publish(`devices/${d.deviceId}/telemetry`, payload, { qos: 1 }, (err) => {
        if (err === undefined || err === null) ackedSeqs.add(s)
      })
    }, intervalMs))
  }
  return {
    acked,
    sent: () => sent,
    ackedCount: () => [...acked.values()].reduce((n, s) => n + s.size, 0),
    retarget (mqttPort) {
      port = mqttPort
      for (const c of clients) c.options.port = mqttPort
    },
    async stop () {
      for (const t of timers) clearInterval(t)
      await Promise.all(clients.map((c) => c.endAsync(true).catch(() => {})))
    }
  }
}
