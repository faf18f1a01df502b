export type PublishMqtt = (topic: string, payload: string) => Promise<void>

export type MqttAlertRelay = ReturnType<typeof createMqttAlertRelay>

/**
 * Alert notifications to MQTT across the one loop start-up has (readings → engine → alerts →
 * notifications → the broker that takes the readings): created first, handed to alerting (the
 * notifier publishes through it) and to createBroker, which attaches its publish once listening
 * and detaches at close. While no broker is attached there is no MQTT channel: nothing is
 * published or recorded.
 */
export function createMqttAlertRelay () {
  let target: PublishMqtt | null = null
  return {
    /** The attached broker's publish, or null. */
    target: (): PublishMqtt | null => target,
    attach (publish: PublishMqtt): () => void {
      target = publish
      return () => {
        if (target === publish) target = null
      }
    }
  }
}
